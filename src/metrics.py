"""Running sums kept on the device (no host sync per step) and the evaluation metrics."""
import math

import torch

EVAL_METRICS = ("val/loss", "val/acc")


class TrainMeter(object):
    """Sums of the current logging window, on the training device; saved in checkpoints so that a resumed
    run logs the same averages as an uninterrupted one.

    Per step it costs three in-place additions on the device (no host sync); a non-finite loss poisons
    loss_sum, which the logging step checks. The gradient norm is that of the logging step (computing it
    every step would cost more than the rest of this class; with --grad-clip it is measured anyway).
    """

    TENSORS = ("loss_sum", "correct", "grad_norm", "bad_grad")

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        for name in self.TENSORS:
            setattr(self, name, torch.zeros((), dtype=torch.float64, device=self.device))
        self.samples, self.steps = 0, 0

    def add(self, loss, correct, samples):
        self.loss_sum += loss.detach().double() * samples
        self.correct += correct
        self.samples += samples
        self.steps += 1

    def set_grad_norm(self, norm, must_be_finite=True):
        """The gradient norm of this (logging) step; a non-finite one is an error unless loss scaling skips it."""
        norm = norm.detach().double()
        finite = torch.isfinite(norm)
        self.grad_norm = torch.where(finite, norm, torch.zeros_like(norm))
        if must_be_finite:
            self.bad_grad = (~finite).double()

    # Under several processes each rank sums its own shards: loss_sum, correct and samples add up across
    # ranks; the gradient norm (after the all-reduce) and the step count are the same on every rank.
    def _global(self, dist):
        local = torch.stack([self.loss_sum, self.correct.double(), self.bad_grad,
                             torch.tensor(float(self.samples), dtype=torch.float64, device=self.device)])
        return dist.sum_(local)

    def is_finite(self, dist):
        loss_sum, _, bad_grad, _ = self._global(dist).tolist()
        return math.isfinite(loss_sum) and bad_grad == 0

    def averages(self, dist):
        """One host sync (and one all-reduce): the window's mean loss and accuracy, the gradient norm."""
        loss_sum, correct, _, samples = self._global(dist).tolist()
        return {"train/loss": loss_sum / max(samples, 1), "train/acc": correct / max(samples, 1),
                "train/grad_norm": float(self.grad_norm)}

    def global_state(self, dist):
        """The window over all ranks, for a checkpoint."""
        loss_sum, correct, bad_grad, samples = self._global(dist).cpu().unbind(0)
        return {"loss_sum": loss_sum, "correct": correct, "bad_grad": bad_grad, "grad_norm": self.grad_norm.cpu(),
                "samples": int(samples), "steps": self.steps}

    def load_state_dict(self, state, main=True):
        """Restore the window; off rank 0 the sums start at zero (rank 0 carries the totals)."""
        self.reset()
        self.grad_norm = state["grad_norm"].to(self.device, torch.float64)
        self.steps = int(state["steps"])
        if main:
            self.loss_sum = state["loss_sum"].to(self.device, torch.float64)
            self.correct = state["correct"].to(self.device, torch.float64)
            self.bad_grad = state["bad_grad"].to(self.device, torch.float64)
            self.samples = int(state["samples"])


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
