"""Where a project and each run keep their files; folders (and dangling symlink targets) made on demand.

    data/                      datasets
    logs/<run>/                TensorBoard events, train.log, config.yaml, run.lock
    models/latest/<run>.pt     newest checkpoint of a run (what --resume continues)
    models/best/<run>.pt       best checkpoint by --monitor
    models/tmp/<run>/step-N.pt the last --keep-last periodic checkpoints
"""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure_dir(path):
    """Make a folder; a dangling symlink (say /tmp emptied by a reboot) gets its target made again."""
    path = Path(path)
    for part in reversed((path,) + tuple(path.parents)):
        if part.is_symlink() and not part.exists():
            target = Path(os.readlink(str(part)))
            (target if target.is_absolute() else part.parent / target).mkdir(parents=True, exist_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunPaths:
    """The files of one named run."""

    def __init__(self, cfg):
        self.name = cfg.run_name
        self.logs_dir = Path(cfg.logs_dir)
        self.models_dir = Path(cfg.models_dir)
        self.run_dir = self.logs_dir / self.name
        self.latest = self.models_dir / "latest" / (self.name + ".pt")
        self.best = self.models_dir / "best" / (self.name + ".pt")
        self.tmp_dir = self.models_dir / "tmp" / self.name
        self.log_file = self.run_dir / "train.log"
        self.config_file = self.run_dir / "config.yaml"
        self.lock_file = self.run_dir / "run.lock"
        self.data_dir = Path(cfg.data_dir)

    def make(self):
        for folder in (self.data_dir, self.run_dir, self.latest.parent, self.best.parent, self.tmp_dir):
            ensure_dir(folder)

    def tmp_checkpoint(self, step):
        return self.tmp_dir / ("step-%d.pt" % step)
