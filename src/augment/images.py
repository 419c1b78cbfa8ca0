"""The standard image augmentations, on whole batches (N, C, H, W): random crops of a padded image (a random
translation), horizontal flips, cutout. A per-pixel target (a segmentation mask) is moved with its image."""
import torch
import torch.nn.functional as F

from . import register, spatial
from ..runtime.errors import UsageError


def _per_sample(mask, like):
    return mask.view((-1,) + (1,) * (like.dim() - 1))


@register("flip")
def flip(x, y, rng, p=0.5):
    """Mirror a sample left-right with probability p (0.5): for natural images whose classes are symmetric."""
    if not 0 <= p <= 1:
        raise UsageError("--augment flip:%g: the probability must be in [0, 1]" % p)
    do = rng.uniform() < p
    x = torch.where(_per_sample(do, x), x.flip(-1), x)
    if spatial(y, x):
        y = torch.where(_per_sample(do, y), y.flip(-1), y)
    return x, y


def _shift(x, dy, dx, pad, value=0):
    """x (N, C, H, W) padded by pad on each side with value, then cut at offsets (dy, dx) of each sample."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    padded = F.pad(x, (pad, pad, pad, pad), value=value)
    rows = (dy.view(-1, 1) + torch.arange(h, device=x.device)).view(n, h, 1)
    cols = (dx.view(-1, 1) + torch.arange(w, device=x.device)).view(n, 1, w)
    at = torch.arange(n, device=x.device).view(n, 1, 1)
    if x.dim() == 3:  # masks (N, H, W)
        return padded[at, rows, cols]
    return padded[at, :, rows, cols].permute(0, 3, 1, 2).contiguous()


@register("crop")
def crop(x, y, rng, pad=4):
    """Pad by `pad` pixels (zeros: the mean, inputs being normalized) and cut a random crop of the original size:
    a shift of up to `pad` pixels each way (CIFAR: 4, MNIST-sized: 2). A mask is shifted alike (padding: class 0)."""
    pad = int(pad)
    if pad < 1 or pad > max(x.shape[-2:]):
        raise UsageError("--augment crop:%d: the padding must be 1 .. the image size" % pad)
    dy, dx = rng.below(2 * pad + 1), rng.below(2 * pad + 1)
    x = _shift(x, dy, dx, pad)
    if spatial(y, x):
        y = _shift(y, dy, dx, pad)
    return x, y


@register("cutout")
def cutout(x, y, rng, size=8):
    """Zero (set to the mean) a size x size square at a random centre of each image (DeVries & Taylor 2017; CIFAR:
    16 with crop and flip). The target is unchanged."""
    size = int(size)
    if size < 1:
        raise UsageError("--augment cutout:%d: the size must be >= 1" % size)
    h, w = x.shape[-2], x.shape[-1]
    cy, cx = rng.below(h).view(-1, 1, 1), rng.below(w).view(-1, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    half = size // 2
    hole = (rows >= cy - half) & (rows < cy - half + size) & (cols >= cx - half) & (cols < cx - half + size)
    return x * (~hole).unsqueeze(1).to(x.dtype), y
