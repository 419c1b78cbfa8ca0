"""Seeds, determinism, and the RNG states a checkpoint carries (Python, NumPy, torch CPU and CUDA)."""
import logging
import os
import random

import numpy as np
import torch

from . import compat

log = logging.getLogger("train")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def set_deterministic(deterministic):
    """Deterministic kernels (bit-exact runs and resumes) or the fast ones (cuDNN autotuning, TF32)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    compat.set_deterministic(deterministic)
    compat.set_tf32(not deterministic)  # TF32 on Ampere+ is fast but not bit-exact


def capture():
    """All global RNG states as plain types and tensors (loadable with weights-only unpickling)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if compat.cuda_available() else [],
    }
    return state


def restore(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and compat.cuda_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def epoch_generator(seed, epoch):
    """The generator for one epoch's data order: a pure function of (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 100003 + epoch)


def rank_seed(seed, rank):
    """The seed of process `rank` > 0 (rank 0 keeps `seed`, so one process matches a plain run)."""
    return seed + 1000003 * rank


class RandomStreams(object):
    """Every rank's random streams as a part of the checkpoint: "rng" (this rank's; rank 0's in the file) and, under
    several processes, "rng_ranks" (every_rank: every rank's, gathered, a collective; registered just before "rng",
    which reuses the streams it took). Restored last, since nothing may draw random numbers between the restore and
    the next step. A fresh run seeds ranks > 0 apart (own dropout masks)."""

    def __init__(self, dist, seed, progress):
        self.dist, self.seed, self.progress, self.ranks, self.taken = dist, seed, progress, None, None
        streams = self

        class Ranks(object):
            def state_dict(self):
                streams.taken = capture()
                return streams.dist.gather(streams.taken)

            def load_state_dict(self, state):
                streams.ranks = state

        self.every_rank = Ranks()

    def state_dict(self):
        state, self.taken = self.taken or capture(), None
        return state

    def load_state_dict(self, state):
        ranks = self.ranks or [state]
        if len(ranks) == self.dist.world:
            restore(ranks[self.dist.rank])
        elif self.dist.rank == 0:
            log.info("resuming %d processes from a run of %d: same data order; random "
                     "streams of ranks > 0 restart", self.dist.world, len(ranks))
            restore(state)
        else:
            seed_everything(rank_seed(self.seed, self.dist.rank) + self.progress.step)

    def start(self):
        """A fresh run: rank 0 keeps the streams of --seed; each other rank its own."""
        if self.dist.rank > 0:
            seed_everything(rank_seed(self.seed, self.dist.rank))
