#!/usr/bin/env python3
"""Train a model; stop it any time; resume exactly where it stopped; watch it in TensorBoard.

    python train.py                                  # default: small CNN on the embedded digits, CPU or GPU
    python train.py --resume                         # continue the run's latest checkpoint
    python train.py --lr 0.01 --epochs 30 --resume   # continue with changed hyperparameters (logged)
    python train.py --config configs/cifar10-resnet.yaml --run-name try2
    tensorboard --logdir logs                        # then open http://127.0.0.1:6006
    torchrun --standalone --nproc_per_node 4 train.py --batch-size 256   # 4 processes (GPUs), global batch 256

Everything lives in src/ (README "Layout"): app/ (flags, commands, building the parts, the Run), loop/ (the
trainer and its state), state/ (the checkpoint manager and file), files/ (paths, loggers), runtime/ (torch
versions, processes, signals); data/, models/, tasks/, augment/ are plugins, one file each.
"""
from src.runtime.signals import STOP, Stopped

STOP.install()  # first, before torch loads: a stop signal from now on is honoured, never a default death

import logging  # noqa: E402
import sys  # noqa: E402

from src.runtime.errors import TrainingError, UsageError  # noqa: E402


def main(argv=None):
    log = logging.getLogger("train")
    try:
        from src.runtime import slurm
        slurm.adopt_srun_ranks()  # srun --ntasks N: each task's rank from Slurm
        from src.app import flags
        from src.app.commands import main as run
        cfg, user = flags.parse(argv)
        return run(cfg, user, STOP)
    except (UsageError, TrainingError) as err:
        from src.runtime.distributed import env_rank
        if isinstance(err, UsageError) and env_rank() > 0:  # every process got the same flags: rank 0 says it
            import time
            deadline = time.time() + 10  # until the launcher stops this process (rank 0 failed): leaving first,
            while not STOP.requested and time.time() < deadline:  # torchrun could stop rank 0 before it said why
                time.sleep(0.05)
            return err.exit_code
        message = "train.py: error: %s" % err
        if log.handlers:
            log.error(message)
        else:
            print(message, file=sys.stderr)
        return err.exit_code
    except Stopped as stop:
        print("train.py: stopped by %s before training started; nothing was saved or changed (run the same "
              "command again to start)" % stop.name, file=sys.stderr)
        return 130 if stop.name == "SIGINT" else 0
    except KeyboardInterrupt:
        print("train.py: aborted", file=sys.stderr)
        return 130


def leave(code):
    """Exit with code, whatever comes now: a stop signal is ignored (the work is saved or there was none), and
    DataLoader workers still alive (they ignore stop signals; an error may have left them behind) are killed so
    that shutdown cannot wait on them."""
    STOP.after_exit()
    import multiprocessing
    for child in multiprocessing.active_children():
        child.kill()
    from src.runtime import compat
    sys.exit(compat.exit_process(code))


if __name__ == "__main__":
    try:
        CODE = main()
    except Exception:  # a bug: its traceback, then the same exit as any error (no worker left to wait on)
        import traceback
        traceback.print_exc()
        CODE = 1
    leave(CODE)
