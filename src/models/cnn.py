"""Small CNN: --depth conv blocks (default 2) of 3x3 conv + BN + ReLU, channels doubling from --width
(default 32), 2x2 pooling while the image is large enough, then global average pooling and a linear head."""
import torch.nn as nn

from . import register


@register("cnn")
def build(input_shape, num_classes, cfg):
    width, depth = cfg.width or 32, cfg.depth or 2
    channels, size = input_shape[0], min(input_shape[1], input_shape[2])
    layers = []
    for i in range(depth):
        out = width * 2 ** i
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if size >= 4:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)
