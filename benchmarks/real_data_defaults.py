"""What `python train.py --dataset NAME` reaches with its defaults on the real image datasets, beside the published
small-CNN result for the same data: the test accuracy of the best checkpoint chosen on val, the wall time and the
model's size. Each run trains in a fresh folder; the data come from --data-dir (downloaded there when missing,
or through --data-mirror). A dataset whose files cannot be had is reported as such, not guessed.

    python benchmarks/real_data_defaults.py                                   # mnist, fashion-mnist, cifar10
    python benchmarks/real_data_defaults.py --datasets fashion-mnist --data-mirror file:///usr/share/datasets

One thread by default (as on a shared CPU machine; --threads N for more): 13 to 22 minutes a dataset.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

# the published small-CNN result each default is held against (test accuracy)
REFERENCE = {
    "mnist": (0.9905, "LeNet-5 (LeCun et al. 1998)"),
    "fashion-mnist": (0.925, "2 conv, <100k parameters (Fashion-MNIST benchmark table, hardmaru)"),
    "cifar10": (0.82, "cuda-convnet layers-18pct (Krizhevsky 2012)"),
}


def run(dataset, folder, args):
    """train.py with the dataset's defaults in a fresh folder; (metrics.json, seconds, the model line) or a reason."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--dataset", dataset, "--progress", "plain", "--run-name", "r",
           "--threads", str(args.threads), "--data-dir", args.data_dir,
           "--logs-dir", str(folder / "logs"), "--models-dir", str(folder / "models")]
    if args.data_mirror:
        cmd += ["--data-mirror", args.data_mirror]
    cmd += args.train_args
    started = time.time()
    res = subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    seconds = time.time() - started
    if res.returncode != 0:
        return None, seconds, res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "failed"
    model = next((line.split("model ", 1)[1].split(" on ")[0] for line in res.stdout.splitlines()
                  if "model " in line and "parameters" in line), "?")
    return json.loads((folder / "logs" / "r" / "metrics.json").read_text()), seconds, model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="mnist,fashion-mnist,cifar10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--data-mirror", default="")
    p.add_argument("train_args", nargs="*", help="more train.py flags after -- (a quick look: -- --max-steps 20)")
    args = p.parse_args()
    rows = []
    for dataset in args.datasets.split(","):
        ref, source = REFERENCE[dataset]
        with tempfile.TemporaryDirectory() as tmp:
            metrics, seconds, said = run(dataset, Path(tmp), args)
        if metrics is None:
            rows.append((dataset, "not run: %s" % said[:100], "", "", "%.1f %%: %s" % (100 * ref, source)))
            continue
        acc = metrics["test"]["test/acc"]
        rows.append((dataset, "%.2f %% (val %.2f %%, step %d)" % (100 * acc, 100 * metrics["best"]["value"],
                                                               metrics["best"]["step"]),
                     "%.1f min" % (seconds / 60), said, "%.2f %%: %s" % (100 * ref, source)))
    print("### The defaults on real data against published small CNNs\n")
    print("%s; `python train.py --dataset NAME%s` with every other default, %d thread(s); test accuracy of the "
          "best checkpoint on val\n" % (machine(), "".join(" " + a for a in args.train_args), args.threads))
    print(table(("dataset", "test accuracy", "time", "model", "published"), rows))


if __name__ == "__main__":
    main()
