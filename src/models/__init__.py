"""Models, registered by name. Every module in this folder is imported, so adding a model is one file:

    import torch.nn as nn
    from . import register

    @register("mynet")
    def build(input_shape, num_classes, cfg):      # input_shape is (C, H, W), or (F,) for tables
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2],
                                                     num_classes))

cfg carries --width, --depth and --dropout (0 width/depth: the model's own default). num_classes is the number of
outputs (classes, or 1 for a regression target). `from_checkpoint(path)` rebuilds a trained model.

A model registered with named=True is a family: --model KIND:NAME (timm:resnet18, timm_models.py) builds its
member NAME; cfg.model holds the whole value.
"""
from types import SimpleNamespace

import torch
import torch.nn as nn

from ..runtime import registry
from ..runtime.registry import Registry

_REGISTRY = Registry(__name__, __path__)
register, names = _REGISTRY.register, _REGISTRY.names


kind = registry.kind  # the registered model of a --model value: timm for timm:NAME


def known(name):
    """Whether a --model value names a model: a registered name, or KIND:NAME of a family (named=True)."""
    return _REGISTRY.known(name, "named")


def choices():
    """The --model values, for messages: the names, and KIND:NAME of the families."""
    return _REGISTRY.choices("named", "NAME")


def plain_names():
    """The models that need no NAME (those a dataset can be tried with when the chosen one does not fit)."""
    return [n for n in names() if not _REGISTRY.meta[n].get("named")]


def hook(cfg, name):
    """A model family's own function `name` (timm's pretrained weights and their input settings), or None."""
    return _REGISTRY.meta.get(kind(cfg.model), {}).get(name)


def head_of(cfg, model):
    """The names of the classifier modules of cfg's model: its family's own answer (timm's pretrained config), else
    the last module with weights (the output layer of the built-in models)."""
    get = hook(cfg, "head")
    found = get(model) if get is not None else ()
    if found:
        return found
    last = [name for name, module in model.named_modules() if name and getattr(module, "weight", None) is not None]
    return (last[-1],) if last else ()


def layers_of(cfg, model):
    """{parameter name: layer index from the input} where cfg's model family says it (timm), else None."""
    get = hook(cfg, "layers")
    return get(model) if get is not None else None


def build(cfg, input_shape, num_classes):
    return _REGISTRY[kind(cfg.model)](tuple(input_shape), num_classes, cfg)


def describe(cfg):
    """How an error names the model a checkpoint must fit."""
    return "model '%s' on dataset '%s'" % (cfg.model, cfg.dataset)


class TargetScale(nn.Module):
    """A regression model whose outputs come back in the target's units (training standardizes the target)."""

    def __init__(self, model, mean, std):
        super(TargetScale, self).__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, x):
        return self.model(x) * self.std + self.mean


class InputScale(nn.Module):
    """A model that takes raw inputs (uint8 images, unscaled features) and scales them as its training data was:
    (x * scale - mean) / std, the same operations in the same order, so predictions match the evaluation's."""

    def __init__(self, model, scale, mean, std):
        super(InputScale, self).__init__()
        self.model, self.scale = model, scale
        for name, value in (("mean", mean), ("std", std)):
            if isinstance(value, torch.Tensor):
                self.register_buffer(name, value.float())
            else:
                setattr(self, name, value)

    def forward(self, x):
        return self.model((x.float() * self.scale - self.mean) / self.std)


def from_checkpoint(path, device="cpu"):
    """The trained model of a checkpoint, rebuilt from the checkpoint's own config, on device, in eval mode:

        from src.models import from_checkpoint
        model = from_checkpoint("models/best/digits-cnn.pt")

    The checkpoint is verified and loaded without running code (fileformat.load). The weights are those its
    evaluations used (the moving average of a run with --ema). It takes raw inputs, as the dataset stores them
    (uint8 images, unscaled table columns): the dataset's input scaling is stored in the checkpoint and applied
    first. A regression model comes wrapped so that its outputs are in the target's units. So model(raw inputs)
    gives the predictions that --evaluate measured."""
    from ..state import fileformat
    return from_state(fileformat.load(path, full=False), path, device)


def from_state(state, path, device="cpu"):
    """from_checkpoint's model from a checkpoint already loaded (fileformat.load) from path."""
    from ..runtime import compat
    from ..state import fileformat
    spec = state.get("model_spec")
    if not isinstance(spec, dict):
        raise fileformat.CorruptCheckpoint("%s has no model_spec (written before this project stored one)" % path)
    model = _REGISTRY[kind(spec["model"])](tuple(spec["input_shape"]), spec["outputs"],
                                           SimpleNamespace(**state["config"]))
    model.load_state_dict(compat.clean_state_dict(fileformat.evaluated_weights(state)))
    transform = spec.get("input_transform")
    if transform:
        model = InputScale(model, transform["scale"], transform["mean"], transform["std"])
    scale = state.get("task") or {}
    if "target_std" in scale:
        model = TargetScale(model, scale["target_mean"], scale["target_std"])
    return model.to(device).eval()


_REGISTRY.discover()
