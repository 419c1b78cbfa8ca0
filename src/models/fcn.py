"""A fully convolutional net for per-pixel tasks: --depth dilated 3x3 convolutions (default 4, dilations 1, 2,
4, 8: each pixel sees a 31x31 window) of --width channels (default 32), then a 1x1 convolution to one score per
class and pixel. Output (N, classes, H, W), the input's size."""
import torch.nn as nn

from . import register


@register("fcn")
def build(input_shape, num_classes, cfg):
    width, depth = cfg.width or 32, cfg.depth or 4
    layers, channels = [], input_shape[0]
    for i in range(depth):
        dilation = 2 ** (i % 4)
        layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        channels = width
    layers.append(nn.Conv2d(channels, num_classes, 1))
    return nn.Sequential(*layers)
