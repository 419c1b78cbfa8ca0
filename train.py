#!/usr/bin/env python3
"""Train a model; stop it any time; resume exactly where it stopped; watch it in TensorBoard.

    python train.py                                  # default: small CNN on the embedded digits, CPU or GPU
    python train.py --resume                         # continue the run's latest checkpoint
    python train.py --lr 0.01 --epochs 30 --resume   # continue with changed hyperparameters (logged)
    python train.py --config configs/cifar10-resnet.yaml --run-name try2
    tensorboard --logdir logs                        # then open http://127.0.0.1:6006

Everything lives in src/: config.py (flags), data/ and models/ (registries), engine.py (the loop),
checkpoint.py, tensorboard_writer.py, run.py (fresh start or resume). See README.md.
"""
import logging
import sys

from src.errors import TrainingError, UsageError


def main(argv=None):
    log = logging.getLogger("train")
    try:
        from src import config
        from src.run import run
        cfg, user = config.parse(argv)
        return run(cfg, user)
    except (UsageError, TrainingError) as err:
        message = "train.py: error: %s" % err
        if log.handlers:
            log.error(message)
        else:
            print(message, file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("train.py: aborted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    code = main()
    from src import compat
    sys.exit(compat.exit_process(code))
