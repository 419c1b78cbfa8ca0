"""The data of the own-data benchmark (own_data_accuracy.py), written as a researcher's files would be: image folders
of class folders and CSV tables, all made offline from a fixed seed.

- `shapes_folder`: a few hundred PNG/JPEG images of four classes of drawn shapes (square, disc, triangle, cross) in
  varied sizes (24 to 80 pixels a side, not square), modes (RGB, grey, RGBA) and colours on noisy backgrounds; one
  class has only 12 images.
- `fashion_folder`: the Fashion-MNIST PNG tree (train/<class>/, test/<class>/) from Debian's dataset-fashion-mnist.
- `sklearn_tables`: scikit-learn's bundled tables as CSV files (the target last).
- `messy_table`: a generated regression table of 54,000 rows with heavy-tailed features and outliers (values up to
  1e9), a category column, missing values and an identifier column: the kind that made the old defaults diverge.
- `mixed_table`: a generated classification table with categories, missing values and an imbalanced target.
"""
import csv
import gzip
import struct
from pathlib import Path

import numpy as np

SHAPES = ("square", "disc", "triangle", "cross")


def _draw(kind, size, rng):
    """One image of a shape at a random place, size (a fifth to two thirds of the short side), angle and colour on
    a background of another random colour with heavy noise."""
    from PIL import Image, ImageDraw
    w, h = size
    big = 4 * max(w, h)  # drawn large, rotated, then cut and shrunk: smooth edges at any angle
    back = tuple(int(v) for v in rng.randint(0, 256, 3))
    colour = tuple(int(v) for v in rng.randint(0, 256, 3))
    while abs(sum(back) - sum(colour)) < 200:  # a shape visible against its background, in grey too
        back = tuple(int(v) for v in rng.randint(0, 256, 3))
    shape = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(shape)
    s, c = big * rng.uniform(0.3, 0.45), big / 2
    if kind == "square":
        d.rectangle([c - s, c - s, c + s, c + s], fill=255)
    elif kind == "disc":
        d.ellipse([c - s, c - s, c + s, c + s], fill=255)
    elif kind == "triangle":
        d.polygon([(c, c - s), (c - s, c + s * 0.8), (c + s, c + s * 0.8)], fill=255)
    else:
        t = s / 3
        d.rectangle([c - s, c - t, c + s, c + t], fill=255)
        d.rectangle([c - t, c - s, c + t, c + s], fill=255)
    shape = shape.rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR)
    scale = rng.uniform(0.6, 1.0) * min(w, h) / big
    side = max(4, int(big * scale))
    shape = shape.resize((side, side), Image.BILINEAR)
    image = Image.new("RGB", (w, h), back)
    x0, y0 = int(rng.randint(0, max(1, w - side + 1))), int(rng.randint(0, max(1, h - side + 1)))
    image.paste(Image.new("RGB", (side, side), colour), (x0, y0), shape)
    pixels = np.asarray(image).astype(np.int16) + rng.randint(-25, 26, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def shapes_folder(root, seed=0, counts=(120, 110, 120, 12)):
    """root/<shape>/<n>.png|jpg: counts[i] images of SHAPES[i] (362 by default); returns root."""
    rng = np.random.RandomState(seed)
    root = Path(root)
    for kind, count in zip(SHAPES, counts):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            side = int(rng.randint(24, 65))
            size = (side, int(side * rng.uniform(0.8, 1.25)))
            image = _draw(kind, size, rng).convert(("RGB", "L", "RGBA")[i % 3])
            ext = "jpg" if image.mode == "RGB" and i % 2 else "png"
            image.save(str(root / kind / ("%03d.%s" % (i, ext))))
    return root


FASHION = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def _idx(path):
    raw = gzip.decompress(Path(path).read_bytes())
    dims = raw[3]
    shape = struct.unpack(">" + "I" * dims, raw[4:4 + 4 * dims])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_folder(root, source="/usr/share/datasets/fashion-mnist", per_class=None):
    """root/train/<class>/ and root/test/<class>/ PNG files from Debian's dataset-fashion-mnist (per_class: only
    the first N images of each class in each split); returns root, or None when the package is not installed."""
    from PIL import Image
    source = Path(source)
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    if not all((source / f).is_file() for pair in names.values() for f in pair):
        return None
    root = Path(root)
    for split, (images, labels) in names.items():
        x, y = _idx(source / images), _idx(source / labels)
        seen = [0] * 10
        for i in range(len(y)):
            c = int(y[i])
            if per_class is not None and seen[c] >= per_class:
                continue
            seen[c] += 1
            folder = root / split / FASHION[c]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i], "L").save(str(folder / ("%05d.png" % i)))
    return root


def _write(path, header, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def sklearn_tables(root):
    """{name: (csv path, task)} of scikit-learn's bundled tables (the target the last column)."""
    from sklearn import datasets
    out = {}
    for name, loader, task in (("iris", datasets.load_iris, "classification"),
                               ("wine", datasets.load_wine, "classification"),
                               ("breast-cancer", datasets.load_breast_cancer, "classification"),
                               ("diabetes", datasets.load_diabetes, "regression")):
        bunch = loader()
        header = [str(n).replace(",", " ") for n in bunch.feature_names] + ["target"]
        rows = [["%r" % float(v) for v in x] + [("%d" % t) if task == "classification" else "%r" % float(t)]
                for x, t in zip(bunch.data, bunch.target)]
        if task == "classification":  # class names as text, as a researcher's table has them
            rows = [r[:-1] + [str(bunch.target_names[int(r[-1])])] for r in rows]
        out[name] = (_write(Path(root) / ("%s.csv" % name), header, rows), task)
    return out


def messy_table(path, n=54000, seed=0):
    """A regression table with heavy tails and outliers: the target depends on log-scaled and plain features, a
    category and a missing-value pattern; an id column a model must not learn from."""
    rng = np.random.RandomState(seed)
    income = np.exp(rng.normal(10, 1.2, n))  # lognormal: 1e2 .. 1e7
    area = rng.pareto(1.5, n) * 50 + 20  # heavy tail
    rooms = rng.randint(1, 9, n).astype(float)
    age = rng.uniform(0, 100, n)
    city = rng.choice(["north", "south", "east", "west", "centre"], n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    bonus = {"north": 0.3, "south": -0.2, "east": 0.1, "west": 0.0, "centre": 0.6}
    y = (0.8 * np.log(income) + 0.6 * np.log(area) + 0.15 * rooms - 0.01 * age
         + np.array([bonus[c] for c in city]) + 0.5 * np.sin(age / 10) + rng.normal(0, 0.15, n))
    outlier = rng.rand(n) < 0.002  # data-entry errors: a thousand or a million times too large
    area_written = np.where(outlier, area * rng.choice([1e3, 1e6], n), area)
    rows = []
    for i in range(n):
        rows.append(["id%06d" % (i * 7919 % 1000003), "%.2f" % income[i],
                     "" if rng.rand() < 0.05 else "%.1f" % area_written[i], "%d" % rooms[i], "%.1f" % age[i],
                     city[i], "%.4f" % y[i]])
    return _write(path, ["id", "income", "area", "rooms", "age", "city", "price"], rows)


def mixed_table(path, n=3000, seed=1):
    """A classification table: 3 classes (60/30/10 %), numbers with gaps, two category columns."""
    rng = np.random.RandomState(seed)
    rows = []
    for _ in range(n):
        c = rng.choice(3, p=[0.6, 0.3, 0.1])
        a = rng.normal(c * 1.0, 1.0)
        b = rng.exponential(1.0 + c)
        colour = rng.choice(["red", "green", "blue"], p=[[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]][c])
        size = rng.choice(["S", "M", "L", "XL"])
        rows.append(["" if rng.rand() < 0.1 else "%.3f" % a, "%.3f" % (b * 1000), colour, size,
                     "%.3f" % rng.normal(), ["low", "mid", "high"][c]])
    return _write(path, ["a", "b", "colour", "size", "noise", "grade"], rows)

