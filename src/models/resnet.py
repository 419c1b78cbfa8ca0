"""CIFAR-style ResNet (He et al. 2016, section 4.2): 6n+2 layers, three stages of --width (default 16),
2x and 4x channels. --depth picks 6n+2 (default 20: ResNet-20; 32, 44, 56, 110 as in the paper)."""
import torch.nn as nn
import torch.nn.functional as F

from . import register
from ..runtime.errors import UsageError


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super(BasicBlock, self).__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels, num_classes, width, blocks, dropout):
        super(ResNet, self).__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                stages.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


@register("resnet")
def build(input_shape, num_classes, cfg):
    depth = cfg.depth or 20
    if (depth - 2) % 6 or depth < 8:
        raise UsageError("--depth %d: a CIFAR ResNet has 6n+2 layers (20, 32, 44, 56, 110)" % depth)
    return ResNet(input_shape[0], num_classes, cfg.width or 16, (depth - 2) // 6, cfg.dropout)
