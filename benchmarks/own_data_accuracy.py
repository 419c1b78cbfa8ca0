"""What the no-code paths reach on real data, beside a hand-written baseline on the very same split:

- images: the UCI handwritten digits shipped in src/data/assets (1797 grey 8x8 images) written out as PNG files
  in train/ and test/ class folders, trained with `--dataset folder:PATH`; baseline: 1-nearest-neighbour on the
  raw pixels (a classic on this data: about 98 %), and the built-in `--dataset digits` with the same flags;
- a table: the diabetes data shipped in src/data/assets written as train.csv and test.csv, trained with
  `--dataset csv:PATH`; baseline: least squares (ordinary linear regression, the published reference on this
  data: R^2 about 0.5) fitted on the same train rows.

    python benchmarks/own_data_accuracy.py
    python benchmarks/own_data_accuracy.py --epochs 3      # a quick look
"""
import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from src.data.digits import load_arrays  # noqa: E402

from common import machine, table  # noqa: E402

SEED = 0


def split(n, test_share=0.2):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED))
    cut = int(n * test_share)
    return order[cut:].sort().values, order[:cut].sort().values


def train(project, args, epochs):
    """train.py in a fresh folder; the test metrics of its metrics.json."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--epochs", str(epochs), "--progress", "plain", "--run-name", "r",
           "--logs-dir", str(project / "logs"), "--models-dir", str(project / "models"),
           "--data-dir", str(project / "data")] + args
    res = subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stdout[-3000:])
    return json.loads((project / "logs" / "r" / "metrics.json").read_text())["test"]


def images(tmp, epochs):
    from PIL import Image
    x, y = load_arrays()
    tr, te = split(len(y))
    root = tmp / "digits"
    for name, idx in (("train", tr), ("test", te)):
        for i in idx.tolist():
            folder = root / name / str(int(y[i]))
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (x[i, 0].numpy().astype(np.float32) * 255.0 / 16.0).round().astype(np.uint8)
            Image.fromarray(pixels, "L").save(str(folder / ("%04d.png" % i)))
    flat = x.view(len(y), -1).float()
    dist = torch.cdist(flat[te], flat[tr])
    knn = float((y[tr][dist.argmin(1)] == y[te]).float().mean())
    common = ["--model", "cnn", "--seed", "0"]
    ours = train(tmp / "folder", ["--dataset", "folder:%s" % root] + common, epochs)["test/acc"]
    builtin = train(tmp / "builtin", ["--dataset", "digits"] + common, epochs)["test/acc"]
    return [("images: digits as PNG files, `folder:PATH`, cnn", "test accuracy", "%.4f" % ours),
            ("images: the built-in `--dataset digits` (its own split), cnn", "test accuracy", "%.4f" % builtin),
            ("images: 1-nearest-neighbour on raw pixels (hand-written)", "test accuracy", "%.4f" % knn)], len(te)


def tables(tmp, epochs):
    lines = gzip.decompress((ROOT / "src" / "data" / "assets" / "diabetes.csv.gz").read_bytes()).decode()
    lines = lines.strip().splitlines()
    header, rows = lines[0], lines[1:]
    tr, te = split(len(rows))
    folder = tmp / "diabetes"
    folder.mkdir()
    for name, idx in (("train", tr), ("test", te)):
        (folder / ("%s.csv" % name)).write_text("\n".join([header] + [rows[i] for i in idx.tolist()]) + "\n")
    values = torch.tensor([[float(v) for v in r.split(",")] for r in rows], dtype=torch.float64)
    xs, ys = values[:, :-1], values[:, -1]
    design = lambda x: torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # noqa: E731
    coef = torch.linalg.lstsq(design(xs[tr]), ys[tr].unsqueeze(1)).solution
    pred = (design(xs[te]) @ coef).view(-1)
    r2 = float(1 - ((pred - ys[te]) ** 2).sum() / ((ys[te] - ys[te].mean()) ** 2).sum())
    ours = train(tmp / "csv", ["--dataset", "csv:%s" % folder, "--seed", "0", "--val-split", "0.2",
                               "--weight-decay", "0.01"], epochs * 4)["test/r2"]
    return [("table: diabetes as CSV files, `csv:PATH`, mlp", "test R^2", "%.4f" % ours),
            ("table: least squares on the same rows (hand-written)", "test R^2", "%.4f" % r2)], len(te)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30, help="for the images; the table trains 4x as many")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image_rows, n_images = images(Path(tmp), args.epochs)
        table_rows, n_rows = tables(Path(tmp), args.epochs)
    print("### Your own data, no code: accuracy against a hand-written baseline\n")
    print("%s; the same train/test split (a fifth held out, seed %d: %d test images, %d test rows) for ours and the "
          "baseline; %d epochs (images), %d (table)\n" % (machine(), SEED, n_images, n_rows, args.epochs,
                                                          args.epochs * 4))
    print(table(("what", "metric", "value"), image_rows + table_rows))


if __name__ == "__main__":
    main()
