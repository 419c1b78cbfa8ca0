"""A real regression dataset shipped in this repo (no network): the diabetes data of Efron, Hastie, Johnstone
and Tibshirani (2004), "Least Angle Regression", Annals of Statistics 32(2). 442 patients; ten baseline
variables (age, sex, body mass index, average blood pressure, six blood serum measurements) and the target, a
quantitative measure of disease progression one year after baseline (25 .. 346). From scikit-learn's copy
(BSD-3-Clause) in assets/diabetes.csv.gz, raw values, one patient a line.

A fixed fifth (the same for every --seed) is held out as the test split; validation is carved from the rest
(--val-split, 0.2 here). Inputs are standardized with the mean and standard deviation of the training pool
(train and val, never test); the regression task standardizes the target itself.
"""
import gzip
from pathlib import Path

import numpy as np
import torch

from . import ArrayDataset, Splits, register

ASSET = Path(__file__).resolve().parent / "assets" / "diabetes.csv.gz"


def load_arrays(path=ASSET):
    with gzip.open(str(path), "rt") as f:
        table = np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.float64)
    return torch.from_numpy(table[:, :10]).float(), torch.from_numpy(table[:, 10]).float()


@register("diabetes", task="regression", model="mlp", val_split=0.2, recipe="classic")
def build(cfg):
    x, y = load_arrays()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = len(y) // 5
    test, pool = order[:n_test].sort().values, order[n_test:].sort().values
    mean, std = x[pool].mean(0), x[pool].std(0)
    norm = dict(mean=mean, std=std)
    return Splits(train=ArrayDataset(x[pool], y[pool], **norm), test=ArrayDataset(x[test], y[test], **norm),
                  input_shape=(10,), num_classes=1)
