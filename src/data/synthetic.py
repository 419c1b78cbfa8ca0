"""Synthetic images of any shape and size, for benchmarks: class templates plus noise, so loss can fall.

Made from a fixed seed, held as uint8 in memory; --synthetic-size training samples (val is carved from them),
a tenth as many for test.
"""
import torch

from . import ArrayDataset, Splits, register
from ..runtime import compat
from ..runtime.errors import UsageError


def make(n, shape, classes, seed):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 256, (classes,) + shape, generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (n,), generator=g)
    noise = torch.randint(0, 256, (n,) + shape, generator=g, dtype=torch.uint8)
    x = (templates[y] // 2 + noise // 2).to(torch.uint8)
    return x, y


@register("synthetic", task="classification", model="cnn", recipe="classic")
def build(cfg):
    shape = tuple(cfg.synthetic_shape)
    k = cfg.synthetic_classes
    n = cfg.synthetic_size + max(cfg.synthetic_size // 10, k)
    need = 3 * n * shape[0] * shape[1] * shape[2]
    if need > compat.memory_bytes() // 2:  # making it holds about three bytes a pixel at once
        raise UsageError("--synthetic-size %d of --synthetic-shape %s needs about %.1f GB to make, more than half of "
                         "this machine's %.1f GB; make them smaller" % (cfg.synthetic_size, cfg.synthetic_shape,
                                                                       need / 1e9, compat.memory_bytes() / 1e9))
    norm = dict(scale=1 / 255.0, mean=0.5, std=0.25)
    train = ArrayDataset(*make(cfg.synthetic_size, shape, k, 1234), **norm)
    test = ArrayDataset(*make(max(cfg.synthetic_size // 10, k), shape, k, 4321), **norm)
    return Splits(train=train, test=test, input_shape=shape, num_classes=k)
