"""Is the data pipeline fast enough to keep the model busy? For the default setup (embedded digits, CNN) and
the CIFAR-shaped synthetic data (ResNet), measures the samples/s of train.py's own DataLoader (data.loading.
make_loader with its per-device settings, batches moved to the device) alone, and of the model's training
step alone on a batch already on the device. Alternating, median of repeats. A ratio data/model above 1
means the loader outruns the model.

    python benchmarks/data_throughput.py
    python benchmarks/data_throughput.py --device cuda -- --amp bf16 --channels-last
"""
import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from src import data, models  # noqa: E402
from src.app import flags  # noqa: E402
from src.runtime import compat  # noqa: E402
from src.data.loading import EpochBatches, loader_settings, make_loader  # noqa: E402

from common import machine, median, sync, table  # noqa: E402

SETUPS = [
    ("default: digits 1x8x8, cnn", ["--dataset", "digits", "--model", "cnn", "--batch-size", "64"]),
    ("CIFAR-shaped synthetic 3x32x32, resnet", ["--dataset", "synthetic", "--synthetic-size", "10000",
                                                "--synthetic-shape", "3,32,32", "--model", "resnet",
                                                "--batch-size", "128"]),
]


def data_rate(cfg, splits, device, batches):
    sampler = EpochBatches(len(splits.train), cfg.batch_size, seed=cfg.seed, epoch=0)
    sampler.tensors = (sampler.tensors * (batches // max(len(sampler.tensors), 1) + 1))[:batches]
    sampler.batches = [b.tolist() for b in sampler.tensors]
    start, n = time.perf_counter(), 0
    for x, y in make_loader(splits.train, sampler, cfg, device):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n += len(y)
    sync(device)
    return n / (time.perf_counter() - start)


def model_rate(cfg, splits, device, steps):
    model = models.build(cfg, splits.input_shape, splits.num_classes).to(device)
    if cfg.channels_last:
        model = compat.channels_last(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = splits.train[list(range(cfg.batch_size))]
    x, y = x.to(device), y.to(device)
    if cfg.channels_last:
        x = compat.channels_last(x)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.amp)
    for i in range(steps + 3):
        if i == 3:
            sync(device)
            start = time.perf_counter()
        with compat.autocast(device.type, dtype) if dtype else contextlib.nullcontext():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=200, help="batches the loader delivers per measurement")
    p.add_argument("--steps", type=int, default=30, help="model steps per measurement")
    p.add_argument("train_args", nargs="*", help="more train.py flags after --")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    rows = []
    for name, setup in SETUPS:
        cfg, _ = flags.parse(setup + ["--device", args.device] + args.train_args)
        splits = data.build(cfg)
        loaded, trained = [], []
        for _ in range(args.repeats):
            loaded.append(data_rate(cfg, splits, device, args.batches))
            trained.append(model_rate(cfg, splits, device, args.steps))
        settings = loader_settings(cfg, splits.train, device)
        rows.append((name, "%d workers, pin %s" % (settings["num_workers"], "on" if settings["pin_memory"] else "off"),
                     "%.0f" % median(loaded), "%.0f" % median(trained), "%.1f" % (median(loaded) / median(trained))))
    print("### Data pipeline vs model\n")
    print("%s; %s; median of %d alternating repeats\n" % (machine(device), device, args.repeats))
    print(table(("setup", "loader", "data samples/s", "model samples/s (train step)", "data / model"), rows))


if __name__ == "__main__":
    main()
