"""Reading a folder of small images: train.py's `--dataset folder:PATH` against the loop a researcher would write
(a Dataset that opens each file with PIL, converts, resizes and normalizes it, under a torch DataLoader with the
same batch size and workers). Ours is measured streaming from the files (`--image-cache off`, the same workers)
and from the decoded cache (`--image-cache on`, the one-time decoding not counted; the default workers: none
for data in memory). Samples/s of whole epochs,
alternating, median of repeats; ratios to the hand-written loader.

    python benchmarks/folder_loading.py                       # 2000 PNG images of 32x32 in 10 classes, made here
    python benchmarks/folder_loading.py --images 500 --workers 0 --repeats 1
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from src import data  # noqa: E402
from src.app import flags  # noqa: E402
from src.data.loading import EpochBatches, make_loader  # noqa: E402

from common import machine, median, table  # noqa: E402


def make_images(root, n, size, classes=10):
    from PIL import Image
    rng = np.random.RandomState(0)
    for i in range(n):
        folder = root / ("class%02d" % (i % classes))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(str(folder / ("%05d.png" % i)))


class HandWritten(torch.utils.data.Dataset):
    """What one writes without a template: PIL per sample, RGB, resize, scale, normalize."""

    def __init__(self, root, size, mean, std):
        self.files = sorted(root.rglob("*.png"))
        names = sorted({f.parent.name for f in self.files})
        self.labels = [names.index(f.parent.name) for f in self.files]
        self.size, self.mean, self.std = size, mean, std

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(str(self.files[i])) as image:
            image = image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std, self.labels[i]


def epoch_rate(loader):
    start, n = time.perf_counter(), 0
    for _, y in loader:
        n += len(y)
    return n / (time.perf_counter() - start)


def ours(root, cache, args):
    """Our loader of the train split: streaming with the same workers, or cached with the default (in memory: none,
    whole batches indexed at once)."""
    workers = args.workers if cache == "off" else -1
    cfg, _ = flags.parse(["--dataset", "folder:%s" % root, "--image-cache", cache, "--num-workers", str(workers),
                          "--batch-size", str(args.batch_size), "--device", "cpu", "--val-split", "0.01",
                          "--test-split", "0.01", "--data-dir", str(root.parent / "data")])
    splits = data.build(cfg)  # with the cache on: the decoding happens here, once, outside the measurement
    batches = EpochBatches(len(splits.train), cfg.batch_size, seed=0)
    return make_loader(splits.train, batches, cfg, torch.device("cpu")), len(splits.train)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)  # other work on a small machine makes torch's default threading erratic
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        make_images(root, args.images, args.size)
        streaming, n = ours(root, "off", args)
        cached, _ = ours(root, "on", args)
        hand = torch.utils.data.DataLoader(
            HandWritten(root, args.size, torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.29)),
            batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
            persistent_workers=args.workers > 0)
        rates = {"hand-written (PIL + DataLoader)": [], "folder:PATH, streaming": [], "folder:PATH, cached": []}
        for _ in range(args.repeats):
            for name, loader in zip(rates, (hand, streaming, cached)):
                rates[name].append(epoch_rate(loader))
    base = median(rates["hand-written (PIL + DataLoader)"])
    print("### Reading a folder of images\n")
    print("%s; %d PNG images of %dx%d RGB in 10 class folders (ours: the %d train images after the splits); "
          "batch %d, %d workers, 1 CPU thread; median of %d alternating epochs\n"
          % (machine(), args.images, args.size, args.size, n, args.batch_size, args.workers, args.repeats))
    print(table(("loader", "samples/s (median)", "runs", "ratio to hand-written"),
                [(name, "%.0f" % median(v), ", ".join("%.0f" % r for r in v), "%.2f" % (median(v) / base))
                 for name, v in rates.items()]))


if __name__ == "__main__":
    main()
