"""Running sums kept on the device (no host sync per step) and the evaluation metrics."""
import torch

EVAL_METRICS = ("val/loss", "val/acc")


class TrainMeter(object):
    """Sums of the current logging window, on the training device; saved in checkpoints so that a resumed
    run logs the same averages as an uninterrupted one."""

    FIELDS = ("loss_sum", "grad_norm_sum", "correct", "samples", "steps", "nonfinite")

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        for name in self.FIELDS:
            setattr(self, name, torch.zeros((), dtype=torch.float64, device=self.device))

    def add(self, loss, grad_norm, correct, samples, grad_must_be_finite=True):
        loss, grad_norm = loss.detach().double(), grad_norm.detach().double()
        grad_ok = torch.isfinite(grad_norm)
        self.loss_sum += loss * samples
        self.grad_norm_sum += torch.where(grad_ok, grad_norm, torch.zeros_like(grad_norm))
        self.correct += correct.double()
        self.samples += samples
        self.steps += 1
        self.nonfinite += (~torch.isfinite(loss)).double()
        if grad_must_be_finite:
            self.nonfinite += (~grad_ok).double()

    # Under several processes each rank sums its own shards; these fields add up across ranks, the others
    # (gradient norm after the all-reduce, step count) are the same on every rank.
    ADDITIVE = ("loss_sum", "correct", "samples", "nonfinite")

    def _global(self, dist):
        sums = torch.stack([getattr(self, name) for name in self.ADDITIVE])
        return dict(zip(self.ADDITIVE, dist.sum_(sums.clone()).unbind(0)))

    def is_finite(self, dist):
        return float(self._global(dist)["nonfinite"]) == 0

    def averages(self, dist):
        """One host sync (and one all-reduce): the window's mean loss, accuracy and gradient norm."""
        total = self._global(dist)
        sums = torch.stack([total["loss_sum"], total["correct"], self.grad_norm_sum, total["samples"],
                            self.steps]).tolist()
        loss, correct, gnorm, samples, steps = sums
        return {"train/loss": loss / max(samples, 1), "train/acc": correct / max(samples, 1),
                "train/grad_norm": gnorm / max(steps, 1)}

    def global_state(self, dist):
        """The window's sums over all ranks, for a checkpoint."""
        state = {name: getattr(self, name).cpu() for name in self.FIELDS}
        state.update((name, value.cpu()) for name, value in self._global(dist).items())
        return state

    def load_state_dict(self, state, main=True):
        """Restore the window's sums; off rank 0 the additive ones start at zero (rank 0 carries the totals)."""
        for name in self.FIELDS:
            value = state[name].to(self.device)
            setattr(self, name, value if main or name not in self.ADDITIVE else torch.zeros_like(value))


def confusion_counts(labels, preds, num_classes):
    """Flat (label, prediction) pair counts, on the tensors' device."""
    index = labels.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes ** 2)


def confusion_image(matrix, cell=16):
    """A confusion matrix as a CHW float image in [0, 1]: row-normalised counts, one cell per pair."""
    rows = matrix.double().sum(1, keepdim=True).clamp(min=1)
    norm = (matrix.double() / rows).float()
    img = norm.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    # blue for errors, green on the diagonal
    diag = torch.eye(matrix.shape[0]).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return torch.stack([img * (1 - diag) * 0.2, img * diag, img * (1 - diag)])
