"""Multi-layer perceptron: --depth hidden layers (default 2) of --width units (default 256)."""
import torch.nn as nn

from . import register


@register("mlp")
def build(input_shape, num_classes, cfg):
    width, depth = cfg.width or 256, cfg.depth or 2
    layers, size = [nn.Flatten()], input_shape[0] * input_shape[1] * input_shape[2]
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)]
        size = width
    layers.append(nn.Linear(size, num_classes))
    return nn.Sequential(*layers)
