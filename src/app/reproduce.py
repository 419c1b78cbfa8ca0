"""--reproduce RUN: train again with the config RUN recorded, as a new run (RUN-reproduce, or --run-name), after
saying what differs between RUN's code and environment (logs/RUN/record.json) and this checkout's; at the end,
RUN's test metrics beside the new ones.

    python train.py --reproduce digits-cnn                 # -> run digits-cnn-reproduce
    python train.py --reproduce digits-cnn --device cpu    # flags given here win over the recorded ones

The new run is an ordinary one (--resume auto: the same command again continues it). Same code, same packages,
same hardware and --deterministic give the same weights and metrics bit for bit."""
import json
import logging
import re
from types import SimpleNamespace

import yaml

from . import flags
from ..files.paths import RunPaths
from ..runtime import record
from ..runtime.errors import UsageError
from ..runtime.text import printable
from ..state.resume import load_or_usage_error

log = logging.getLogger("train")


def _recorded(paths):
    """(config, sessions of the record or None, where the config came from) of a run."""
    state, source = None, None
    for path in (paths.latest, paths.best):
        if path.is_file():
            state, source = load_or_usage_error(path, "--reproduce"), path
            break
    sessions = None
    try:
        sessions = json.loads(paths.record_file.read_text())["sessions"]
    except (OSError, ValueError, KeyError, TypeError):
        sessions = state.get("record") if state is not None else None
    if state is not None:
        return state["config"], sessions, source
    try:
        return yaml.safe_load(paths.config_file.read_text()), sessions, paths.config_file
    except (OSError, yaml.YAMLError):
        raise UsageError("run '%s' has no checkpoint and no config.yaml in %s and %s; give the name of a run that "
                         "was trained here (ls %s)" % (paths.name, paths.latest.parent, paths.run_dir,
                                                      paths.logs_dir))


def prepare(cfg, user):
    """(config, user keys, then, data) of the reproduction: `then(code)` reports the metrics once it trained; data:
    the fingerprint of the data the run recorded (the new run says whether its data is the same)."""
    name = flags.check_run_name(cfg.reproduce, "--reproduce")
    old = RunPaths(SimpleNamespace(run_name=name, logs_dir=cfg.logs_dir, models_dir=cfg.models_dir,
                                   data_dir=cfg.data_dir))
    config, sessions, source = _recorded(old)
    keep = {k: v for k, v in (config or {}).items() if k in flags.BY_DEST and k not in flags.PER_INVOCATION
            and k not in flags.LOCAL and k != "run_name"}
    own = set(user) - {"reproduce"}
    new_cfg, _ = flags.merge_resumed(keep, cfg, own - {"run_name"}, source)
    new_cfg.run_name = cfg.run_name if "run_name" in own else flags.check_run_name(name + "-reproduce")
    new_cfg.resume = "auto"
    given = sorted(k for k in own if k not in flags.LOCAL + ("run_name", "progress", "tensorboard"))
    log.info("reproducing run %s with the config of %s as run %s%s", name, source, new_cfg.run_name,
             "; flags given here: %s" % ", ".join("--" + k.replace("_", "-") for k in given) if given else "")
    if not sessions:
        log.info("run %s has no record of its code and environment (trained before records existed): only its "
                 "config is known", name)
    else:
        try:
            _say_differences(name, old, sessions)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):  # a hand-edited record
            log.info("  run %s's record of its code and environment is malformed: only its config is used", name)

    def then(code):
        if code == 0:
            report(old.metrics_file, RunPaths(new_cfg).metrics_file)
        return code
    data = None
    try:
        data = sessions[-1].get("data") if sessions else None
        data = data if isinstance(data, dict) and isinstance(data.get("digest"), str) else None
    except (AttributeError, IndexError, KeyError, TypeError):
        pass
    return new_cfg, own | set(keep), then, data


def _say_differences(name, old, sessions):
    """What differs from the run's last session, and how to get its code. Every string from the record is printed
    escaped (a forged record cannot reach the terminal with control characters), and a commit that is not hex is
    never put into the advice line (it could be a second command)."""
    last = sessions[-1]
    for line in record.differences(last, record.collect()):
        log.info("  %s", printable(line, 2000))
    if len({s.get("code", {}).get("source_sha256") for s in sessions}) > 1:
        log.info("  note: run %s was resumed with other code than it started with (%d sessions; each is in %s)",
                 name, len(sessions), old.record_file)
    moved = ["%s %r -> %r at step %s" % (c[0], c[1], c[2], s.get("step")) for s in sessions
             for c in s.get("config_changes") or []]
    if moved:
        log.info("  note: run %s changed its config when resumed (%s): trained in one go with the final config, "
                 "its path differs", name, printable("; ".join(moved), 2000))
    commit = last.get("code", {}).get("commit")
    if isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{7,64}", commit):
        log.info("  the run's own code: git checkout %s%s", commit, " && git apply %s" % old.code_diff
                 if last["code"].get("diff") else "")
    elif commit:
        log.info("  the run's record names no valid git commit (%s): its code cannot be checked out",
                 printable(commit, 80))


def report(old_file, new_file):
    """Each test metric of the original run beside the reproduction's."""
    try:
        old = json.loads(old_file.read_text())["test"]
        new = json.loads(new_file.read_text())["test"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for key in sorted(set(old) & set(new)):
        if key.count("/") < 2:
            same = "the same" if old[key] == new[key] else "differs by %.3g" % (new[key] - old[key])
            log.info("%s: original %.6g, reproduced %.6g (%s)", key, old[key], new[key], same)
