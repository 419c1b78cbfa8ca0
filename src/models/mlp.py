"""Multi-layer perceptron: --depth hidden layers (default 2) of --width units (default 256), on inputs of any shape
(flattened)."""
import torch.nn as nn

from . import register


@register("mlp")
def build(input_shape, num_classes, cfg):
    width, depth = cfg.width or 256, cfg.depth or 2
    size = 1
    for dim in input_shape:  # images (C, H, W) or feature vectors (F,)
        size *= dim
    layers = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)]
        size = width
    layers.append(nn.Linear(size, num_classes))
    return nn.Sequential(*layers)
