"""The checkpoint file: written atomically, verified on load, kept as latest/best/tmp.

A checkpoint is a dict with one entry per registered part (state/manager.py says which), of tensors and plain
types (weights-only loadable, and portable between torch 1.7 and 2.x), plus `format`. Before anything is
built from it, REQUIRED and _check_values check each entry this code reads for its type and range.
The file is the zip archive torch.save writes, plus one record, `<archive>/checkpoint_digest`: a blake2b
digest of every other record's name and raw bytes. Loading checks it before a single byte is unpickled,
then unpickles with weights-only loading (torch >= 1.13) or a restricted unpickler that admits only tensors,
storages and plain types (compat.load_bytes), so no file can run code on any stack.
`torch.load(path)["model"]` gives the weights for use elsewhere.
"""
import hashlib
import io
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..files import atomic
from ..runtime import compat, record
from ..runtime.errors import TrainingError, UsageError


FORMAT = 2
DIGEST_RECORD = "checkpoint_digest"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
# what a training checkpoint must hold, and the type of each part
REQUIRED = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "meter": dict, "progress": dict,
            "best": dict, "rng": dict, "config": dict}
PROGRESS = {"epoch": int, "sample_in_epoch": int, "step": int, "eval_pending": bool}


class CorruptCheckpoint(Exception):
    pass


def _feed(h, obj):
    """Format 1 (content digest over the unpickled state): kept to read checkpoints written before format 2."""
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


def _content_digest(state):
    h = hashlib.blake2b(digest_size=20)
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


def _records_digest(archive, names):
    h = hashlib.blake2b(digest_size=20)
    for name in names:
        data = archive.read(name)
        h.update(b"%d:%s:%d:" % (len(name), name.encode("utf-8"), len(data)))
        h.update(data)
    return h.hexdigest()


def sign(payload):
    """torch.save bytes with the digest record of every record added (the file as it is written)."""
    buf = io.BytesIO(payload)
    with zipfile.ZipFile(buf, "a") as archive:
        names = archive.namelist()
        prefix = names[0].split("/")[0]
        archive.writestr("%s/%s" % (prefix, DIGEST_RECORD), _records_digest(archive, names))
    return buf.getvalue()


def _verified_bytes(blob):
    """The bytes of a checkpoint file once its records match their digest (format 2), or None for a format 1
    file (a torch.save zip without the record); CorruptCheckpoint otherwise. Nothing is unpickled here."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as err:
        raise CorruptCheckpoint("not a checkpoint archive (%s)" % err)
    names = [i.filename for i in infos]
    if not names or len(set(names)) != len(names):
        raise CorruptCheckpoint("not a checkpoint archive (empty, or records named twice)")
    if any(i.compress_type != zipfile.ZIP_STORED or i.file_size > len(blob) for i in infos):
        raise CorruptCheckpoint("not a checkpoint archive (compressed or oversized records)")
    signed = [n for n in names if n.split("/")[-1] == DIGEST_RECORD]
    try:
        if not signed:
            return None
        want = archive.read(signed[0]).decode("ascii", "replace")
        have = _records_digest(archive, [n for n in names if n != signed[0]])
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, RuntimeError) as err:
        raise CorruptCheckpoint("damaged archive (%s)" % err)
    if len(signed) > 1 or want != have:
        raise CorruptCheckpoint("contents do not match the stored digest")
    return blob


def _tensor_dict(value):
    """Whether value is a state dict: names to tensors."""
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _check_layout(state, full):
    """Raise CorruptCheckpoint unless state has the parts (and types) this project's code reads."""
    if not isinstance(state, dict):
        raise CorruptCheckpoint("not a checkpoint of this project")
    wanted = REQUIRED if full else {"model": dict}
    for key, kind in wanted.items():
        if not isinstance(state.get(key), kind):
            raise CorruptCheckpoint("missing or malformed '%s'" % key)
    if not _tensor_dict(state["model"]):
        raise CorruptCheckpoint("'model' is not a state dict of tensors")
    ema = state.get("ema")
    if ema is not None and not (isinstance(ema, dict) and _tensor_dict(ema.get("weights"))):
        raise CorruptCheckpoint("'ema' is not a state dict of tensors")
    if full:
        progress = state["progress"]
        for key, kind in PROGRESS.items():
            if not isinstance(progress.get(key), kind) or (kind is int and progress[key] < 0):
                raise CorruptCheckpoint("missing or malformed 'progress.%s'" % key)
        if not isinstance(state["config"].get("run_name"), str):
            raise CorruptCheckpoint("missing or malformed 'config.run_name'")
        if not isinstance(state["best"].get("metric"), str) or state["best"].get("mode") not in ("min", "max"):
            raise CorruptCheckpoint("missing or malformed 'best'")
        _check_values(state)


MAX_COUNT = 1 << 62  # steps, epochs and samples beyond this are not a real run's


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _count(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < MAX_COUNT


def _ints(value, length=None):
    return isinstance(value, (list, tuple)) and all(_count(v, -MAX_COUNT) for v in value) and (
        length is None or len(value) == length)


def _tensor(value, dtype=None):
    return isinstance(value, torch.Tensor) and (dtype is None or value.dtype == dtype)


def _rng_ok(rng):
    py, npy = rng.get("python"), rng.get("numpy")
    return (isinstance(py, (list, tuple)) and len(py) == 3 and _count(py[0]) and _ints(py[1], 625)
            and (py[2] is None or _number(py[2]))
            and isinstance(npy, (list, tuple)) and len(npy) == 5 and npy[0] == "MT19937" and _ints(npy[1], 624)
            and _count(npy[2]) and _count(npy[3]) and _number(npy[4])
            and _tensor(rng.get("torch"), torch.uint8) and rng["torch"].shape == torch.get_rng_state().shape
            and isinstance(rng.get("cuda", []), (list, tuple))
            and all(_tensor(t, torch.uint8) for t in rng.get("cuda", [])))


def _optimizer_ok(opt):
    groups, slots = opt.get("param_groups"), opt.get("state")
    return (isinstance(slots, dict) and isinstance(groups, list)
            and all(_count(k) and isinstance(v, dict) and all(isinstance(n, str) and (_tensor(x) or _number(x))
                                                              for n, x in v.items()) for k, v in slots.items())
            and all(isinstance(g, dict) and _ints(g.get("params")) and _number(g.get("lr")) for g in groups))


def _check_values(state):
    """The values of a full checkpoint, each of the type and range this project writes: a forged or damaged file
    that passed the digest fails here, before anything is built from it (not with a traceback at step one)."""
    progress, best, meter, sched = state["progress"], state["best"], state["meter"], state["scheduler"]
    checks = [
        ("progress", all(_count(progress[k]) for k in ("epoch", "sample_in_epoch", "step"))
         and _count(progress.get("stale_evals", 0))
         and all(progress.get(k) is None or _number(progress[k]) for k in ("stale_ref", "stale_ref_loss"))),
        ("best", (best.get("value") is None or _number(best["value"]))
         and (best.get("step") is None or _count(best["step"]))
         and (best.get("loss") is None or _number(best["loss"]))),
        ("meter", _tensor(meter.get("loss_sum")) and _tensor(meter.get("grad_norm")) and _count(meter.get("steps"))
         and isinstance(meter.get("counts", {}), dict) and all(isinstance(k, str) and _tensor(v)
                                                               for k, v in meter.get("counts", {}).items())),
        ("scheduler", _count(sched.get("last_epoch"), -1) and isinstance(sched.get("base_lrs"), list)
         and all(_number(v) for v in sched["base_lrs"] + list(sched.get("_last_lr") or []))
         and _count(sched.get("_step_count", 0))),
        ("optimizer", _optimizer_ok(state["optimizer"])),
        ("rng", _rng_ok(state["rng"])),
        ("last_eval", isinstance(state.get("last_eval", {}), dict)
         and all(isinstance(k, str) and _number(v) for k, v in (state.get("last_eval") or {}).items())),
        ("task", isinstance(state.get("task", {}), dict)
         and all(isinstance(k, str) for k in (state.get("task") or {}))),
        ("rng_ranks", state.get("rng_ranks") is None or (isinstance(state["rng_ranks"], list)
                                                         and all(isinstance(r, dict) and _rng_ok(r)
                                                                 for r in state["rng_ranks"]))),
        ("ema", state.get("ema") is None or _count(state["ema"].get("updates", 0))),
    ]
    for name, ok in checks:
        if not ok:
            raise CorruptCheckpoint("malformed '%s' (values of the wrong type or range)" % name)


def versions():
    return {"python": sys.version.split()[0], "torch": str(torch.__version__), "numpy": str(np.__version__)}


def git_commit():
    """The checkout's commit, or None (no git, not a checkout)."""
    return (record.git("rev-parse", "HEAD") or "").strip() or None


def serialize(state):
    """The bytes of a checkpoint file: torch.save's archive plus its digest record."""
    buf = io.BytesIO()
    torch.save(dict(state, format=FORMAT), buf)
    return sign(buf.getvalue())


def write(payload, *paths):
    for path in paths:
        atomic.write_bytes(path, payload)


MARGIN = 1 << 20  # bytes left free on a filesystem after a checkpoint, for logs and the system


def free_bytes(folder):
    info = os.statvfs(str(folder))
    return info.f_bavail * info.f_frsize


def check_space(size, paths):
    """Raise TrainingError, before anything is written, when a checkpoint of `size` bytes cannot be written to every
    path (each write needs room for the new file while the old one still exists)."""
    need = {}
    for path in paths:
        folder = Path(path).parent
        dev = os.stat(str(folder)).st_dev
        need.setdefault(dev, [folder, 0])[1] += size
    for folder, wanted in need.values():
        free = free_bytes(folder)
        if free < wanted + MARGIN:
            raise TrainingError("not enough space for a checkpoint in %s: it needs %.0f MB, %.0f MB are free; free "
                                "space there (or lower --keep-last), then --resume: the last good checkpoint is kept"
                                % (folder, (wanted + MARGIN) / 1e6, free / 1e6))


def load(path, full=True):
    """A checkpoint verified against its digest before unpickling, unpickled without running code, and holding
    every part resuming needs (only the weights when not full); CorruptCheckpoint says why not."""
    with open(str(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > compat.memory_bytes() // 2:  # it would be read whole into memory: refused before a byte is read
            raise CorruptCheckpoint("%.1f GB, more than half of this machine's %.1f GB of memory" % (
                size / 1e9, compat.memory_bytes() / 1e9))
        blob = f.read()
    verified = _verified_bytes(blob)
    try:
        state = compat.load_bytes(blob)
    except Exception as err:  # truncated zip, forbidden object, bad pickle, ...: all mean unreadable
        text = str(err).strip().splitlines()
        raise CorruptCheckpoint("%s: %s" % (type(err).__name__, text[0][:200] if text else ""))
    if verified is None:  # format 1: the digest was over the unpickled contents
        if not isinstance(state, dict) or "digest" not in state:
            raise CorruptCheckpoint("not a checkpoint of this project (no digest)")
        if _content_digest(state) != state["digest"]:
            raise CorruptCheckpoint("contents do not match the stored digest")
    _check_layout(state, full)
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


def evaluated_weights(state):
    """The weights a checkpoint's evaluations used: the moving average of --ema where it has one, else the model's."""
    ema = state.get("ema")
    return ema["weights"] if isinstance(ema, dict) and "weights" in ema else state["model"]


def fit_weights(model, weights, what, *, partial=False):
    """Load a state dict of weights into model (DDP or compile wrappers looked through), or raise one line that
    says what does not fit `what` (the first two problems). partial: load only the tensors whose names and shapes
    match and keep the model's own for the rest. Returns {"loaded": [names], "fresh": [names, with why],
    "unused": [names of the checkpoint's tensors the model lacks]}."""
    target = compat.unwrap_model(model)
    want = target.state_dict()
    have = compat.clean_state_dict(weights)
    missing = [k for k in want if k not in have]
    unused = [k for k in have if k not in want]
    shaped = [(k, list(have[k].shape), list(want[k].shape)) for k in want
              if k in have and tuple(have[k].shape) != tuple(want[k].shape)]
    if partial:
        loaded = [k for k in want if k in have and tuple(have[k].shape) == tuple(want[k].shape)]
        if not loaded:
            raise UsageError("shares no tensor name and shape with %s; start from the weights of a related model"
                             % what)
        target.load_state_dict(dict(want, **{k: have[k] for k in loaded}))
        fresh = ["%s (missing)" % k for k in missing] + ["%s (%s in the checkpoint, the model's %s)" % s
                                                         for s in shaped]
        return {"loaded": loaded, "fresh": fresh, "unused": unused}
    problems = ["missing %s" % k for k in missing] + ["unexpected %s" % k for k in unused]
    problems += ["%s is %s, the model wants %s" % s for s in shaped]
    if problems:
        more = " (and %d more)" % (len(problems) - 2) if len(problems) > 2 else ""
        raise UsageError("does not fit %s: %s%s" % (what, "; ".join(problems[:2]), more))
    target.load_state_dict(have)
    return {"loaded": list(want), "fresh": [], "unused": []}


def load_model_weights(model, state, path, what, *, evaluated=False, partial=False):
    """Load state["model"] (evaluated: the weights its evaluations used, see evaluated_weights) into model, or
    raise one line naming what does not fit; fit_weights' report of what was loaded."""
    try:
        return fit_weights(model, evaluated_weights(state) if evaluated else state["model"], what, partial=partial)
    except UsageError as err:
        raise UsageError("checkpoint %s %s" % (path, err))
