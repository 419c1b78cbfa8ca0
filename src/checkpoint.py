"""Checkpoints: the full training state, written atomically, verified on load, kept as latest/best/tmp.

A checkpoint is a dict of tensors and plain types (weights-only loadable, and portable between torch
1.7 and 2.x):
    model, optimizer, scheduler, scaler, meter      state dicts
    progress    {epoch, sample_in_epoch, step, eval_pending}
    best        {metric, mode, value, step}
    rng         Python, NumPy, torch CPU and CUDA generator states
    config      the effective config;  versions, git_commit;  digest  (blake2b of everything else)
`torch.load(path)["model"]` gives the weights for use elsewhere.
"""
import hashlib
import io
import logging
import re
import subprocess
import sys

import numpy as np
import torch

from . import atomic, compat
from .errors import UsageError
from .paths import ROOT

log = logging.getLogger("train")

FORMAT = 1
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class CorruptCheckpoint(Exception):
    pass


def _feed(h, obj):
    if isinstance(obj, torch.Tensor):
        h.update(("T%s%s" % (obj.dtype, tuple(obj.shape))).encode())
        h.update(compat.tensor_buffer(obj))
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for item in obj:
            _feed(h, item)
    else:
        h.update(("S" + repr(obj)).encode())


def digest(state):
    h = hashlib.blake2b(digest_size=20)
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


def versions():
    return {"python": sys.version.split()[0], "torch": str(torch.__version__), "numpy": str(np.__version__)}


def git_commit():
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=5, check=True)
        return out.stdout.decode().strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def serialize(state):
    """The bytes of a checkpoint, with its digest filled in."""
    state = dict(state, format=FORMAT)
    state["digest"] = digest(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def write(payload, *paths):
    for path in paths:
        atomic.write_bytes(path, payload)


def load(path):
    """A checkpoint verified against its digest; CorruptCheckpoint says why not."""
    try:
        state = compat.load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated zip, bad pickle, ...: all mean unreadable
        raise CorruptCheckpoint("%s: %s" % (type(err).__name__, str(err).splitlines()[0] if str(err) else ""))
    if not isinstance(state, dict) or "digest" not in state or "model" not in state:
        raise CorruptCheckpoint("not a checkpoint of this project")
    if digest(state) != state["digest"]:
        raise CorruptCheckpoint("contents do not match the stored digest")
    return state


def tmp_checkpoints(folder):
    """Periodic checkpoints of a run, newest first, as (step, path)."""
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _STEP_FILE.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def prune(folder, keep):
    for _, path in tmp_checkpoints(folder)[keep:]:
        path.unlink()


def newest_valid(paths):
    """The state to resume a run from: the newest verified checkpoint among latest and models/tmp.

    A corrupt or truncated latest is reported and passed over. Returns (state, path) or (None, None).
    """
    latest = None
    if paths.latest.exists():
        try:
            latest = load(paths.latest)
        except CorruptCheckpoint as err:
            log.warning("WARNING: %s is unreadable (%s); looking for the newest valid checkpoint in %s",
                        paths.latest, err, paths.tmp_dir)
    for step, path in tmp_checkpoints(paths.tmp_dir):
        if latest is not None and step <= latest["progress"]["step"]:
            break
        try:
            state = load(path)
        except CorruptCheckpoint as err:
            log.warning("WARNING: %s is unreadable (%s); skipping it", path, err)
            continue
        if paths.latest.exists():
            log.warning("WARNING: resuming from %s (step %d) instead of %s", path, step, paths.latest)
        return state, path
    return (latest, paths.latest) if latest is not None else (None, None)


def load_model_weights(model, state, path, what):
    """Load state["model"] into model, or raise one line naming what does not fit."""
    target = compat.unwrap_model(model)
    want = target.state_dict()
    have = compat.clean_state_dict(state["model"])
    problems = ["missing %s" % k for k in want if k not in have]
    problems += ["unexpected %s" % k for k in have if k not in want]
    problems += ["%s is %s, the model wants %s" % (k, list(have[k].shape), list(want[k].shape))
                 for k in want if k in have and tuple(have[k].shape) != tuple(want[k].shape)]
    if problems:
        more = " (and %d more)" % (len(problems) - 2) if len(problems) > 2 else ""
        raise UsageError("checkpoint %s does not fit %s: %s%s" % (path, what, "; ".join(problems[:2]), more))
    target.load_state_dict(have)
