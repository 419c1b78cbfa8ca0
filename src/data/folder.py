"""Your own images, no code: `--dataset folder:PATH` reads PATH/<class>/<image> (PNG or JPEG; grey, RGB, RGBA;
in subfolders of a class too), class names from the folder names (kept in the checkpoint), like timm's
--data-dir and HF's imagefolder. PATH/train, PATH/val and PATH/test, when PATH holds those, are the splits;
missing ones are held out by a hash of each image's path relative to PATH (--split-by path): test first
(--test-split of everything), then val (--val-split of the rest), the same for every --seed; images added or
removed later move no other image between splits. The run keeps a fingerprint of the files (identity.py): a
resume on changed files is refused.

Every image becomes --image-size square (its shorter side resized to size / --crop-pct with --interpolation,
then the centre cut; 0: the images' own size when they all share one); all-grey data keeps one channel, anything
else is RGB (alpha dropped). 16-bit grey images are scaled to 8 bits from their depth. An image too large to
decode safely (Pillow's decompression-bomb guard) is one line. Inputs are normalized per channel by --mean and
--std, by default those of the train split only (stored with the model); pretrained weights bring their own
(timm's data config: models/timm_models.py).

--image-cache: a set that fits in memory is decoded once (the decoded pixels are kept in DATA_DIR/.cache/, keyed
by the files' names, sizes and times, so a resume or a second run skips the decoding) and then indexed like any
in-memory dataset (on the GPU with --data-on-device); a larger one is read from the files by the loader workers,
a batch at a time, in the same order (exact resume with any number of workers)."""
import hashlib
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from . import ArrayDataset, Splits, carve, identity, location, register
from ..files import atomic
from ..runtime import compat
from ..runtime.errors import UsageError

EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
GREY = ("1", "L", "LA", "I", "I;16", "F")
TEST_SEED = 20240602
STATS_IMAGES = 2000  # the normalization statistics come from up to this many train images, evenly spaced

log = logging.getLogger("train")


def image_files(folder):
    """The PNG and JPEG files under folder (subfolders too; hidden ones skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _classes(folder, shown):
    """{class name: [image paths]} of folder/<class>/...; UsageError naming what was found and what is expected."""
    if not folder.is_dir():
        raise UsageError("--dataset folder:%s: no such folder; give a folder of class folders, PATH/<class>/<image>"
                         % shown)
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    dirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in EXTENSIONS]
    expected = "expected %s/<class>/<image>, one folder per class (say %s/cat/1.png and %s/dog/2.png)" % (
        shown, shown, shown)
    if loose and not dirs:
        raise UsageError("--dataset folder:%s: %d images at the top and no class folders; %s"
                         % (shown, len(loose), expected))
    if loose:
        raise UsageError("--dataset folder:%s: %d image%s at the top beside the class folders (%s%s) belong to no "
                         "class; move them into their class folder, or out of %s" % (
                             shown, len(loose), "s" if len(loose) > 1 else "", loose[0].name,
                             " ..." if len(loose) > 1 else "", shown))
    if len(dirs) < 2:
        raise UsageError("--dataset folder:%s: %s; a classifier needs two or more classes: %s" % (
            shown, "one class folder (%s)" % dirs[0].name if dirs else "no class folders", expected))
    found = {d.name: image_files(d) for d in dirs}
    empty = [name for name, files in found.items() if not files]
    if empty:
        raise UsageError("--dataset folder:%s: class folder %s holds no PNG or JPEG images; add some or remove the "
                         "folder" % (shown, ", ".join(empty)))
    return found


def scan(root):
    """{split: (files, labels)} for the splits PATH gives, and the class names (those of train)."""
    shown = str(root)
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} if root.is_dir() else set()
    layout = {"train": root} if not ("train" in subdirs and subdirs <= set(SPLITS)) else {
        name: root / name for name in SPLITS if name in subdirs}
    classes, out = None, {}
    for split, folder in layout.items():
        found = _classes(folder, "%s/%s" % (shown, split) if folder != root else shown)
        if classes is None:
            classes = sorted(found)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise UsageError("--dataset folder:%s: %s has classes that train lacks (%s); the same class folders "
                             "go in train" % (shown, split, ", ".join(unknown)))
        files = [f for name in classes for f in found.get(name, [])]
        labels = [i for i, name in enumerate(classes) for _ in found.get(name, [])]
        out[split] = (files, labels)
    return out, classes


def _unreadable(path, err):
    return UsageError("cannot read image %s (%s); fix or delete it" % (
        path, str(err).splitlines()[0][:120] if str(err) else type(err).__name__))


def _open(path):
    from PIL import Image  # here: importing src.data must not need Pillow
    try:
        image = Image.open(str(path))
        image.load()
        return image
    except Image.DecompressionBombError as err:
        raise _too_large(path, err)
    except (OSError, ValueError, SyntaxError) as err:
        raise _unreadable(path, err)


def _too_large(path, err):
    """Pillow's guard against decompression bombs (an image whose pixels would fill the memory) as one line."""
    return UsageError("image %s is too large to decode safely (%s); shrink it or remove it from the folder" % (
        path, str(err).split(" could be")[0][:120]))


def _eight_bits(image):
    """A 16- or 32-bit grey image (medical, scientific: Pillow's I;16 and I) as 8-bit grey, its values scaled from
    their depth (65535 -> 255), not clipped at 255 (which turned most such images into one flat white)."""
    from PIL import Image
    if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return image
    pixels = np.asarray(image).astype(np.float64)
    high = float(pixels.max(initial=0))
    depth = 1.0 if image.mode == "F" else 65535.0  # F: floats in [0, 1]; I: 16-bit values (Pillow < 10 opens them so)
    top = depth if image.mode.startswith("I;16") or high <= depth else high
    return Image.fromarray(np.clip(np.rint(pixels / top * 255.0), 0, 255).astype(np.uint8), "L")


def _headers(files):
    """(sizes, whether every image is grey), from the file headers only (no decoding)."""
    from PIL import Image
    sizes, grey = set(), True
    for path in files:
        try:
            with Image.open(str(path)) as image:
                sizes.add(image.size)
                grey = grey and image.mode in GREY
        except Image.DecompressionBombError as err:
            raise _too_large(path, err)
        except (OSError, ValueError, SyntaxError) as err:
            raise _unreadable(path, err)
    return sizes, grey


RESAMPLE = ("bilinear", "bicubic", "nearest", "lanczos")  # --interpolation: Pillow's resampling filters


class Decoder(object):
    """One image file -> uint8 tensor (C, S, S): grey or RGB, shorter side resized to floor(S / crop_pct) (timm's
    rule), the centre S x S cut."""

    def __init__(self, size, channels, interpolation=None, crop_pct=None):
        self.size, self.channels = size, channels
        self.interpolation, self.crop_pct = interpolation or "bilinear", crop_pct or 1.0

    @classmethod
    def of(cls, cfg, size, channels):
        """The decoder of a config's resizing flags (a checkpoint's config too: --predict decodes as training did)."""
        get = cfg.get if isinstance(cfg, dict) else lambda key: getattr(cfg, key, None)
        return cls(size, channels, get("interpolation"), get("crop_pct"))

    def key(self):
        """What the decoded pixels depend on besides the files (the cache's key; the default ones as before)."""
        extra = [] if (self.interpolation, self.crop_pct) == ("bilinear", 1.0) else [self.interpolation,
                                                                                     self.crop_pct]
        return [self.size, self.channels] + extra

    def __call__(self, path):
        from PIL import Image
        image = _eight_bits(_open(path))
        if image.mode in ("RGBA", "LA", "P") and self.channels == 3:
            image = image.convert("RGBA")
            flat = Image.new("RGBA", image.size, (255, 255, 255, 255))  # alpha over white, as a viewer shows it
            image = Image.alpha_composite(flat, image)
        image = image.convert("L" if self.channels == 1 else "RGB")
        w, h = image.size
        s = self.size
        r = s if self.crop_pct >= 1 else int(math.floor(s / self.crop_pct))
        if (w, h) != (s, s) or r != s:
            scale = r / float(min(w, h))
            nw, nh = max(r, int(round(w * scale))), max(r, int(round(h * scale)))
            resample = getattr(Image, "Resampling", Image)  # Pillow >= 9.1 names them there
            image = image.resize((nw, nh), getattr(resample, self.interpolation.upper()))
            left, top = (nw - s) // 2, (nh - s) // 2
            image = image.crop((left, top, left + s, top + s))
        pixels = np.asarray(image, dtype=np.uint8).reshape(s, s, self.channels)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


class ImageFiles(object):
    """Images read from their files a batch at a time (in the loader's workers): the streaming path. Indexing with
    a list of indices returns a whole batch, normalized as an ArrayDataset of the same pixels would be."""

    batched = True

    def __init__(self, files, labels, decode, *, scale, mean, std):
        self.files, self.y, self.decode = list(files), _labels(labels), decode
        self.scale, self.mean, self.std = scale, mean, std

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        index = torch.as_tensor(index, dtype=torch.long)
        x = torch.stack([self.decode(self.files[i]) for i in index.view(-1).tolist()])
        x = (x.float() * self.scale - self.mean) / self.std
        return (x, self.y[index]) if index.dim() else (x[0], self.y[index])

    def subset(self, indices):
        return ImageFiles([self.files[i] for i in indices.tolist()], self.y[indices], self.decode, scale=self.scale,
                          mean=self.mean, std=self.std)

    def input_transform(self):
        return {"scale": float(self.scale), "mean": self.mean.clone(), "std": self.std.clone()}


def _cache_key(root, files, decode, source):
    """The decoded images' cache file name: the files in their order, how they are decoded, and the data's
    fingerprint (every file's name, size and contents, or time where not hashed: a file rewritten with the same
    size and time is decoded again)."""
    digest = hashlib.sha256(json.dumps([str(root)] + decode.key() + [source["digest"]]).encode())
    for path in files:
        digest.update(("%s\n" % path).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


def _decode_all(files, decode, cache_file):
    """uint8 (N, C, S, S) of every file, from the cache file when it holds them, else decoded and saved there."""
    if cache_file.is_file():
        try:
            x = compat.load_file(cache_file)["x"]
            if len(x) == len(files):
                return x
        except Exception:  # a damaged cache is decoded again
            pass
    log.info("decoding %d images once into %s", len(files), cache_file)
    x = torch.stack([decode(path) for path in files]) if files else torch.zeros(0, dtype=torch.uint8)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"x": x}, buf)
        atomic.write_bytes(cache_file, buf.getvalue())
    except OSError as err:  # a read-only data folder: decoded again next time
        log.info("could not keep the decoded images (%s); they are decoded again next time", err)
    return x


@register("folder", task="classification", model="cnn", path=True)
def build(cfg):
    root = Path(location(cfg.dataset)).expanduser()
    found, classes = scan(root)
    return image_splits(cfg, found, classes, root)


def image_splits(cfg, found, classes, root, outputs=None):
    """The splits of images found {split: (files, labels)}: train always, val and test where the data gives them
    (else carved as the module says); labels are class indices, or rows of 0/1 (several labels a sample). root:
    what the error messages and the cache key name (a folder, or a CSV file of image paths); outputs: the model's
    outputs where there are no classes (a regression)."""
    files_all = [f for split in found.values() for f in split[0]]
    sizes, grey = _headers(files_all)
    only = next(iter(sizes)) if len(sizes) == 1 else None
    size = cfg.image_size or (only[0] if only and only[0] == only[1] else None)
    if size is None:
        shown = ", ".join("%dx%d" % s for s in sorted(sizes)[:3]) + (" ..." if len(sizes) > 3 else "")
        raise UsageError("--dataset %s: the images are not all one square size (%s); give --image-size N "
                         "(each image's shorter side is resized to N, then the centre cut)" % (cfg.dataset, shown))
    channels = 1 if grey else 3
    decode = Decoder.of(cfg, size, channels)
    files, labels = found["train"]
    labels = _labels(labels)
    base = root if root.is_dir() else root.parent
    keys = [identity.relative(f, base) for f in files]
    pools = {}
    if "test" in found:
        pools["test"] = found["test"]
        keep = torch.arange(len(files))
    else:
        keep, held = carve_split(cfg, keys, cfg.test_split, "test", labels=_classes_of(labels), classes=classes)
        pools["test"] = ([files[i] for i in held.tolist()], labels[held])
    if "val" in found:
        pools["val"] = found["val"]
        train_idx = keep
    else:
        rest, held = carve_split(cfg, [keys[i] for i in keep.tolist()], cfg.val_split, "val",
                                 labels=_classes_of(labels[keep]), classes=classes)
        train_idx = keep[rest]
        pools["val"] = ([files[i] for i in keep[held].tolist()], labels[keep[held]])
    pools["train"] = ([files[i] for i in train_idx.tolist()], labels[train_idx])
    source = identity.files(files_all, base)
    need = sum(len(p[0]) for p in pools.values()) * channels * size * size
    in_memory = cfg.image_cache == "on" or (cfg.image_cache == "auto" and need <= compat.memory_bytes() // 4)
    if in_memory:
        order = [f for name in SPLITS for f in pools[name][0]]
        key = _cache_key(root.resolve(), order, decode, source)
        x = _decode_all(order, decode, Path(cfg.data_dir) / ".cache" / ("folder-%s.pt" % key))
        bounds, start = {}, 0
        for name in SPLITS:
            bounds[name] = (start, start + len(pools[name][0]))
            start = bounds[name][1]
        mean, std = _given(cfg, channels) or _stats(x[bounds["train"][0]:bounds["train"][1]][_every(len(
            pools["train"][0]))])
        parts = {name: ArrayDataset(x[a:b], _labels(pools[name][1]), scale=1 / 255.0, mean=mean, std=std)
                 for name, (a, b) in bounds.items()}
    else:
        files = pools["train"][0]
        mean, std = _given(cfg, channels) or _stats(torch.stack([decode(files[i]) for i in
                                                                _every(len(files)).tolist()]))
        parts = {name: ImageFiles(pools[name][0], pools[name][1], decode, scale=1 / 255.0, mean=mean, std=std)
                 for name in SPLITS}
    return Splits(train=parts["train"], val=parts["val"], test=parts["test"], input_shape=(channels, size, size),
                  num_classes=len(classes) if classes else outputs, classes=classes, source=source)


def _classes_of(labels):
    """Each sample's class index as a list (None for rows of 0/1 labels: multilabel)."""
    return labels.tolist() if labels.dim() == 1 else None


def carve_split(cfg, keys, fraction, which, *, labels=None, classes=None):
    """The held-out rule of --split-by for folder and table data, (kept, held) index tensors of the samples with
    these keys (an image's path relative to the dataset's folder, a row's text): by the hash of each key within
    each class (class), by that hash alone (path), or by the seeded permutation of older runs (position).
    labels: each sample's class (None where there are no classes: regression, multilabel); classes: names."""
    flag = "--%s-split" % which
    if cfg.split_by == "position":
        return carve(len(keys), fraction, TEST_SEED, flag) if which == "test" else carve(len(keys), fraction)
    if cfg.split_by == "path" or labels is None or cfg.task != "classification":
        return identity.carve(keys, fraction, which, flag)
    kept, held, small = identity.carve_by_class(keys, labels, fraction, which, flag=flag, names=classes)
    if small:
        log.info("%s: too few samples of class%s %s to hold any out for %s at --%s-split %g: the %s scores leave "
                 "%s out; add samples, or give %s files of your own" % (
                     cfg.dataset, "es" if len(small) > 1 else "", ", ".join(small[:5]) + (" ..." if len(small) > 5
                                                                                        else ""),
                     which, which, fraction, which, "them" if len(small) > 1 else "it", which))
    return kept, held


def _labels(labels):
    """Class indices as int64, rows of 0/1 labels as float32."""
    labels = torch.as_tensor(labels)
    return labels.float() if labels.dim() > 1 else labels.long()


def _every(n):
    """Indices of the train images the statistics come from: all, or STATS_IMAGES evenly spaced."""
    return torch.arange(n) if n <= STATS_IMAGES else torch.linspace(0, n - 1, STATS_IMAGES).long()


def _given(cfg, channels):
    """(mean, std) (C, 1, 1) of --mean and --std where given (three values on grey images: their mean), else None."""
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if mean is None and std is None:
        return None
    out = []
    for values, default in ((mean, 0.0), (std, 1.0)):
        values = torch.tensor([float(v) for v in values] if values is not None else [default])
        if len(values) != channels:
            values = values.mean().repeat(channels)
        out.append(values.view(channels, 1, 1))
    if (out[1] <= 0).any():
        raise UsageError("--std must be positive, got %s; give the standard deviation of each channel" % (
            ",".join("%g" % v for v in out[1].view(-1).tolist())))
    return tuple(out)


def _stats(x):
    """Per-channel mean and standard deviation (C, 1, 1) of uint8 images scaled to [0, 1]."""
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1).double() / 255.0
    mean, std = flat.mean(1), flat.std(1).clamp_min(1e-3) if flat.shape[1] > 1 else torch.ones(c, dtype=torch.double)
    return mean.float().view(c, 1, 1), std.float().view(c, 1, 1)
