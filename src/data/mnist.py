"""MNIST and Fashion-MNIST, downloaded into data/<name>/ and parsed from their native IDX files. The official
60,000 training images give train and val; the official 10,000 test images are the test split."""
import gzip
import struct
import zlib

import numpy as np
import torch

from . import ArrayDataset, Splits, register
from .download import fetch_all
from ..runtime.errors import TrainingError

SOURCES = {  # file: (md5 or the md5s of known copies, size in bytes)
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist", {
        "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
        "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", 28881),
        "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", 1648877),
        "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", 4542),
    }, (0.1307, 0.3081)),
    # Debian and Ubuntu package the official Fashion-MNIST files (apt install dataset-fashion-mnist puts them in
    # /usr/share/datasets/fashion-mnist/), re-compressed without the file name in the gzip header: the second MD5
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com", {
        "train-images-idx3-ubyte.gz": (("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"),
                                       26421880),
        "train-labels-idx1-ubyte.gz": (("25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"),
                                       29515),
        "t10k-images-idx3-ubyte.gz": (("bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"),
                                      4422102),
        "t10k-labels-idx1-ubyte.gz": (("bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"),
                                      5148),
    }, (0.2860, 0.3530)),
}


def read_idx(path):
    """An IDX file (gzipped) as a uint8 array: magic 0x0000 08 <ndim>, big-endian sizes, then the bytes."""
    try:
        with gzip.open(str(path), "rb") as f:
            raw = f.read(256 << 20)
    except (OSError, EOFError, zlib.error) as err:
        raise TrainingError("%s is not a gzip file (%s); delete it and download it again" % (path, err))
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or len(raw) < 4 + 4 * raw[3]:
        raise TrainingError("%s is not an IDX file of unsigned bytes; delete it and download it again" % path)
    ndim = raw[3]
    dims = struct.unpack(">%dI" % ndim, raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims, dtype=np.int64)):
        raise TrainingError("%s is truncated: %d bytes for shape %s; delete it and download it again"
                            % (path, body.size, dims))
    return body.reshape(dims)


# the class names of Fashion-MNIST (zalandoresearch/fashion-mnist); MNIST's classes are its digits
CLASSES = {"fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                             "Bag", "Ankle boot")}


def _build(cfg, name):
    base, files, (mean, std) = SOURCES[name]
    folder = fetch_all(cfg, name, base, sorted((f, md5, size) for f, (md5, size) in files.items()))

    def split(prefix):
        x = read_idx(folder / ("%s-images-idx3-ubyte.gz" % prefix))
        y = read_idx(folder / ("%s-labels-idx1-ubyte.gz" % prefix))
        x = torch.from_numpy(x.copy()).unsqueeze(1)
        return ArrayDataset(x, torch.from_numpy(y.astype(np.int64)), scale=1 / 255.0, mean=mean, std=std)

    train = split("train")
    return Splits(train=train, test=split("t10k"), input_shape=tuple(train.x.shape[1:]), num_classes=10,
                  classes=CLASSES.get(name))


@register("mnist", task="classification", model="cnn", augment="crop:2", depth=3, recipe="classic")
def build_mnist(cfg):
    return _build(cfg, "mnist")


@register("fashion-mnist", task="classification", model="cnn", augment="crop:2,flip", depth=4, recipe="classic")
def build_fashion(cfg):
    return _build(cfg, "fashion-mnist")
