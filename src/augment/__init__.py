"""Data augmentation, registered by name, applied to whole training batches on the training device (the GPU
when training on one), never to val or test. `--augment crop:4,flip` builds the pipeline: each item is
NAME[:ARG[:ARG]], called in order. Every module in this folder is imported, so adding one is one function:

    from . import register

    @register("brightness")                       # images=True: refuse datasets whose samples are not C,H,W
    def brightness(x, y, rng, amount=0.2):
        '''x: the batch (N, C, H, W), y: its target; rng: this batch's SampleRandom'''
        return x + (rng.uniform() * 2 - 1).view(-1, 1, 1, 1).to(x.dtype) * amount, y

Randomness comes only from `rng`, whose numbers are a pure function of (seed, epoch, sample index, draw): a
sample gets the same augmentation after a resume, in any batch, with any number of processes, micro-batches or
loader workers, on CPU and GPU alike. (torch's generators would tie it to the batch a sample lands in.)
"""
import torch

from ..runtime.errors import UsageError
from ..runtime.registry import Registry

_REGISTRY = Registry(__name__, __path__)
register, names = _REGISTRY.register, _REGISTRY.names
MASK = 0xFFFFFFFF


def _mul32(x, c):
    """(x * c) mod 2**32 for 0 <= x, c < 2**32, exact in int64 (Python ints or tensors): no product reaches 2**63."""
    return ((((x >> 16) * c) & 0xFFFF) << 16) + (x & 0xFFFF) * c & MASK


def hash32(x):
    """A 32-bit integer hash (C. Wellons' lowbias32) of Python ints or int64 tensors: the same bits on every device."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class SampleRandom(object):
    """Random numbers for a batch, one per sample and draw: hash(seed, epoch, sample index, draw number)."""

    def __init__(self, seed, epoch, indices):
        key = hash32(hash32(seed & MASK) ^ (epoch & MASK))
        self.base = hash32((indices.long() & MASK) ^ key)
        self.draws = 0

    def bits(self):
        """The next 32 random bits of every sample, as an int64 tensor (N,) on the indices' device."""
        self.draws += 1
        return hash32(self.base ^ hash32(self.draws * 0x9E3779B9 & MASK))

    def uniform(self):
        """(N,) float64 in [0, 1)."""
        return self.bits().double() * (1.0 / 2 ** 32)

    def below(self, n):
        """(N,) int64 in [0, n), exactly uniform up to 2**-32 (no float rounding)."""
        return (self.bits() * int(n)) >> 32


class Recipe(tuple):
    """A parsed --augment: ((name, args), ...) in order; str() gives back the text it was read from (saved with the
    run). Empty for none."""

    def __new__(cls, items, text):
        recipe = tuple.__new__(cls, items)
        recipe.text = text
        return recipe

    def __str__(self):
        return self.text

    def __reduce__(self):  # copies and pickles carry the text
        return (Recipe, (tuple(self), self.text))


def parse(spec):
    """The Recipe of a spec such as 'crop:4,flip' (a Recipe is returned as it is); UsageError naming what is
    wrong."""
    if isinstance(spec, Recipe):
        return spec
    if spec in ("none", ""):
        return Recipe((), spec)
    items = []
    for item in spec.split(","):
        name, *raw = item.strip().split(":")
        if name not in _REGISTRY.builders:
            raise UsageError("--augment %s: unknown augmentation %r (known: %s; or none, auto)"
                             % (spec, name, ", ".join(names())))
        try:
            args = tuple(float(a) if "." in a or "e" in a else int(a) for a in raw)
        except ValueError:
            raise UsageError("--augment %s: %s takes numbers after ':' (say crop:4)" % (spec, item))
        items.append((name, args))
    return Recipe(items, spec)


class Augment(object):
    """The pipeline of --augment for one run; called on each training batch on the device."""

    def __init__(self, recipe, seed):
        self.items, self.seed = parse(recipe), seed

    def __bool__(self):
        return bool(self.items)

    def __call__(self, x, y, indices, epoch):
        rng = SampleRandom(self.seed, epoch, indices.to(x.device))
        for name, args in self.items:
            x, y = _REGISTRY[name](x, y, rng, *args)
        return x, y


def check(recipe, input_shape):
    """UsageError unless the recipe works on samples of input_shape: each function is called once on a one-sample batch
    of zeros, before anything is written (bad arguments fail at the start, not at the first step)."""
    for name, args in parse(recipe):
        if _REGISTRY.meta[name].get("images", True) and len(input_shape) != 3:
            raise UsageError("--augment %s works on images (C,H,W), but this dataset's samples have shape %s; use "
                             "--augment none" % (name, "x".join(map(str, input_shape))))
        try:
            probe = SampleRandom(0, 0, torch.zeros(1, dtype=torch.long))
            _REGISTRY[name](torch.zeros((1,) + tuple(input_shape)), None, probe, *args)
        except (TypeError, ValueError, RuntimeError, IndexError) as err:
            raise UsageError("--augment %s: bad arguments for this dataset (%s)" % (
                recipe, str(err).splitlines()[0][:120] if str(err) else type(err).__name__))


def spatial(y, x):
    """Whether target y is a per-pixel map of images x (segmentation masks move with the image)."""
    return y is not None and y.dim() >= 3 and tuple(y.shape[-2:]) == tuple(x.shape[-2:])


_REGISTRY.discover()
