"""Synthetic shapes for per-pixel segmentation (no network, made from a fixed seed): grey 32x32 images with one
to three filled squares and discs of random size and place on a noisy background; the target gives each pixel
its class: 0 background, 1 square, 2 disc (a later shape covers an earlier one). 2,400 training images (val
is carved from them) and 600 test images."""
import torch

from . import ArrayDataset, Splits, register

SIZE, CLASSES = 32, 3


def make(n, seed):
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(SIZE).view(SIZE, 1).float()
    cols = torch.arange(SIZE).view(1, SIZE).float()
    images = torch.randint(0, 60, (n, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
    counts = torch.randint(1, 4, (n,), generator=g)
    for i in range(n):
        for _ in range(int(counts[i])):
            kind = int(torch.randint(1, CLASSES, (1,), generator=g))
            r = float(torch.randint(3, 8, (1,), generator=g))
            cy, cx = (float(v) for v in torch.randint(int(r), SIZE - int(r), (2,), generator=g))
            if kind == 1:
                inside = ((rows - cy).abs() <= r) & ((cols - cx).abs() <= r)
            else:
                inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r
            shade = int(torch.randint(140, 256, (1,), generator=g))
            images[i, 0][inside] = shade
            masks[i][inside] = kind
    return images, masks


@register("shapes", task="segmentation", model="fcn", recipe="classic")
def build(cfg):
    norm = dict(scale=1 / 255.0, mean=0.3, std=0.3)
    return Splits(train=ArrayDataset(*make(2400, 1), **norm), test=ArrayDataset(*make(600, 2), **norm),
                  input_shape=(1, SIZE, SIZE), num_classes=CLASSES)
