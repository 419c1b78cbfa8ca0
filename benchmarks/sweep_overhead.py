"""What a sweep costs over running its trials by hand: the same trials (a grid of learning rates on the default
digits run) once as `train.py --sweep SPEC` and once as one `train.py --config trial-N.yaml --run-name ...` per
trial, one after another; wall time from start to exit, the ratio measured in the same run.

    python benchmarks/sweep_overhead.py --trials 4 --repeats 3 -- --epochs 3
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import machine, median, table

ROOT = Path(__file__).resolve().parent.parent


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (OMP_NUM_THREADS)")
    p.add_argument("train_args", nargs="*", help="base flags of every trial, as --flag value pairs after --")
    args = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    base = {"device": "cpu"}
    it = iter(args.train_args)
    for key in it:
        base[key.lstrip("-").replace("-", "_")] = yaml.safe_load(next(it))
    spec = {"name": "bench", "base": base, "grid": {"lr": [round(0.02 * (i + 1), 3) for i in range(args.trials)]}}
    sweep, hand = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
            where = ["--logs-dir", str(folder / "logs"), "--models-dir", str(folder / "models")]
            start = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "train.py"), "--sweep", str(folder / "spec.yaml")] + where,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            sweep.append(time.perf_counter() - start)
            start = time.perf_counter()
            for n in range(args.trials):  # the trial files the sweep wrote: the same flags, by hand
                subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                                str(folder / "logs" / "bench" / ("trial-%d.yaml" % n)), "--run-name", "hand-%d" % n,
                                "--progress", "plain"] + where, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
            hand.append(time.perf_counter() - start)
    s, h = median(sweep), median(hand)
    print("### Sweep overhead: %d trials (`--sweep`, grid over --lr, base %s)\n" % (args.trials, base))
    print("%s; %d CPU thread(s); %d repeats; wall time from start to exit\n" % (machine(), args.threads,
                                                                               args.repeats))
    print(table(("way", "wall time (median)", "repeats", "per trial", "vs by hand"),
                [("by hand (one train.py per trial)", "%.1f s" % h, ", ".join("%.1f" % w for w in hand),
                  "%.2f s" % (h / args.trials), "1.00"),
                 ("train.py --sweep", "%.1f s" % s, ", ".join("%.1f" % w for w in sweep),
                  "%.2f s" % (s / args.trials), "%.2f" % (s / h))]))
    print("\nThe sweep's own cost per trial: %.2f s (%+.1f %%)" % ((s - h) / args.trials, 100 * (s - h) / h))


if __name__ == "__main__":
    main()
