"""timm architectures on a researcher's small image folder: from random init, and fine-tuned from a weights file
pretrained elsewhere, with train.py's defaults for each (the data's recipe; the fine-tuning recipe with
--pretrained), on the same splits.

No machine here reaches the Hugging Face hub, so the weights file is made the way a lab makes its own: each
architecture is first trained by train.py on a larger dataset, and its weights are saved as a .safetensors file.
--source shapes (the default): 2,400 shape images drawn with another seed, the stand-in for a large collection
of the same kind of images (ImageNet before a photo folder); --source fashion: Fashion-MNIST as PNG files
(Debian's dataset-fashion-mnist; 6,000 grey clothes in 10 classes), a source unlike the target. The target is
the generated folder of 362 shape images in 4 classes (own_data_sets.shapes_folder, one class of 12), where the
built-in cnn's defaults reach 0.59 (benchmarks/README.md). Both starts train the same --epochs with their own
defaults otherwise (the data's recipe; the fine-tuning recipe with --pretrained). Reported: parameters, CPU
milliseconds per training step (batch 32, the pinned threads), test accuracy from random init and from the file.

    python benchmarks/timm_finetune.py                                   # about 40 minutes on 2 CPU cores
    python benchmarks/timm_finetune.py --archs resnet18 --source fashion
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import own_data_sets  # noqa: E402
from common import machine, table  # noqa: E402


def train(work, name, args, threads):
    """train.py in work/ as run `name`: (test metrics, parameters, ms per step, seconds)."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--progress", "plain", "--run-name", name, "--threads",
           str(threads), "--log-every", "10", "--logs-dir", str(work / "logs"), "--models-dir", str(work / "models"),
           "--data-dir", str(work / "data")] + args
    started = time.time()
    res = subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    seconds = time.time() - started
    if res.returncode != 0:
        raise SystemExit("train.py %s failed:\n%s" % (" ".join(args), res.stdout[-3000:]))
    metrics = json.loads((work / "logs" / name / "metrics.json").read_text())["test"]
    params = int(re.search(r": ([\d,]+) parameters", res.stdout).group(1).replace(",", ""))
    batch = int(_config(work, name)["batch_size"])
    rates = [float(r) for r in re.findall(r"\| ([\d.]+) samples/s", res.stdout)[1:]]  # the first holds startup
    ms = 1000.0 * batch / (sum(rates) / len(rates)) if rates else float("nan")
    return metrics, params, ms, seconds


def _config(work, name):
    import yaml
    return yaml.safe_load((work / "logs" / name / "config.yaml").read_text())


def weights_file(work, name, dest):
    """The best checkpoint's evaluated weights of run `name` as a .safetensors file (what a lab shares)."""
    from safetensors.torch import save_file
    from src.state import fileformat
    state = fileformat.load(work / "models" / "best" / ("%s.pt" % name), full=False)
    save_file({k: v.contiguous() for k, v in fileformat.evaluated_weights(state).items()}, str(dest))
    return dest


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="resnet18,convnext_atto,vit_tiny_patch16_224")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--source", choices=("shapes", "fashion"), default="shapes", help="what the weights learned first")
    p.add_argument("--pretrain-steps", type=int, default=400, help="train.py steps on the source per arch")
    p.add_argument("--epochs", type=int, default=40, help="epochs on the shapes folder (both starts)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shapes = own_data_sets.shapes_folder(work / "shapes")
        if args.source == "fashion":
            source_data = own_data_sets.fashion_folder(work / "fashion", per_class=600)
            if source_data is None:
                raise SystemExit("Debian's dataset-fashion-mnist is not installed (apt-get install "
                                 "dataset-fashion-mnist)")
        else:
            source_data = own_data_sets.shapes_folder(work / "source", seed=1, counts=(600, 600, 600, 600))
        common = ["--image-size", str(args.image_size), "--seed", str(args.seed)]
        rows = []
        for arch in args.archs.split(","):
            model = ["--model", "timm:" + arch]
            pre, _, _, pre_s = train(work, "pre-" + arch, ["--dataset", "folder:%s" % source_data, "--max-steps",
                                                           str(args.pretrain_steps)] + model + common, args.threads)
            source = weights_file(work, "pre-" + arch, work / ("%s.safetensors" % arch))
            target = ["--dataset", "folder:%s" % shapes, "--epochs", str(args.epochs)] + model + common
            scratch, params, ms, s1 = train(work, "scratch-" + arch, target, args.threads)
            tuned, _, ms2, s2 = train(work, "tuned-" + arch, target + ["--pretrained", str(source)], args.threads)
            rows.append([arch, "%.1fM" % (params / 1e6), "%.0f" % ms, "%.4f" % pre["test/acc"],
                         "%.4f" % scratch["test/acc"], "%.4f" % tuned["test/acc"],
                         "%.0f / %.0f / %.0f" % (pre_s, s1, s2)])
            print("%s: %s" % (arch, rows[-1]), flush=True)
    print("%s; %d CPU thread(s)" % (machine(), args.threads))
    print("shapes folder (4 classes, 362 images, %d px), %d epochs each start; the file: %d steps on %s" % (
        args.image_size, args.epochs, args.pretrain_steps, "2,400 other shape images" if args.source == "shapes"
        else "Fashion-MNIST PNGs (6,000 images)"))
    print(table(["timm model", "params", "ms/step (batch 32)", "source test acc", "shapes acc, random init",
                 "shapes acc, from the file", "seconds (source / init / file)"], rows))


if __name__ == "__main__":
    main()
