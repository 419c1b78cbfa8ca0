"""Optimizer and learning-rate schedule built from the config, and re-applied after a resume so that a
changed --lr, --weight-decay, --momentum or --epochs takes effect instead of the checkpoint's values; which
parameters train (--freeze, --unfreeze-at) and at which share of the learning rate (--lr-groups)."""
import math
from fnmatch import fnmatchcase

import torch

from ..runtime import compat
from ..runtime.errors import UsageError


def _matching(model, patterns, flag):
    """[(name, parameter)] of the model whose names match any pattern; UsageError for a pattern that matches none."""
    named = list(compat.unwrap_model(model).named_parameters())
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name, _ in named):
            shown = ", ".join(name for name, _ in named[:12]) + (", ..." if len(named) > 12 else "")
            raise UsageError("%s %s matches no parameter of the model (its parameters: %s); give patterns of these "
                             "names" % (flag, pattern, shown))
    return [(name, p) for name, p in named if any(fnmatchcase(name, pattern) for pattern in patterns)]


def lr_scales(cfg):
    """The factor of --lr of each parameter group: 1 for group 0, then each --lr-groups pattern's."""
    return [1.0] + [factor for _, factor in cfg.lr_groups]


def _groups(cfg, model):
    """[(factor of --lr, [parameters])]: a parameter goes to the group of the first --lr-groups pattern its name
    matches (its factor), else to group 0 (x 1); with --layer-decay each of those is split by layer, a layer k
    below the top one at FACTOR ** k more (layer_map)."""
    patterns = [pattern for pattern, _ in cfg.lr_groups]
    _matching(model, patterns, "--lr-groups")
    named = list(compat.unwrap_model(model).named_parameters())
    scales = lr_scales(cfg)
    which = [next((k + 1 for k, pattern in enumerate(patterns) if fnmatchcase(name, pattern)), 0)
             for name, _ in named]
    if not getattr(cfg, "layer_decay", 0):
        return [(scale, [p for (_, p), w in zip(named, which) if w == k]) for k, scale in enumerate(scales)]
    layer = layer_map(cfg, model)
    top = max(layer.values()) if layer else 0
    keys = sorted(set((w, layer.get(name, top)) for (name, _), w in zip(named, which)))
    return [(scales[w] * cfg.layer_decay ** (top - k), [p for (name, p), w2 in zip(named, which)
                                                        if (w2, layer.get(name, top)) == (w, k)]) for w, k in keys]


def layer_map(cfg, model):
    """{parameter name: layer} from the input (0) up to the head: the model family's own grouping (timm's
    group_matcher), else the order of the model's top-level parts."""
    from .. import models
    found = models.layers_of(cfg, model)
    if found:
        return found
    plain = compat.unwrap_model(model)
    tops = []
    for name, _ in plain.named_parameters():
        top = name.split(".")[0]
        if top not in tops:
            tops.append(top)
    return {name: tops.index(name.split(".")[0]) for name, _ in plain.named_parameters()}


def param_groups(cfg, model):
    """The optimizer's parameter groups, each at --lr times its factor (_groups)."""
    return [{"params": params, "lr": cfg.lr * scale} for scale, params in _groups(cfg, model)]


def backbone(cfg, model):
    """fnmatch patterns of every parameter outside the classifier head (--freeze-backbone): the modules beside the
    head on its path, conv1.*, layer1.*, ..., head.norm.*."""
    from .. import models
    plain = compat.unwrap_model(model)
    heads = models.head_of(cfg, plain)
    out = []
    for name, _ in plain.named_parameters():
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if any(h == prefix for h in heads):
                break
            if not any(h.startswith(prefix + ".") for h in heads):
                pattern = prefix + ".*" if k < len(parts) else prefix
                if pattern not in out:
                    out.append(pattern)
                break
    return out


class Freeze(object):
    """--freeze: the matching parameters keep requires_grad off (no gradient, so no optimizer update, weight decay
    or momentum either) until step --unfreeze-at (0: for good); --freeze-backbone N: every parameter outside the
    classifier head until step N. A pure function of the step: a resume freezes alike."""

    def __init__(self, model, cfg):
        patterns = cfg.freeze or (backbone(cfg, model) if getattr(cfg, "freeze_backbone", 0) else ())
        self.params = [p for _, p in _matching(model, patterns, "--freeze")]
        self.until, self.frozen = cfg.unfreeze_at or getattr(cfg, "freeze_backbone", 0), None

    def update(self, step):
        """Set the parameters for this step; True when that changed them after the first time."""
        frozen = bool(self.params) and (not self.until or step < self.until)
        if frozen == self.frozen:
            return False
        first, self.frozen = self.frozen is None, frozen
        for p in self.params:
            p.requires_grad_(not frozen)
        return not first


def build_optimizer(cfg, params, device=None):
    """The optimizer of --optimizer; on a GPU its fused kernel where this torch has one (one launch for every
    parameter instead of several per parameter: the loop's largest launch cost on small models)."""
    extra = compat.fused_optimizer_kwargs(device)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               **extra.get("SGD", {}))
    kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay,
                **extra.get(kind.__name__, {}))


def total_steps(cfg, steps_per_epoch):
    total = cfg.epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps else total


def lr_factor(cfg, total):
    """Multiplier of --lr at a given step: linear warmup, then the chosen schedule. Steps are optimizer steps
    (with --accum-steps, one per accumulated batch); multistep milestones count from the run's first step."""
    warmup = cfg.warmup_steps
    milestones = list(cfg.lr_milestones)

    def factor(step):
        if step < warmup:
            return (step + 1) / float(warmup)
        progress = min(1.0, (step - warmup) / float(max(1, total - warmup)))
        if cfg.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.scheduler == "linear":
            return 1.0 - progress
        if cfg.scheduler == "step":
            return cfg.lr_gamma ** ((step - warmup) // cfg.lr_step_size)
        if cfg.scheduler == "multistep":
            return cfg.lr_gamma ** sum(1 for m in milestones if step >= m)
        return 1.0
    return factor


def build_scheduler(cfg, optimizer, total):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total))


def apply_config(cfg, optimizer, scheduler, device=None, model=None):
    """Put the config's hyperparameters into restored optimizer and scheduler states (and the fused kernel of
    this device: a checkpoint written on a GPU may resume on a CPU, and the other way round)."""
    fused = compat.fused_optimizer_kwargs(device).get(type(optimizer).__name__, {}).get("fused")
    scales = [scale for scale, _ in _groups(cfg, model)] if model is not None else lr_scales(cfg)
    for group, scale in zip(optimizer.param_groups, scales):
        if "fused" in group:
            group["fused"] = fused
        group["weight_decay"] = cfg.weight_decay
        group["initial_lr"] = cfg.lr * scale
        if "momentum" in group:
            group["momentum"] = cfg.momentum
        if "betas" in group:
            group["betas"] = (cfg.momentum, group["betas"][1])
    scheduler.base_lrs = [cfg.lr * scale for scale in scales]
    factor = scheduler.lr_lambdas[0]
    for group, scale in zip(optimizer.param_groups, scales):
        group["lr"] = cfg.lr * scale * factor(scheduler.last_epoch)
