"""The two kinds of failure train.py reports as one line: bad usage (exit 2) and a failed run (exit 1)."""


class UsageError(Exception):
    """The user asked for something invalid: a flag, a config file, a checkpoint that does not fit."""

    exit_code = 2


class TrainingError(Exception):
    """The run could not go on: missing data, a non-finite loss, a failed download."""

    exit_code = 1
