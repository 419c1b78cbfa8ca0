"""The handwritten digits shipped in this repo (no network): 1797 grey 8x8 images, 10 classes.

The UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0),
as scikit-learn ships it in assets/digits.csv.gz: 64 pixel values 0..16 then the label, one image a line.
A fixed eighth (the same for every --seed) is held out as the test split; validation is carved from the rest.
"""
import gzip
from pathlib import Path

import numpy as np
import torch

from . import ArrayDataset, Splits, register

ASSET = Path(__file__).resolve().parent / "assets" / "digits.csv.gz"


def load_arrays(path=ASSET):
    with gzip.open(str(path), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return torch.from_numpy(table[:, :64].reshape(-1, 1, 8, 8).copy()), torch.from_numpy(table[:, 64].astype(np.int64))


@register("digits", task="classification", model="cnn", recipe="classic")
def build(cfg):
    x, y = load_arrays()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = len(y) // 8
    test, train = order[:n_test].sort().values, order[n_test:].sort().values
    norm = dict(scale=1 / 16.0, mean=0.3, std=0.38)
    return Splits(train=ArrayDataset(x[train], y[train], **norm), test=ArrayDataset(x[test], y[test], **norm),
                  input_shape=(1, 8, 8), num_classes=10)
