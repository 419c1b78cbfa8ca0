"""Batches of a dataset, in an order that is a pure function of (seed, epoch) so that a resumed run sees the same
batches: the sampler (`EpochBatches`, which also shards every global batch across processes), the loader that
reads them (directly for in-memory datasets, else a DataLoader with per-device settings), and the step counts
that follow from them."""
import math
import os

import torch

from ..runtime import compat, seeding
from ..runtime.errors import UsageError
from ..runtime.signals import blocked, ignore_stop_signals


class EpochBatches(torch.utils.data.Sampler):
    """This process's index batches of one epoch, from global sample `start` on.

    The global order is shuffled by (seed, epoch), or in order when seed is None, and cut into global batches
    of batch_size; each process takes its slice of every global batch (dist.shard). A last global batch with
    fewer samples than processes is dropped (a process would get none). `sizes` are the global batch sizes.
    """

    def __init__(self, n, batch_size, seed=None, *, epoch=0, start=0, dist=None, drop_tiny=True):
        self.n, self.batch_size, self.seed, self.dist, self.drop_tiny = n, batch_size, seed, dist, drop_tiny
        self.device = None  # where `tensors` live: the data's device for a dataset held there (one copy an epoch)
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch, start=0):
        """Switch to another epoch (or position): a DataLoader built on this sampler keeps its workers."""
        n, seed, dist = self.n, self.seed, self.dist
        order = torch.arange(n) if seed is None else torch.randperm(n, generator=seeding.epoch_generator(seed, epoch))
        world = dist.world if dist is not None else 1
        if self.device is not None:
            order = order.to(self.device)
        batches = list(order[start:].split(self.batch_size))
        if self.drop_tiny and batches and len(batches[-1]) < world:
            batches.pop()
        self.sizes = [len(b) for b in batches]
        self.tensors = [dist.shard(b) if dist is not None else b for b in batches]  # for direct indexing
        self.batches = None  # int lists for a DataLoader (datasets expect int indices), made when one asks
        self.epoch_samples = epoch_samples(n, self.batch_size, world)

    def place(self, device):
        """Keep the index batches on device (that of a dataset held there), from now on."""
        self.device = device
        self.tensors = [t.to(device) for t in self.tensors]

    def __iter__(self):
        if self.batches is None:
            self.batches = [b.tolist() for b in self.tensors]
        return iter(self.batches)

    def __len__(self):
        return len(self.tensors)


def epoch_samples(n, batch_size, world=1):
    """Samples one epoch trains on: all n, less a last batch too small to give every process one."""
    tail = n % batch_size
    return n - tail if 0 < tail < world else n


def steps_per_epoch(n, batch_size, world=1):
    return int(math.ceil(epoch_samples(n, batch_size, world) / float(batch_size)))


def make_loader(dataset, batches, cfg, device):
    """Batches over precomputed index batches; never draws from the global RNG. A dataset held on the training
    device (--data-on-device) is indexed there, with index batches on the device too (no host work or copy per
    step). An in-memory dataset that indexes a whole batch at once, with no workers and no pinning, is read
    directly (a DataLoader would only add its per-batch overhead); anything else goes through a DataLoader."""
    held = getattr(dataset, "device", None)
    if held is not None and held.type != "cpu":
        batches.place(held)
        return DirectBatches(dataset, batches)
    settings = loader_settings(cfg, dataset, device)
    batched = getattr(dataset, "batched", False)
    if batched and settings["num_workers"] == 0 and not settings["pin_memory"]:
        return DirectBatches(dataset, batches)
    common = dict(compat.loader_options(settings), generator=torch.Generator())
    if settings["num_workers"] > 0:  # workers ignore stop signals sent to the whole group: the main process saves
        common["worker_init_fn"] = ignore_stop_signals
    if batched:
        return Loader(dataset, sampler=batches, batch_size=None, **common)
    return Loader(dataset, batch_sampler=batches, **common)


class Loader(torch.utils.data.DataLoader):
    """A DataLoader whose workers start with stop signals blocked: none can die of a stop sent to the whole process
    group before its init function ignores them (signals.blocked), and whose workers' deaths are noted for the
    loop to raise between two steps (`check_workers`), not raised wherever the main thread is."""

    def __iter__(self):
        if self.num_workers == 0:
            return super(Loader, self).__iter__()
        compat.defer_worker_deaths(_DEATHS.append)
        with blocked():
            return _Watched(super(Loader, self).__iter__())


class _Watched(object):
    """A loader's iterator whose fetch, when a worker was killed while handing over a batch, fails with that
    worker's death rather than with the broken connection it left (ConnectionResetError, EOFError), which comes
    before the worker shows as dead."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return self

    def __len__(self):
        return len(self.batches)

    def __next__(self):
        try:
            return next(self.batches)
        except (OSError, EOFError) as err:
            death = death_behind(getattr(self.batches, "_workers", ()))
            if death is None:
                raise
            raise death from err


def death_behind(workers, grace=5.0):
    """The report of a worker among workers that exits within grace seconds (it was dying), else None."""
    import multiprocessing.connection
    alive = [w for w in workers if w.exitcode is None]
    ended = multiprocessing.connection.wait([w.sentinel for w in alive], timeout=grace) if alive else []
    for w in alive:
        if w.sentinel in ended:
            w.join()  # its files close before it can be waited for: a moment more
    dead = [str(w.pid) for w in workers if w.exitcode is not None]
    return RuntimeError("DataLoader worker (pid(s) %s) exited unexpectedly" % ", ".join(dead)) if dead else None


_DEATHS = []  # DataLoader workers' deaths seen by the SIGCHLD handler, oldest first


def check_workers():
    """Raise the report of a loader worker that died (killed, out of memory) since the loop last looked."""
    if _DEATHS:
        err = _DEATHS[0]
        del _DEATHS[:]  # the same death is reported again by every later SIGCHLD
        raise err


def worker_died(err):
    """Whether an error is a DataLoader's report that one of its workers died (killed, out of memory)."""
    return isinstance(err, RuntimeError) and "DataLoader worker" in str(err)


class DirectBatches(object):
    """Iterating gives dataset[batch] for the sampler's current batches (like a DataLoader, minus its cost)."""

    def __init__(self, dataset, batches):
        self.dataset, self.batches = dataset, batches

    def __iter__(self):
        return (self.dataset[b] for b in self.batches.tensors)


def loader_settings(cfg, dataset, device):
    """DataLoader settings per device; each flag overrides its automatic choice.

    workers: 0 for in-memory datasets indexed a batch at a time (a worker would only add a copy between
    processes); otherwise up to 8 on CUDA and 2 on CPU (where they share the cores with the math), divided
    among the processes of this node. Pinned memory on CUDA. Workers persist across epochs.
    """
    workers = cfg.num_workers
    if workers < 0:
        if getattr(dataset, "batched", False):
            workers = 0
        else:
            per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
            cpus = max(1, (os.cpu_count() or 1) // per_node)
            workers = min(8 if device.type == "cuda" else 2, cpus - 1 if cpus > 1 else 0)
    pin = device.type == "cuda" if cfg.pin_memory == "auto" else cfg.pin_memory == "on"
    return {"num_workers": workers, "pin_memory": pin, "persistent_workers": workers > 0 and cfg.persistent_workers,
            "prefetch_factor": cfg.prefetch_factor if workers > 0 and cfg.prefetch_factor else None}


def place_splits(splits, cfg, device):
    """(splits, where): the splits moved to the training device once, when --data-on-device says so. auto: on a
    GPU, when every split is an in-memory dataset that can move (`to`) and together they take under a quarter of
    the GPU's free memory; then batches are indexed, converted and normalized there, with no per-step copy."""
    parts = [getattr(splits, name) for name in ("train", "val", "test")]
    movable = all(hasattr(p, "to") and hasattr(p, "nbytes") for p in parts)
    mode = cfg.data_on_device
    if mode == "off" or device.type == "cpu":
        return splits, "host memory" if movable else "read by the loader"
    size = sum(p.nbytes for p in parts) if movable else 0
    if not movable:
        if mode == "on":
            raise UsageError("--data-on-device on: dataset %s is not an in-memory dataset that can move to the GPU "
                             "(an ArrayDataset); use --data-on-device auto or off" % cfg.dataset)
        return splits, "read by the loader"
    free = compat.cuda_free_bytes(device)
    if mode == "auto" and size > free // 4:
        return splits, ("host memory (%.0f MB is over a quarter of the GPU's %.0f MB free; --data-on-device on "
                        "forces it)" % (size / 1e6, free / 1e6))
    if size > free:
        raise UsageError("--data-on-device on: dataset %s takes %.0f MB, the GPU has %.0f MB free; use "
                         "--data-on-device off" % (cfg.dataset, size / 1e6, free / 1e6))
    moved = splits._replace(**{name: getattr(splits, name).to(device) for name in ("train", "val", "test")})
    return moved, "%s (%.0f MB, moved once)" % (device, size / 1e6)
