"""Training-loop throughput of train.py (TensorBoard logging every 10 steps and a checkpoint every 100 on)
against a minimal hand-written PyTorch loop, PyTorch Lightning's Trainer and the speed of light (the training
step alone on one batch already on the device, in a CUDA graph on a GPU: the limit for this model and batch),
on the same model, data, batch size, optimizer and step count. Runs alternate (ours, hand-written, Lightning,
speed of light, ours, ...) so that machine noise hits all alike; the table gives medians, the ratios to the
hand-written loop and to the speed of light, and on a GPU the share of time it was busy (nvidia-smi).

    python benchmarks/loop_throughput.py                        # CNN on CIFAR-shaped synthetic data, CPU
    python benchmarks/loop_throughput.py --repeats 5 -- --model resnet --device cuda --amp bf16

train.py's rate comes from its TensorBoard events: samples between the first logged step (>= warm-up) and
the last, over their wall-clock distance, so checkpoints and logging in between count against it.
Lightning is skipped (and said so) when it is not installed: pip install -r benchmarks/requirements.txt.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import GpuBusy, machine, median, percent, table

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
WARMUP = 10
ENV = dict(os.environ)
PRESETS = {
    "cifar": ["--dataset", "synthetic", "--synthetic-size", "12800", "--synthetic-shape", "3,32,32", "--model", "cnn",
              "--batch-size", "128"],
    "default": ["--dataset", "digits", "--model", "cnn", "--batch-size", "64"],
}


def ours(common, steps, folder):
    run = "bench"
    cmd = [sys.executable, str(ROOT / "train.py")] + common + [
        "--max-steps", str(steps), "--epochs", "1000000", "--log-every", "10", "--ckpt-every", "100",
        "--eval-every", str(10 ** 9),
        "--logs-dir", str(folder / "logs"), "--models-dir", str(folder / "models"), "--run-name", run,
        "--progress", "plain"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder / "logs" / run), size_guidance={"scalars": 0})
    acc.Reload()
    events = [e for e in acc.Scalars("train/loss") if e.step >= WARMUP]
    first, last = events[0], events[-1]
    import yaml
    batch = yaml.safe_load((folder / "logs" / run / "config.yaml").read_text())["batch_size"]  # the effective one
    return (last.step - first.step) * batch / (last.wall_time - first.wall_time)


def script(name):
    def run(common, steps, folder):
        out = subprocess.run([sys.executable, str(HERE / name), "--steps", str(steps), "--warmup", str(WARMUP)]
                             + common, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, cwd=str(folder), env=ENV).stdout
        result = json.loads(out.strip().splitlines()[-1])
        HOW[name] = result.get("how")
        return result["samples_per_sec"]
    return run


HOW = {}  # how a script ran its step (the speed of light: "cuda graph" or "eager ...")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cifar",
                   help="cifar: CNN on CIFAR-shaped synthetic data, batch 128; default: train.py's default setup "
                   "(digits, small CNN, batch 64), where what a loop adds per step shows most")
    p.add_argument("--title", default="Loop throughput")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per run (OMP_NUM_THREADS; 1 keeps a small VM's run-to-run spread low)")
    p.add_argument("train_args", nargs="*", help="train.py flags after --")
    args = p.parse_args()
    common = PRESETS[args.preset] + ["--optimizer", "sgd", "--lr", "0.05", "--scheduler", "constant"] + args.train_args
    if "--device" not in common:
        common += ["--device", "cpu"]
    ENV["OMP_NUM_THREADS"] = str(args.threads)
    loops = [("train.py", ours), ("hand-written loop", script("handwritten_loop.py"))]
    have_lightning = importlib.util.find_spec("lightning") is not None
    if have_lightning:
        loops.append(("PyTorch Lightning Trainer", script("lightning_loop.py")))
    loops.append(("speed of light", script("speed_of_light.py")))
    device = common[len(common) - 1 - common[::-1].index("--device") + 1]
    if device.startswith("cuda") and "--cuda-graphs" not in common:
        loops.insert(1, ("train.py --cuda-graphs", lambda c, steps, folder: ours(c + ["--cuda-graphs"], steps, folder)))
    rates = {name: [] for name, _ in loops}
    busy = {name: [] for name, _ in loops}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for k, (name, run) in enumerate(loops):
                folder = Path(tmp) / ("%d-%d" % (k, i))
                folder.mkdir()
                with GpuBusy(device) as gpu:
                    rates[name].append(run(common, args.steps, folder))
                busy[name].append(gpu.percent)
    base, limit = median(rates["hand-written loop"]), median(rates["speed of light"])
    print("### %s\n" % args.title)
    print("%s; %d CPU thread(s); %d steps x %d alternating repeats; `%s`; speed of light: the step alone, %s\n" % (
        machine(device), args.threads, args.steps, args.repeats, " ".join(common), HOW.get("speed_of_light.py")))
    rows = [(name, "%.0f" % median(v), ", ".join("%.0f" % x for x in v), "%.3f" % (median(v) / base),
             "%.3f" % (median(v) / limit), percent(busy[name])) for name, v in rates.items()]
    print(table(("loop", "samples/s (median)", "runs", "ratio to hand-written", "ratio to speed of light",
                 "GPU busy"), rows))
    if not have_lightning:
        print("\n(Lightning not installed: pip install -r benchmarks/requirements.txt)")


if __name__ == "__main__":
    main()
