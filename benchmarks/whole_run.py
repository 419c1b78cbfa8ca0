"""A whole run, as a user starts it: `python train.py` (the default: digits, 15 epochs, evaluation each epoch,
checkpoints, TensorBoard, the final test), wall time from start to exit, the steps and samples it trained, and
on a GPU the share of the time it was busy. Extra train.py flags after --.

    python benchmarks/whole_run.py --repeats 3 -- --device cuda
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import GpuBusy, machine, median, percent, table

ROOT = Path(__file__).resolve().parent.parent


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (OMP_NUM_THREADS)")
    p.add_argument("train_args", nargs="*", help="train.py flags after --")
    args = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    device = args.train_args[args.train_args.index("--device") + 1] if "--device" in args.train_args else "cpu"
    flags = args.train_args + ([] if "--device" in args.train_args else ["--device", "cpu"])
    walls, busy, rates, steps = [], [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            folder = Path(tmp) / str(i)
            cmd = [sys.executable, str(ROOT / "train.py")] + flags + [
                "--run-name", "whole", "--logs-dir", str(folder / "logs"), "--models-dir", str(folder / "models"),
                "--progress", "plain"]
            with GpuBusy(device) as gpu:
                start = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                walls.append(time.perf_counter() - start)
            busy.append(gpu.percent)
            report = json.loads((folder / "logs" / "whole" / "metrics.json").read_text())
            steps = report["step"]
            import yaml
            batch = yaml.safe_load((folder / "logs" / "whole" / "config.yaml").read_text())["batch_size"]
            rates.append(steps * batch / walls[-1])
    print("### Whole run: `python train.py %s`\n" % " ".join(flags))
    print("%s; %d CPU thread(s); %d runs; wall time from start to exit (start-up, data, evaluations, checkpoints "
          "and the final test included)\n" % (machine(device), args.threads, args.repeats))
    print(table(("run", "wall time (median)", "runs", "steps", "samples/s over the whole run", "GPU busy"),
                [("train.py", "%.1f s" % median(walls), ", ".join("%.1f" % w for w in walls), steps,
                  "%.0f" % median(rates), percent(busy))]))


if __name__ == "__main__":
    main()
