"""Synthetic images of any shape and size, for benchmarks: class templates plus noise, so loss can fall.

Made from a fixed seed, held as uint8 in memory; --synthetic-size training samples, a tenth as many for val.
"""
import torch

from . import ArrayDataset, Splits, register


def make(n, shape, classes, seed):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 256, (classes,) + shape, generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (n,), generator=g)
    noise = torch.randint(0, 256, (n,) + shape, generator=g, dtype=torch.uint8)
    x = (templates[y] // 2 + noise // 2).to(torch.uint8)
    return x, y


@register("synthetic")
def build(cfg):
    shape = tuple(int(d) for d in cfg.synthetic_shape.split(","))
    k = cfg.synthetic_classes
    norm = dict(scale=1 / 255.0, mean=0.5, std=0.25)
    train = ArrayDataset(*make(cfg.synthetic_size, shape, k, 1234), **norm)
    val = ArrayDataset(*make(max(cfg.synthetic_size // 10, k), shape, k, 4321), **norm)
    return Splits(train, val, shape, k)
