"""Mixed precision as one object: autocast for the forward pass, fp16 loss scaling (GradScaler) for the backward
pass, unscaling before the gradient is clipped or measured, and the scaler's state for checkpoints. With
--amp off every call is plain (no GradScaler calls at all: they cost time per step)."""
import torch

from ..runtime import compat


class Precision(object):
    def __init__(self, device, dtype, cache=True):
        self.device_type, self.dtype, self.cache = device.type, dtype, cache
        self.scaler = compat.grad_scaler(dtype == torch.float16)
        self.scaling = self.scaler.is_enabled()  # fp16: steps with inf gradients are skipped by the scaler

    def autocast(self):
        return compat.autocast(self.device_type, self.dtype, self.cache)

    def backward(self, loss):
        """Add the gradients of loss (scaled under fp16; once per micro-batch with gradient accumulation)."""
        if self.scaling:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def unscale(self, optimizer):
        """Once per optimizer step, after the last backward: clipping and the gradient norm see their true size."""
        if self.scaling:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer):
        if self.scaling:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self):
        return self.scaler.state_dict()

    def load_state_dict(self, state):
        if state and self.scaling:
            self.scaler.load_state_dict(state)
