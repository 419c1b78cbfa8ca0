"""Running sums kept on the device (no host sync per step): the training window's (TrainMeter, a part of every
checkpoint) and an evaluation's (add_sums). What the sums are is the task's (src/tasks/)."""
import math

import torch

def add_sums(total, sums):
    """total += sums, name by name, as float64 tensors on the sums' device (no host sync): the running sums of a
    logging window and of an evaluation."""
    for key, value in sums.items():
        if key in total:
            total[key] += value
        else:
            total[key] = value.double() if value.dtype != torch.float64 else value.clone()
    return total


class TrainMeter(object):
    """Sums of the current logging window, on the training device; saved in checkpoints so that a resumed
    run logs the same averages as an uninterrupted one.

    Per step it costs a few in-place additions on the device (no host sync): the loss, and the task's own sums
    (correct predictions for classification); a non-finite loss poisons loss_sum, which the logging step
    checks. The gradient norm is that of the logging step (computing it every step would cost more than the
    rest of this class; with --grad-clip it is measured anyway).
    """

    def __init__(self, device, dist):
        self.device, self.dist = device, dist
        self.reset()

    def reset(self):
        for name in ("loss_sum", "grad_norm", "bad_grad"):
            setattr(self, name, torch.zeros((), dtype=torch.float64, device=self.device))
        self.counts = {}
        self.samples, self.steps = 0, 0

    def add(self, loss, counts, samples, step=True):
        """A (micro-)batch's mean loss and sums; step: it ends an optimizer step (the last micro-batch)."""
        self.loss_sum += loss.detach().double() * samples
        add_sums(self.counts, counts)
        self.samples += samples
        self.steps += 1 if step else 0

    def set_grad_norm(self, norm, must_be_finite=True):
        """The gradient norm of this (logging) step; a non-finite one is an error unless loss scaling skips it."""
        norm = norm.detach().double()
        finite = torch.isfinite(norm)
        self.grad_norm = torch.where(finite, norm, torch.zeros_like(norm))
        if must_be_finite:
            self.bad_grad = (~finite).double()

    # Under several processes each rank sums its own shards: loss_sum, the counts and samples add up across
    # ranks; the gradient norm (after the all-reduce) and the step count are the same on every rank.
    def _global(self, dist):
        keys = sorted(self.counts)
        local = torch.stack([self.loss_sum, self.bad_grad,
                             torch.tensor(float(self.samples), dtype=torch.float64, device=self.device)]
                            + [self.counts[k].double() for k in keys])
        total = dist.sum_(local)
        return total[0], total[1], total[2], dict(zip(keys, total[3:]))

    def is_finite(self, dist):
        loss_sum, bad_grad = torch.stack(self._global(dist)[:2]).tolist()  # one host sync
        return math.isfinite(loss_sum) and bad_grad == 0

    def averages(self, dist, task):
        """One host sync (and one all-reduce): the window's mean loss, the task's values, the gradient norm."""
        loss_sum, _, samples, counts = self._global(dist)
        samples = float(samples)
        values = {"train/loss": float(loss_sum) / max(samples, 1), "train/grad_norm": float(self.grad_norm)}
        values.update(task.train_values({k: float(v) for k, v in counts.items()}, samples))
        return values

    def state_dict(self):
        """The window over all ranks, for a checkpoint (a collective under several processes)."""
        loss_sum, bad_grad, samples, counts = self._global(self.dist)
        return {"loss_sum": loss_sum.cpu(), "bad_grad": bad_grad.cpu(), "grad_norm": self.grad_norm.cpu(),
                "samples": int(samples), "steps": self.steps, "counts": {k: v.cpu() for k, v in counts.items()}}

    def load_state_dict(self, state):
        """Restore the window; off rank 0 the sums start at zero (rank 0 carries the totals)."""
        main = self.dist.main
        self.reset()
        self.grad_norm = state["grad_norm"].to(self.device, torch.float64)
        self.steps = int(state["steps"])
        counts = state.get("counts")
        if counts is None:  # written before tasks had their own sums: classification's count of correct answers
            counts = {"correct": state["correct"]} if "correct" in state else {}
        for key, value in counts.items():
            value = value.to(self.device, torch.float64)
            self.counts[key] = value if main else torch.zeros_like(value)
        if main:
            self.loss_sum = state["loss_sum"].to(self.device, torch.float64)
            self.bad_grad = state["bad_grad"].to(self.device, torch.float64)
            self.samples = int(state["samples"])
