"""--ema DECAY: an exponential moving average of the model's weights, updated after every optimizer step, with
the decay warmed up as min(DECAY, (1 + n) / (10 + n)) after n updates (so early averages are not dominated by
the random initial weights). Parameters and floating-point buffers (BatchNorm statistics) are averaged, integer
buffers copied (timm's ModelEmaV2 does the same). The loop evaluates this average: it is what val/*, --monitor,
models/best and the test split see, while val_raw/* logs the raw weights beside it.

Under several processes every rank keeps its own average (the weights are the same on all ranks, BatchNorm
statistics are each rank's own); a checkpoint holds every rank's buffers, so a resume is exact."""
import copy

import torch

from ..runtime import compat


class EMA(object):
    def __init__(self, model, decay, dist=None):  # dist: the processes (None: one)
        self.decay, self.updates, self.dist = decay, 0, dist
        self.module = copy.deepcopy(compat.unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._model = compat.unwrap_model(model)
        self._pairs = None

    def _tensors(self):
        """(averaged ema tensors, their sources, copied ema tensors, their sources), in state-dict order."""
        if self._pairs is None:
            mine, theirs = self.module.state_dict(keep_vars=True), self._model.state_dict(keep_vars=True)
            avg = [k for k in mine if mine[k].is_floating_point()]
            cp = [k for k in mine if not mine[k].is_floating_point()]
            self._pairs = ([mine[k].data for k in avg], [theirs[k].data for k in avg],
                           [mine[k].data for k in cp], [theirs[k].data for k in cp])
        return self._pairs

    def decay_at(self, updates):
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self):
        """One update from the model's current weights (after an optimizer step; no host sync)."""
        self.updates += 1
        avg, src, cp, cp_src = self._tensors()
        compat.lerp_(avg, src, 1.0 - self.decay_at(self.updates))
        for t, s in zip(cp, cp_src):
            t.copy_(s)

    def state_dict(self):
        """The average (rank 0's weights, and every rank's buffers under several processes) and the update count."""
        dist = self.dist
        weights = self.module.state_dict()
        state = {"weights": compat.clean_state_dict(weights), "updates": self.updates}
        if dist is not None and dist.enabled:
            params = {name for name, _ in self.module.named_parameters()}
            state["buffers_ranks"] = dist.gather({k: v.cpu() for k, v in weights.items() if k not in params})
        return state

    def load_state_dict(self, state):
        """The saved average; None (a checkpoint of a run without --ema): the average starts at the model's weights
        as restored."""
        dist = self.dist
        if state is None:
            import logging
            logging.getLogger("train").info("--ema %g starts now: the average begins at the weights as restored",
                                            self.decay)
            self.module.load_state_dict(self._model.state_dict())
            self.updates, self._pairs = 0, None
            return
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
        ranks = state.get("buffers_ranks")
        if ranks and dist is not None and len(ranks) == dist.world and dist.rank > 0:
            mine = self.module.state_dict()
            for key, value in ranks[dist.rank].items():
                mine[key].copy_(value)
        self._pairs = None
