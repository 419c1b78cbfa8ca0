"""Which checkpoint a run continues from: --resume latest|auto|PATH, a corrupt latest passed over for the newest
valid one in models/tmp, and never a fresh start over a run that has checkpoints. Reads only; the manager
(manager.py) restores what is found."""
import logging
from pathlib import Path

from . import fileformat
from ..runtime.errors import UsageError

log = logging.getLogger("train")


def existing_runs(models_dir):
    return sorted(p.stem for p in (Path(models_dir) / "latest").glob("*.pt"))


def load_or_usage_error(path, flag, full=True):
    path = Path(path)
    try:
        is_file = path.is_file()
    except OSError as err:  # a name the system cannot hold (a part over 255 bytes)
        raise UsageError("%s %s...: %s; check the path" % (flag, str(path)[:80], err.strerror or err))
    if not is_file:
        raise UsageError("%s %s: no such checkpoint file" % (flag, path))
    try:
        return fileformat.load(path, full=full)
    except fileformat.CorruptCheckpoint as err:
        raise UsageError("%s %s: unreadable checkpoint (%s); give a checkpoint this project wrote" % (flag, path, err))
    except OSError as err:
        raise UsageError("%s %s: cannot read it (%s)" % (flag, path, err.strerror or err))


def fingerprint(paths):
    """What the resume lookup saw of a run's checkpoint files (compared again once the run is locked)."""
    def seen(path):
        try:
            info = path.stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size
    return seen(paths.latest), tuple((step, seen(path)) for step, path in fileformat.tmp_checkpoints(paths.tmp_dir))


def find_resume_state(cfg, paths, explicit_state):
    """(state, path) to continue from, or (None, None) for a fresh start; refuses to clobber a run."""
    has_files = paths.latest.exists() or bool(fileformat.tmp_checkpoints(paths.tmp_dir))
    if cfg.resume is None:
        if has_files:
            raise UsageError("run '%s' already has checkpoints (%s); continue it with --resume, or start another "
                             "with --run-name NAME" % (cfg.run_name, paths.latest))
        return None, None
    if cfg.resume not in ("latest", "auto"):
        return explicit_state, Path(cfg.resume)
    state, path = newest_valid(paths)
    if state is not None:
        return state, path
    if has_files:
        raise UsageError("run '%s' has no readable checkpoint in %s or %s; nothing was changed"
                         % (cfg.run_name, paths.latest, paths.tmp_dir))
    if cfg.resume == "auto":
        return None, None
    others = [r for r in existing_runs(cfg.models_dir) if r != cfg.run_name]
    hint = " (runs with checkpoints: %s; pick one with --run-name)" % ", ".join(others) if others else ""
    raise UsageError("nothing to resume: run '%s' has no checkpoint in %s%s" % (cfg.run_name, paths.latest.parent,
                                                                                 hint))


def newest_valid(paths):
    """The state to resume a run from: the newest verified checkpoint among latest and models/tmp.

    A corrupt or truncated latest is reported and passed over. Returns (state, path) or (None, None).
    """
    latest = None
    if paths.latest.exists():
        try:
            latest = fileformat.load(paths.latest)
        except fileformat.CorruptCheckpoint as err:
            log.warning("WARNING: %s is unreadable (%s); looking for the newest valid checkpoint in %s",
                        paths.latest, err, paths.tmp_dir)
    for step, path in fileformat.tmp_checkpoints(paths.tmp_dir):
        if latest is not None and step <= latest["progress"]["step"]:
            break
        try:
            state = fileformat.load(path)
        except fileformat.CorruptCheckpoint as err:
            log.warning("WARNING: %s is unreadable (%s); skipping it", path, err)
            continue
        if paths.latest.exists():
            log.warning("WARNING: resuming from %s (step %d) instead of %s", path, step, paths.latest)
        return state, path
    return (latest, paths.latest) if latest is not None else (None, None)
