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

    def is_finite(self):
        return float(self.nonfinite) == 0

    def averages(self):
        """One host sync: the window's mean loss, accuracy and gradient norm."""
        sums = torch.stack([self.loss_sum, self.correct, self.grad_norm_sum, self.samples, self.steps]).tolist()
        loss, correct, gnorm, samples, steps = sums
        return {"train/loss": loss / max(samples, 1), "train/acc": correct / max(samples, 1),
                "train/grad_norm": gnorm / max(steps, 1)}

    def state_dict(self):
        return {name: getattr(self, name).cpu() for name in self.FIELDS}

    def load_state_dict(self, state):
        for name in self.FIELDS:
            setattr(self, name, state[name].to(self.device))


def confusion_matrix(labels, preds, num_classes):
    index = labels.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes ** 2).view(num_classes, num_classes)


def confusion_image(matrix, cell=16):
    """A confusion matrix as a CHW float image in [0, 1]: row-normalised counts, one cell per pair."""
    rows = matrix.double().sum(1, keepdim=True).clamp(min=1)
    norm = (matrix.double() / rows).float()
    img = norm.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    # blue for errors, green on the diagonal
    diag = torch.eye(matrix.shape[0]).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return torch.stack([img * (1 - diag) * 0.2, img * diag, img * (1 - diag)])
