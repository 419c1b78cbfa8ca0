"""What the no-code paths reach on a researcher's own data with the defaults, beside what one would otherwise use,
on the very same rows (the split train.py makes: its train rows fit the baselines, its test rows score them all).

Data (benchmarks/own_data_sets.py, all offline): scikit-learn's bundled tables (iris, wine, breast cancer,
diabetes) and two generated ones (54,000 rows with heavy tails, outliers, gaps and an id column; a 3-class table
with categories and gaps) as CSV files; a generated folder of 362 shape images in varied sizes and modes with one
class of 12; the UCI digits shipped in src/data/assets as PNG files; with --fashion, the Fashion-MNIST PNG tree
from Debian's dataset-fashion-mnist beside the built-in `--dataset fashion-mnist` (13 to 22 minutes each on CPU).

Baselines: LogisticRegression (classification) or Ridge (regression) and LightGBM with their defaults for tables
(benchmark-only dependencies, benchmarks/requirements.txt); a hand-written 3-block CNN with Adam 1e-3 (40 epochs,
batch 32) for images. `noise` is the standard error of the default's test score from the test rows' count.

    python benchmarks/own_data_accuracy.py                      # about 5 minutes on 2 CPU cores
    python benchmarks/own_data_accuracy.py --seeds 0,1,2        # train.py and the CNN over three seeds
    python benchmarks/own_data_accuracy.py --fashion            # with the Fashion-MNIST PNG tree
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import own_data_sets  # noqa: E402
from common import machine, table  # noqa: E402
from src import data  # noqa: E402
from src.app import flags  # noqa: E402

THREADS = 2
EXTRA = []  # more train.py flags (the command line's after --)
HAND_EPOCHS = [40]


def train(project, args, seed):
    """train.py with its defaults in a fresh folder: (test metrics of metrics.json, seconds)."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--progress", "plain", "--run-name", "r", "--seed", str(seed),
           "--threads", str(THREADS), "--logs-dir", str(project / "logs"), "--models-dir", str(project / "models"),
           "--data-dir", str(project / "data")] + args + EXTRA
    started = time.time()
    res = subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(THREADS)))
    if res.returncode != 0:
        raise SystemExit("train.py %s failed:\n%s" % (" ".join(args), res.stdout[-3000:]))
    metrics = json.loads((project / "logs" / "r" / "metrics.json").read_text())["test"]
    return metrics, time.time() - started


def splits_of(args, data_dir):
    """The train and test arrays of train.py's split of this data (inputs as the model sees them)."""
    cfg, _ = flags.parse(args + ["--data-dir", str(data_dir)])
    splits = data.build(cfg)

    def arrays(ds):
        x, y = ds[list(range(len(ds)))]
        return x, y
    return cfg, splits, arrays(splits.train), arrays(splits.test)


def noise(task, score, n):
    """The standard error of a test score: of a proportion for accuracy, about sqrt(2/n) x (1 - R^2) for R^2."""
    return math.sqrt(max(score * (1 - score), 1e-9) / n) if task == "classification" else \
        math.sqrt(2.0 / n) * max(1 - score, 1e-3)


def table_rows(tmp, seeds):
    import lightgbm
    from sklearn.linear_model import LogisticRegression, Ridge
    folder = tmp / "tables"
    found = own_data_sets.sklearn_tables(folder)
    found["houses (54k rows, outliers)"] = (own_data_sets.messy_table(folder / "houses.csv"), "regression")
    found["grades (categories, gaps)"] = (own_data_sets.mixed_table(folder / "grades.csv"), "classification")
    rows = []
    for name, (path, task) in found.items():
        args = ["--dataset", "csv:%s" % path]
        cfg, _, (xtr, ytr), (xte, yte) = splits_of(args, tmp / "data")
        xtr, ytr, xte, yte = xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy()
        if task == "classification":
            linear = LogisticRegression(max_iter=5000).fit(xtr, ytr).score(xte, yte)
            gbm = lightgbm.LGBMClassifier(verbose=-1).fit(xtr, ytr).score(xte, yte)
            key, label = "test/acc", "accuracy"
        else:
            linear = Ridge(1.0).fit(xtr, ytr).score(xte, yte)
            gbm = lightgbm.LGBMRegressor(verbose=-1).fit(xtr, ytr).score(xte, yte)
            key, label = "test/r2", "R^2"
        ours, seconds = zip(*[train(tmp / ("t-%s-%d" % (path.stem, s)), args, s) for s in seeds])
        score = float(np.mean([m[key] for m in ours]))
        rows.append((name, "%d/%d" % (len(ytr), len(yte)), label, "%.4f" % score, "%.4f" % noise(task, score, len(yte)),
                     "%.4f" % linear, "%.4f" % gbm, "%.0f" % np.mean(seconds)))
        print("  %s: ours %.4f, linear %.4f, LightGBM %.4f" % (name, score, linear, gbm), file=sys.stderr)
    return rows


def hand_cnn(train_xy, test_xy, classes, seed, epochs=None, lr=1e-3, batch=32):
    """What a researcher writes by hand: 3 conv-BN-ReLU-pool blocks (32, 64, 128), Adam, the last epoch's model."""
    nn = torch.nn
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    (x, y), (xt, yt) = train_xy, test_xy

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
    model = nn.Sequential(*block(x.shape[1], 32), *block(32, 64), *block(64, 128), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(128, classes))
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs or HAND_EPOCHS[0]):
        order = torch.randperm(len(y))
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float(torch.cat([model(xt[i:i + 512]).argmax(1) for i in range(0, len(yt), 512)]).eq(yt)
                     .float().mean())


def image_rows(tmp, seeds, fashion):
    from PIL import Image
    from src.data.digits import load_arrays
    folders = [("shapes (362 images, one class of 12)", own_data_sets.shapes_folder(tmp / "shapes"), ["--image-size",
                                                                                                      "32"])]
    x, y = load_arrays()
    root = tmp / "digits"
    for i in range(len(y)):
        folder = root / str(int(y[i]))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (x[i, 0].numpy().astype(np.float32) * 255.0 / 16.0).round().astype(np.uint8)
        Image.fromarray(pixels, "L").save(str(folder / ("%04d.png" % i)))
    folders.append(("UCI digits as PNG files (1,797 8x8)", root, []))
    rows = []
    for name, root, extra in folders:
        args = ["--dataset", "folder:%s" % root] + extra
        cfg, splits, train_xy, test_xy = splits_of(args, tmp / "data")
        ours, seconds = zip(*[train(tmp / ("i-%s-%d" % (root.name, s)), args, s) for s in seeds])
        score = float(np.mean([m["test/acc"] for m in ours]))
        hand = float(np.mean([hand_cnn(train_xy, test_xy, splits.num_classes, s) for s in seeds]))
        n = len(test_xy[1])
        rows.append((name, "%d/%d" % (len(train_xy[1]), n), "accuracy", "%.4f" % score,
                     "%.4f" % noise("classification", score, n), "", "%.4f" % hand, "%.0f" % np.mean(seconds)))
        print("  %s: ours %.4f, hand-written CNN %.4f" % (name, score, hand), file=sys.stderr)
    if fashion:
        tree = own_data_sets.fashion_folder(tmp / "fashion")
        if tree is None:
            rows.append(("Fashion-MNIST PNG tree", "", "", "not run: install Debian's dataset-fashion-mnist", "", "",
                         "", ""))
        else:
            ours, seconds = train(tmp / "f-folder", ["--dataset", "folder:%s" % tree], seeds[0])
            builtin, bseconds = train(tmp / "f-builtin", ["--dataset", "fashion-mnist", "--data-mirror",
                                                          "file:///usr/share/datasets"], seeds[0])
            rows.append(("Fashion-MNIST PNG tree, folder:PATH", "60000/10000", "accuracy", "%.4f" % ours["test/acc"],
                         "%.4f" % noise("classification", ours["test/acc"], 10000), "", "", "%.0f" % seconds))
            rows.append(("the built-in --dataset fashion-mnist", "60000/10000", "accuracy",
                         "%.4f" % builtin["test/acc"], "", "", "", "%.0f" % bseconds))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0", help="train.py (and the hand-written CNN) once per seed, the mean shown")
    p.add_argument("--fashion", action="store_true", help="also the Fashion-MNIST PNG tree (about 40 minutes)")
    p.add_argument("--hand-epochs", type=int, default=40, help="epochs of the hand-written CNN")
    p.add_argument("train_args", nargs="*", help="more train.py flags after -- (a quick look: -- --max-steps 20)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    EXTRA[:] = args.train_args
    HAND_EPOCHS[0] = args.hand_epochs
    with tempfile.TemporaryDirectory() as tmp:
        rows = table_rows(Path(tmp), seeds) + image_rows(Path(tmp), seeds, args.fashion)
    print("### Your own data, no code: the defaults against what one would otherwise use\n")
    print("%s; `python train.py --dataset csv:PATH` / `folder:PATH` with no other flag (seeds %s, the mean shown), "
          "on the same train/test rows as the baselines (LogisticRegression or Ridge, LightGBM: fitted on train.py's "
          "train rows; its validation rows unused by them); noise: the standard error of our test score\n"
          % (machine(), args.seeds))
    print(table(("data", "train/test", "metric", "train.py defaults", "noise", "linear", "LightGBM / hand CNN",
                 "seconds"), rows))


if __name__ == "__main__":
    main()
