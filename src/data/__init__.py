"""Datasets, registered by name. Every module in this folder is imported, so adding a dataset is one file:

    from . import register, ArrayDataset, Splits

    @register("mydata", task="classification", model="cnn")      # its default --task, --model (and --augment)
    def build(cfg):
        ...                                        # read files under cfg.data_dir
        return Splits(train=ArrayDataset(x, y), test=ArrayDataset(xt, yt), input_shape=(1, 28, 28),
                      num_classes=10)

`train` is the training data, `test` the held-out test data (the official test set where one exists);
validation is carved from `train` by a fixed seeded split of --val-split (default: the dataset's `val_split`,
else 0.1), unless the dataset gives its own `val`. `num_classes` is the number of model outputs (1 for a
single regression target). Splits are ArrayDatasets (in-memory, batched indexing: fast) or any map-style
dataset of (input, target) pairs. `--prepare-data` runs `build` once, which downloads and verifies.
"""
import copy
from collections import namedtuple

import torch

from ..runtime.errors import TrainingError
from ..runtime import registry
from ..runtime.registry import Registry

_REGISTRY = Registry(__name__, __path__, skip=("download", "identity", "loading", "recipe"))
register, names = _REGISTRY.register, _REGISTRY.names

Splits = namedtuple("Splits", "train val test input_shape num_classes classes encoding source")
# classes: the class names, where the data has them; encoding: how raw records become inputs (csv:PATH tables);
# source: the fingerprint of the files read (identity.py), for data a run must not lose track of
Splits.__new__.__defaults__ = (None, None, None, None, None, None, None)
VAL_SEED = 20240601  # the validation split is the same for every --seed: changing the seed changes training only


kind = registry.kind  # the registered dataset of a --dataset value: folder for folder:PATH
location = registry.argument  # the PATH of a --dataset KIND:PATH ('' for a plain name)


def known(name):
    """Whether a --dataset value names a dataset: a registered name, or KIND:PATH for a kind that takes a path."""
    return _REGISTRY.known(name, "path")


def choices():
    """The --dataset values, for messages: the names, and KIND:PATH of the kinds that take a path."""
    return _REGISTRY.choices("path", "PATH")


def defaults(name, cfg=None):
    """A dataset's registered defaults: task, model, val_split, augment (the --augment of `auto`), depth (of its
    model), recipe ("classic": the training flags the shipped datasets were measured with; "fit": chosen from the
    data once read, recipe.py). A default registered as a function is the data's own answer (csv:PATH infers its
    task from the target): called with cfg, when cfg is given."""
    meta = dict(task="classification", model="cnn", val_split=0.1, augment="none", depth=0, recipe="fit")
    meta.update(_REGISTRY.meta.get(kind(name), {}))
    if cfg is not None:
        meta = {k: v(cfg) if callable(v) else v for k, v in meta.items()}
    return meta


def subset(dataset, indices):
    """The samples at indices (a 1-d long tensor) of a dataset, as the same kind of dataset where it can."""
    if hasattr(dataset, "subset"):
        return dataset.subset(indices)
    return torch.utils.data.Subset(dataset, indices.tolist())


def carve(n, fraction, seed=VAL_SEED, flag="--val-split"):
    """(kept, held): sorted indices of n samples, a share `fraction` held out by a permutation of a fixed seed."""
    n_held = int(round(n * fraction))
    if not 1 <= n_held < n:
        raise TrainingError("%s %g leaves %d of %d samples held out; pick a share that leaves at least one on each side"
                            % (flag, fraction, n_held, n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_held:].sort().values, order[:n_held].sort().values


def carve_val(train, fraction):
    """(train, val): a fixed share of the training data, chosen by a permutation that depends on nothing else."""
    kept, held = carve(len(train), fraction)
    return subset(train, kept), subset(train, held)


def build(cfg):
    """The dataset's train, val and test splits, checked: class labels of in-memory classification datasets must be
    0 .. num_classes-1. The test split is built but never read before the final evaluation."""
    splits = _REGISTRY[kind(cfg.dataset)](cfg)
    if splits.val is None:
        train, val = carve_val(splits.train, cfg.val_split)
        splits = splits._replace(train=train, val=val)
    if splits.test is None:
        raise TrainingError("dataset %s gives no test split; return Splits(..., test=...)" % cfg.dataset)
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        labels = getattr(part, "y", None)
        if cfg.task != "regression" and isinstance(labels, torch.Tensor) and len(labels) \
                and not labels.is_floating_point():
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= splits.num_classes:
                raise TrainingError("dataset %s: %s labels span %d .. %d, outside the classes 0 .. %d; fix or delete "
                                    "its files in %s" % (cfg.dataset, name, low, high, splits.num_classes - 1,
                                                         cfg.data_dir))
    return splits


def input_transform(dataset):
    """What a split does to a raw input before the model sees it, as {scale, mean, std}: (x * scale - mean) / std,
    kept in checkpoints so that models.from_checkpoint gives the model raw inputs exactly as training did. A
    dataset of your own says it with an `input_transform()` method (ArrayDataset has one); None when it does not."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    get = getattr(dataset, "input_transform", None)
    return get() if callable(get) else None


def class_counts(dataset, num_classes):
    """The number of samples of each class in a split whose class indices are at hand (a `y` tensor of class
    indices: ArrayDataset, folder images), else None."""
    if dataset is None:
        return None
    indices = None
    while isinstance(dataset, torch.utils.data.Subset):
        indices, dataset = (torch.as_tensor(dataset.indices) if indices is None else
                            torch.as_tensor(dataset.indices)[indices]), dataset.dataset
    y = getattr(dataset, "y", None)
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point():
        return None
    y = y.cpu() if indices is None else y.cpu()[indices]
    return torch.bincount(y.long(), minlength=num_classes)[:num_classes].tolist()


def sample_batch(dataset, n):
    """The first n samples of a split as one batch (as the loader would give them)."""
    n = min(n, len(dataset))
    if getattr(dataset, "batched", False):
        return dataset[list(range(n))]
    collate = getattr(torch.utils.data, "default_collate", None) or torch.utils.data.dataloader.default_collate
    return collate([dataset[i] for i in range(n)])


class ArrayDataset(object):
    """Samples held in one tensor (uint8 or float); indexing with a list of indices returns a whole batch.

    Inputs come out as float32: (x * scale - mean) / std. Integer targets come out as int64 (class indices),
    float targets as they are (regression).
    """

    batched = True

    def __init__(self, x, y, scale=1.0, mean=0.0, std=1.0):
        if len(x) != len(y):
            raise TrainingError("a dataset's inputs and labels differ in length: %d vs %d" % (len(x), len(y)))
        self.x, self.y = x, (y if y.is_floating_point() else y.long())
        self.scale, self.mean, self.std = scale, mean, std

    def __len__(self):
        return len(self.y)

    @property
    def device(self):
        return self.x.device

    @property
    def nbytes(self):
        return self.x.numel() * self.x.element_size() + self.y.numel() * self.y.element_size()

    def __getitem__(self, index):
        index = torch.as_tensor(index, dtype=torch.long, device=self.x.device)
        x = self.x[index].float()
        return (x * self.scale - self.mean) / self.std, self.y[index]

    def subset(self, indices):
        return self._with(x=self.x[indices], y=self.y[indices])

    def _with(self, **changed):
        """A copy with some attributes changed, of the same class: a subclass of your own (one that overrides
        __getitem__, say) stays itself through the validation carve and the move to a device."""
        new = copy.copy(self)
        new.__dict__.update(changed)
        return new

    def input_transform(self):
        def plain(v):
            return v.detach().cpu().clone() if isinstance(v, torch.Tensor) else float(v)
        return {"scale": plain(self.scale), "mean": plain(self.mean), "std": plain(self.std)}

    def to(self, device):
        """The same samples held on device (stored as they are, uint8 images included: converted per batch)."""
        def move(v):
            return v.to(device) if isinstance(v, torch.Tensor) else v
        return self._with(x=move(self.x), y=move(self.y), mean=move(self.mean), std=move(self.std))


_REGISTRY.discover()
