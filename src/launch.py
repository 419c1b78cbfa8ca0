"""Start train.py on N processes of this node (run.sh --nproc N, compose's NPROC):

    python -m src.launch 4 --epochs 30          # = torchrun --standalone --nproc_per_node 4 train.py --epochs 30
    python -m src.launch 1 --epochs 30          # = python train.py --epochs 30

N=1 is a plain run. On torch < 1.10 (the cu92 stack) `python -m torch.distributed.launch --use_env` stands in
for torchrun. The launcher replaces this process, so signals (docker stop, Ctrl-C) reach it directly.
Several nodes: run torchrun on each one yourself (README, "Several GPUs and nodes").
"""
import os
import sys

from . import compat
from .paths import ROOT


def command(nproc, train_args, python=sys.executable):
    train = [str(ROOT / "train.py")] + list(train_args)
    if nproc == 1:
        return [python] + train
    return compat.launcher(python, nproc) + train


def main(argv):
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m src.launch NPROC [train.py flags]  (NPROC: processes on this node, >= 1)",
              file=sys.stderr)
        return 2
    nproc = int(argv[0])
    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    cmd = command(nproc, argv[1:])
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
