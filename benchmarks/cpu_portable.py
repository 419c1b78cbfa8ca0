"""Exact results across CPU generations: what pinning torch's CPU kernels to one instruction set costs.

A run's numbers are bit-identical on one machine, but another CPU (AVX-512 or not, Intel or AMD) picks other
kernels in ATen, MKL and oneDNN and rounds some sums otherwise (1 ulp at first, then more). Pinning all three
(PORTABLE below) makes them agree, so a run resumed on another node (a Slurm requeue) goes on exactly. This
trains the same short runs unpinned and pinned (one thread each, in turn, medians of --repeats), prints the
speed of each and its ratio, and, where `qemu-x86_64` is installed, runs the pinned and unpinned runs again on an
emulated Haswell CPU (AVX2, no AVX-512; Debian's qemu-user) and says whether the weights are bit-identical to
this machine's.

    python benchmarks/cpu_portable.py [--repeats 3] [--steps 200] [--only cnn]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, median, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PORTABLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
PIN_KEYS = tuple(PORTABLE) + ("MKL_ENABLE_INSTRUCTIONS",)
CASES = [("cnn on digits (batch 64)", ["--model", "cnn", "--batch-size", "64"]),
         ("mlp on digits (batch 64)", ["--model", "mlp", "--batch-size", "64"])]


def _env(pinned):
    env = {k: v for k, v in os.environ.items() if k not in PIN_KEYS}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if pinned:
        env.update(PORTABLE)
    return env


def train(folder, name, args, steps, pinned, prefix=()):
    """(samples per second, the final weights) of one run of train.py in folder."""
    cmd = list(prefix) + [sys.executable, str(ROOT / "train.py"), "--deterministic", "--progress", "plain",
                          "--threads", "1", "--max-steps", str(steps), "--log-every", str(steps), "--eval-every",
                          str(10 ** 6), "--ckpt-every", "0", "--no-tensorboard", "--run-name", name,
                          "--logs-dir", str(folder / "logs"), "--models-dir", str(folder / "models")] + args
    res = subprocess.run(cmd, cwd=str(ROOT), env=_env(pinned), capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit("cpu_portable: %s failed:\n%s" % (name, res.stderr[-2000:]))
    rates = [float(r) for r in re.findall(r"\| ([0-9.]+) samples/s", res.stderr)]
    from src.runtime import compat
    weights = compat.load_file(str(folder / "models" / "latest" / (name + ".pt")))["model"]
    return (rates[-1] if rates else float("nan")), weights


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--only", default="", help="the runs whose title starts with this (cnn, mlp); default: all")
    args = p.parse_args()
    qemu = shutil.which("qemu-x86_64")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for title, case in [(t, c) for t, c in CASES if t.startswith(args.only)]:
            speed, weights = {}, {}
            for pinned in (False, True) * args.repeats:
                rate, weights[pinned] = train(folder, "r%d" % len(speed.get(pinned, [])), case, args.steps, pinned)
                speed.setdefault(pinned, []).append(rate)
                shutil.rmtree(str(folder / "models"))
            plain, pin = median(speed[False]), median(speed[True])
            emulated = "qemu-x86_64 not installed"
            if qemu and platform_is_x86():
                far = [train(folder, "q%d" % pinned, case, 6, pinned, (qemu, "-cpu", "Haswell"))[1]
                       for pinned in (False, True)]
                near = [train(folder, "n%d" % pinned, case, 6, pinned)[1] for pinned in (False, True)]
                emulated = "unpinned: %s; pinned: %s" % tuple(
                    "bit-identical" if same(a, b) else "differ (max %.2g)" % max(
                        (a[k] - b[k]).abs().max().item() for k in a) for a, b in zip(near, far))
            rows.append([title, "%.0f" % plain, "%.0f" % pin, "%.2f" % (pin / plain), emulated])
    print("### Exact across CPUs: pinned kernels (%s)" % " ".join("%s=%s" % kv for kv in PORTABLE.items()))
    print()
    print("%s; one thread, %d steps, median of %d; the emulated CPU: qemu-x86_64 -cpu Haswell, 6 steps" % (
        machine(), args.steps, args.repeats))
    print()
    print(table(["run", "unpinned samples/s", "pinned samples/s", "pinned / unpinned",
                 "this CPU vs an AVX2 CPU (weights after 6 steps)"], rows))


def platform_is_x86():
    import platform
    return platform.machine() in ("x86_64", "AMD64")


if __name__ == "__main__":
    main()
