"""CIFAR-10, downloaded into data/cifar10/ and read from its native python tarball without unpacking it."""
import pickle
import tarfile

import numpy as np
import torch

from . import ArrayDataset, Splits, register
from .download import fetch_all
from ..runtime.errors import TrainingError

BASE = "https://www.cs.toronto.edu/~kriz"
FILE, MD5, SIZE = "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", 170498071
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


class _ArraysOnly(pickle.Unpickler):
    """The batches are pickles: allow numpy arrays and nothing else, so a bad file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("_codecs", "encode")}  # how Python 3 pickles bytes at protocol 2

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super(_ArraysOnly, self).find_class(module, name)
        raise pickle.UnpicklingError("unexpected object %s.%s in a CIFAR batch" % (module, name))


def read_batches(path, names):
    xs, ys = [], []
    try:
        tar = tarfile.open(str(path), "r:gz")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise TrainingError("%s is not a gzipped tar file (%s); delete it and download it again" % (path, err))
    with tar:
        for name in names:
            try:
                member = tar.extractfile("cifar-10-batches-py/" + name)
            except KeyError:
                raise TrainingError("%s has no cifar-10-batches-py/%s" % (path, name))
            try:
                batch = _ArraysOnly(member, encoding="bytes").load()
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, tarfile.TarError,
                    OSError) as err:
                raise TrainingError("%s: cifar-10-batches-py/%s is not a CIFAR-10 batch (%s: %s); delete the file and "
                                    "download it again" % (path, name, type(err).__name__, err))
            if len(xs[-1]) != len(ys[-1]):
                raise TrainingError("%s: cifar-10-batches-py/%s has %d images but %d labels"
                                    % (path, name, len(xs[-1]), len(ys[-1])))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@register("cifar10", task="classification", model="cnn", augment="crop:4,flip", depth=4, recipe="classic")
def build(cfg):
    """The five training batches give train and val; the official test batch is the test split."""
    path = fetch_all(cfg, "cifar10", BASE, [(FILE, MD5, SIZE)]) / FILE
    train = ArrayDataset(*read_batches(path, ["data_batch_%d" % i for i in range(1, 6)]),
                         scale=1 / 255.0, mean=MEAN, std=STD)
    test = ArrayDataset(*read_batches(path, ["test_batch"]), scale=1 / 255.0, mean=MEAN, std=STD)
    return Splits(train=train, test=test, input_shape=(3, 32, 32), num_classes=10, classes=CLASSES)
