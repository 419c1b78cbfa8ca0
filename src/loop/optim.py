"""Optimizer and learning-rate schedule built from the config, and re-applied after a resume so that a
changed --lr, --weight-decay, --momentum or --epochs takes effect instead of the checkpoint's values."""
import math

import torch

from ..runtime import compat


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
    for group in optimizer.param_groups:
        if "fused" in group:
            group["fused"] = fused
        group["weight_decay"] = cfg.weight_decay
        group["initial_lr"] = cfg.lr
        if "momentum" in group:
            group["momentum"] = cfg.momentum
        if "betas" in group:
            group["betas"] = (cfg.momentum, group["betas"][1])
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    factor = scheduler.lr_lambdas[0]
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * factor(scheduler.last_epoch)
