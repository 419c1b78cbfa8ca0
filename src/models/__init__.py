"""Models, registered by name. Every module in this folder is imported, so adding a model is one file:

    import torch.nn as nn
    from . import register

    @register("mynet")
    def build(input_shape, num_classes, cfg):      # input_shape is (C, H, W)
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2],
                                                     num_classes))

cfg carries --width, --depth and --dropout (0 width/depth: the model's own default).
"""
from ..registry import Registry

_REGISTRY = Registry(__name__, __path__)
register, names = _REGISTRY.register, _REGISTRY.names


def build(cfg, input_shape, num_classes):
    return _REGISTRY[cfg.model](tuple(input_shape), num_classes, cfg)


_REGISTRY.discover()
