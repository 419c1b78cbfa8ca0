"""Several processes, one run: torchrun (or `python -m torch.distributed.launch --use_env`) sets RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them this is one process and every call here is
a no-op.

    torchrun --standalone --nproc_per_node 2 train.py ...                  # one node, 2 processes
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 \\
             --master_addr HOST0 --master_port 29500 train.py ...           # on each of two nodes

--batch-size is the global batch: every step consumes the same samples in the same order whatever the
number of processes (each takes its slice of the batch), so a run can resume on another process count.
Rank 0 alone writes checkpoints, TensorBoard events and the program log; the others wait for it.
"""
import os
import pickle
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UsageError


# what gloo and NCCL say when the process at the other end of a collective is gone
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",
             "NCCL communicator was aborted", "DistNetworkError", "remote process exited")


def peer_lost(err):
    """Whether a collective failed because another process of the run is gone (not a bug of this one)."""
    text = "%s: %s" % (type(err).__name__, err)
    return isinstance(err, RuntimeError) and any(words in text for words in PEER_LOST)


def env_rank():
    """This process's rank from the launcher's environment (0 when not launched by one)."""
    return int(os.environ.get("RANK", "0") or 0)


class Dist(object):
    """rank / world / local_rank, and the few collectives the loop needs."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = env_rank()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.enabled = self.world > 1
        self.main = self.rank == 0
        self.control = None  # a gloo group for CPU-side agreement (stop flag, RNG states), whatever the backend

    def start(self, device):
        """Join the process group: NCCL for CUDA devices, gloo otherwise."""
        if not self.enabled:
            return
        if not dist.is_available():
            raise UsageError("WORLD_SIZE=%d but this torch build has no torch.distributed" % self.world)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(minutes=30))
        self.control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD

    def stop(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self):
        if self.enabled:
            dist.barrier(group=self.control)

    def sum_(self, tensor):
        """All-reduce a tensor in place (sum); on the training device."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag):
        """True on every rank when flag is true on any of them (one tiny CPU all-reduce)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def same(self, value, what):
        """Raise on every rank unless all ranks hold the same integer."""
        if not self.enabled:
            return
        t = torch.tensor([value, -value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        if int(t[0]) != value or int(-t[1]) != value:
            raise UsageError("processes disagree on %s (%d on rank %d); do all nodes see the same models/ folder?"
                             % (what, value, self.rank))

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank (plain picklable objects; torch 1.7 has no
        all_gather_object, so this pickles to a padded byte tensor)."""
        if not self.enabled:
            return [obj]
        blob = torch.tensor(list(pickle.dumps(obj)), dtype=torch.uint8)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(blob)], dtype=torch.int64), group=self.control)
        longest = max(int(s) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[:len(blob)] = blob
        parts = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.control)
        return [pickle.loads(bytes(p[:int(s)].tolist())) for p, s in zip(parts, sizes)]

    def wrap(self, model, device):
        """The model for training: DistributedDataParallel when several processes, else as is."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def shard(self, batch):
        """This rank's contiguous slice of a global batch of indices (sizes differ by at most one)."""
        if not self.enabled:
            return batch
        n = len(batch)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return batch[lo:hi]
