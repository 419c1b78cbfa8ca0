"""Evaluation of a model on one split (val during training, test at its end, either with --evaluate): the task's
sums over every batch and every rank's shard, reduced once, then its values and pictures. Used by the loop and
by `train.py --evaluate`, so both give the same numbers."""
import torch

from ..data.loading import EpochBatches, make_loader
from .meter import add_sums


def loader_for(dataset, cfg, device, dist):
    """A loader over every sample of a split, in order, sharded across processes (nothing dropped)."""
    return make_loader(dataset, EpochBatches(len(dataset), cfg.batch_size, dist=dist, drop_tiny=False), cfg, device)


def evaluate(model, loader, task, precision, device, *, dist, channels_last=False, stop=None):
    """(values, pictures) of the model on the loader's split; None when a stop signal cut it short."""
    sums, first = {}, None
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                if stop is not None and dist.any(stop.requested):
                    return None
                inputs, target = task.to_device(batch, device, channels_last)
                if len(inputs) == 0:
                    continue
                with precision.autocast():
                    output = model(inputs)
                pred = task.prediction(output)
                add_sums(sums, task.eval_sums(pred, target))
                if first is None and dist.main:
                    first = (inputs[:32].cpu(), target[:32].cpu(), pred[:32].detach().float().cpu())
    finally:
        model.train()
    if dist.enabled and dist.any(not sums):  # a rank without samples (a split smaller than the processes)
        for layout in dist.gather({k: tuple(v.shape) for k, v in sums.items()}):
            for key, shape in layout.items():
                sums.setdefault(key, torch.zeros(shape, dtype=torch.float64, device=device))  # adds nothing
    keys = sorted(sums)
    flat = dist.sum_(torch.cat([sums[k].double().reshape(-1) for k in keys])).cpu()
    reduced, at = {}, 0
    for key in keys:
        n = sums[key].numel()
        reduced[key] = flat[at:at + n].view(sums[key].shape)
        at += n
    return task.eval_values(reduced), task.pictures(reduced, first)
