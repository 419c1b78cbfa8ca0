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


def param_groups(cfg, model):
    """The optimizer's parameter groups: a parameter goes to the group of the first --lr-groups pattern its name
    matches (lr x that factor), else to group 0 (lr x 1)."""
    patterns = [pattern for pattern, _ in cfg.lr_groups]
    _matching(model, patterns, "--lr-groups")
    groups = [[] for _ in lr_scales(cfg)]
    for name, p in compat.unwrap_model(model).named_parameters():
        groups[next((k + 1 for k, pattern in enumerate(patterns) if fnmatchcase(name, pattern)), 0)].append(p)
    return [{"params": params, "lr": cfg.lr * scale} for params, scale in zip(groups, lr_scales(cfg))]


class Freeze(object):
    """--freeze: the matching parameters keep requires_grad off (no gradient, so no optimizer update, weight decay
    or momentum either) until step --unfreeze-at (0: for good). A pure function of the step: a resume freezes
    alike."""

    def __init__(self, model, cfg):
        self.params = [p for _, p in _matching(model, cfg.freeze, "--freeze")]
        self.until, self.frozen = cfg.unfreeze_at, None

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


def apply_config(cfg, optimizer, scheduler, device=None):
    """Put the config's hyperparameters into restored optimizer and scheduler states (and the fused kernel of
    this device: a checkpoint written on a GPU may resume on a CPU, and the other way round)."""
    fused = compat.fused_optimizer_kwargs(device).get(type(optimizer).__name__, {}).get("fused")
    scales = lr_scales(cfg)
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
