"""Shared by the benchmarks: what machine a table comes from, and the Markdown table itself."""
import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def machine(device="cpu"):
    """'<CPU model>, N cores[, <GPU>], torch X, Python Y' for the line above a table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = ["%s, %d cores" % (cpu, os.cpu_count() or 1)]
    if str(device).startswith("cuda") and torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    parts.append("torch %s, Python %s" % (torch.__version__, platform.python_version()))
    return ", ".join(parts)


def median(values):
    return statistics.median(values)


def table(header, rows):
    """Markdown table lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def baseline_setup():
    """(--steps/--warmup, train.py's config) for a baseline loop given the same flags as train.py."""
    from src.app import flags
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, default=10)
    args, train_args = p.parse_known_args()
    cfg, _ = flags.parse(train_args)
    return args, cfg


def baseline_parts():
    """What a baseline loop given train.py's flags starts from: (args, cfg, device, splits, model, SGD optimizer,
    memory format, autocast dtype or None), built by the same builders train.py uses."""
    from src import data, models
    args, cfg = baseline_setup()
    device = device_of(cfg)
    torch.manual_seed(cfg.seed)
    torch.backends.cudnn.benchmark = True
    splits = data.build(cfg)
    model = models.build(cfg, splits.input_shape, splits.num_classes).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.amp)
    return args, cfg, device, splits, model, opt, fmt, dtype


def device_of(cfg):
    """train.py's --device auto/cpu/cuda[:N] as a torch.device."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def sync(device):
    """Wait for the device's queued work, so that a timestamp means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GpuBusy(object):
    """Mean GPU utilization (nvidia-smi, sampled every 100 ms) while the block runs; `percent` is None on a CPU or
    without nvidia-smi.

        with GpuBusy(device) as busy:
            run()
        busy.percent
    """

    def __init__(self, device):
        import shutil
        self.on = str(device).startswith("cuda") and shutil.which("nvidia-smi") is not None
        self.percent, self.proc = None, None

    def __enter__(self):
        if self.on:
            import subprocess
            import tempfile
            self.log = tempfile.TemporaryFile(mode="w+")
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-i", "0", "-lms", "100"], stdout=self.log, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.log.seek(0)
            values = [float(v) for v in self.log.read().split() if v.replace(".", "", 1).isdigit()]
            self.percent = sum(values) / len(values) if values else None
        return False


def percent(values):
    """'61 %' of the median of some percentages, '-' when there are none."""
    values = [v for v in values if v is not None]
    return "%.0f %%" % median(values) if values else "-"
