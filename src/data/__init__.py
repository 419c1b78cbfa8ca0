"""Datasets, registered by name. Every module in this folder is imported, so adding a dataset is one file:

    from . import register, ArrayDataset, Splits

    @register("mydata")
    def build(cfg):
        ...                                        # read files under cfg.data_dir
        return Splits(train=ArrayDataset(x, y), val=ArrayDataset(xv, yv),
                      input_shape=(1, 28, 28), num_classes=10)

`train`/`val` are ArrayDatasets (in-memory, batched indexing: fast) or any map-style dataset of
(input, label) pairs. `--prepare-data` runs `build` once, which downloads and verifies.
"""
from collections import namedtuple

import torch

from ..errors import TrainingError
from ..registry import Registry

_REGISTRY = Registry(__name__, __path__, skip=("download",))
register, names = _REGISTRY.register, _REGISTRY.names

Splits = namedtuple("Splits", "train val input_shape num_classes")


def build(cfg):
    """The dataset's splits, checked: labels of in-memory datasets must be classes 0 .. num_classes-1."""
    splits = _REGISTRY[cfg.dataset](cfg)
    for name in ("train", "val"):
        part = getattr(splits, name)
        labels = getattr(part, "y", None)
        if isinstance(labels, torch.Tensor) and len(labels):
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= splits.num_classes:
                raise TrainingError("dataset %s: %s labels span %d .. %d, outside the classes 0 .. %d; fix or delete "
                                    "its files in %s" % (cfg.dataset, name, low, high, splits.num_classes - 1,
                                                         cfg.data_dir))
    return splits


class ArrayDataset(object):
    """Samples held in one tensor (uint8 or float); indexing with a list of indices returns a whole batch.

    Inputs come out as float32: (x * scale - mean) / std.
    """

    batched = True

    def __init__(self, x, y, scale=1.0, mean=0.0, std=1.0):
        if len(x) != len(y):
            raise TrainingError("a dataset's inputs and labels differ in length: %d vs %d" % (len(x), len(y)))
        self.x, self.y = x, y.long()
        self.scale, self.mean, self.std = scale, mean, std

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        index = torch.as_tensor(index, dtype=torch.long)
        x = self.x[index].float()
        return (x * self.scale - self.mean) / self.std, self.y[index]


_REGISTRY.discover()
