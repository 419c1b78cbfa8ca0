"""Training-loop throughput of train.py (TensorBoard logging and periodic checkpoints on) against a
hand-written PyTorch loop on the same model, data, batch size, optimizer and step count. Runs alternate
(ours, baseline, ours, ...) to cancel machine noise; prints a Markdown table with the ratio.

    python benchmarks/loop_throughput.py                       # CNN on CIFAR-shaped synthetic data, CPU
    python benchmarks/loop_throughput.py --repeats 5 --steps 300 -- --model resnet --device cuda

train.py's rate is read from its TensorBoard events: samples between the first and last logged step
over their wall-clock distance, so checkpoints and logging in between count against it.
"""
import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def ours(common, steps, folder):
    run = "bench"
    cmd = [sys.executable, str(ROOT / "train.py")] + common + [
        "--max-steps", str(steps), "--log-every", "10", "--ckpt-every", "100", "--eval-every", str(10 ** 9),
        "--logs-dir", str(folder / "logs"), "--models-dir", str(folder / "models"), "--run-name", run,
        "--progress", "plain", "--resume", "auto"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder / "logs" / run), size_guidance={"scalars": 0})
    acc.Reload()
    events = [e for e in acc.Scalars("train/loss") if e.step >= 10]
    first, last = events[0], events[-1]
    batch = int(common[common.index("--batch-size") + 1])
    return (last.step - first.step) * batch / (last.wall_time - first.wall_time)


def baseline(common, steps):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "handwritten_loop.py"), "--steps", str(steps)]
                         + common, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["samples_per_sec"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("train_args", nargs="*", help="train.py flags after --")
    args = p.parse_args()
    common = ["--dataset", "synthetic", "--synthetic-size", "12800", "--synthetic-shape", "3,32,32",
              "--model", "cnn", "--batch-size", "128", "--optimizer", "sgd", "--lr", "0.05", "--scheduler",
              "constant", "--device", "cpu"] + args.train_args
    rates = {"train.py": [], "hand-written loop": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            rates["train.py"].append(ours(common, args.steps, Path(tmp) / str(i)))
            rates["hand-written loop"].append(baseline(common, args.steps))
    base = statistics.median(rates["hand-written loop"])
    print("Loop throughput, %s, torch %s, %d steps x %d repeats (alternating); %s" % (
        platform.processor() or platform.machine(), torch.__version__, args.steps, args.repeats, " ".join(common)))
    print()
    print("| loop | samples/s (median) | runs | ratio to hand-written |")
    print("| --- | --- | --- | --- |")
    for name, values in rates.items():
        med = statistics.median(values)
        print("| %s | %.0f | %s | %.3f |" % (name, med, ", ".join("%.0f" % v for v in values), med / base))


if __name__ == "__main__":
    main()
