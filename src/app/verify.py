"""--verify-resume K: a self-test of exact resume for code this project did not write (your model, dataset,
flags). In a temporary folder it trains K steps in one go, and K steps with a stop after step K/2 (the same
path as a stop signal: save, exit) and a resume; then compares the weights, the optimizer state and every
logged train/ and val/ scalar. PASS, or the tensors and scalars that differ with the likely reason: when a
second uninterrupted run differs too, something draws random numbers that --seed does not fix; else some
state lives outside the checkpoint (a dataset or model that keeps its own random generator or counters).
"""
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from . import flags
from ..state import fileformat
from ..runtime.errors import TrainingError, UsageError
from ..files.paths import ROOT

log = logging.getLogger("train")
SHOWN = 5  # differences listed by name


def _config_file(cfg, folder):
    """The effective config as a --config file, made deterministic, plain and K steps long."""
    values = {k: v for k, v in flags.plain(cfg).items()
              if k not in flags.PER_INVOCATION and k not in ("logs_dir", "models_dir")}
    values.update(run_name="verify", deterministic=True, progress="plain", max_steps=cfg.verify_resume)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(values, default_flow_style=False))
    return path


def _train(cfg_file, folder, extra, what):
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(cfg_file), "--logs-dir", str(folder / "logs"),
           "--models-dir", str(folder / "models")] + extra
    res = subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    if res.returncode != 0:
        last = res.stdout.strip().splitlines()[-1:] or ["(no output)"]
        raise TrainingError("verify-resume: %s failed (exit %d): %s" % (what, res.returncode, last[0]))


def _outcome(folder):
    """(tensors by name, scalars by (tag, step)) at the end of a run."""
    state = fileformat.load(folder / "models" / "latest" / "verify.pt")
    tensors = {"model." + k: v for k, v in state["model"].items()}
    if state.get("ema"):
        tensors.update({"ema." + k: v for k, v in state["ema"]["weights"].items()})
    for index, slots in state["optimizer"]["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors["optimizer.%s.%s" % (index, key)] = value
    values = {}
    run_dir = folder / "logs" / "verify"
    if run_dir.is_dir():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith(("train/", "val/", "val_raw/")):
                values.update({(tag, e.step): e.value for e in acc.Scalars(tag)})
    return tensors, values


def differences(a, b):
    """What differs between two outcomes, as readable lines (an empty list: bit-identical)."""
    (ta, sa), (tb, sb) = a, b
    found = []
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            found.append("%s only in one run" % name)
        elif ta[name].shape != tb[name].shape or not torch.equal(ta[name], tb[name]):
            gap = (ta[name].double() - tb[name].double()).abs().max() if ta[name].shape == tb[name].shape else None
            found.append("%s (max difference %s)" % (name, "%.3g" % gap if gap is not None else "in shape"))
    for key in sorted(set(sa) | set(sb)):
        if sa.get(key) != sb.get(key):
            found.append("scalar %s at step %d (%s vs %s)" % (key[0], key[1], sa.get(key), sb.get(key)))
    return found


def run(cfg):
    import os
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise UsageError("--verify-resume runs in one process; start it with python train.py, not torchrun")
    work = Path(tempfile.mkdtemp(prefix="verify-resume-"))
    try:
        return _verify(cfg, work)
    finally:
        shutil.rmtree(str(work), ignore_errors=True)  # PASS, FAIL or error: no folder is left behind


def _verify(cfg, work):
    k = cfg.verify_resume
    stop = k // 2
    cfg_file = _config_file(cfg, work)
    log.info("verify-resume: %d steps of %s on %s in one go, and with a stop after step %d and a resume",
             k, cfg.model, cfg.dataset, stop)
    _train(cfg_file, work / "straight", [], "the uninterrupted run")
    _train(cfg_file, work / "resumed", ["--stop-after-step", str(stop)], "the run stopped at step %d" % stop)
    stopped_at = fileformat.load(work / "resumed" / "models" / "latest" / "verify.pt")["progress"]["step"]
    if stopped_at != stop:  # the run ended first (--epochs, --max-steps, --early-stop): no stop was tested
        raise UsageError("--verify-resume %d: these flags end the run at step %d, before the stop after step %d, so "
                         "no stop and resume would be tested; use --verify-resume %d or less (or more --epochs)"
                         % (k, stopped_at, stop, max(2, 2 * stopped_at - 2)))
    _train(cfg_file, work / "resumed", ["--resume"], "the resumed run")
    straight = _outcome(work / "straight")
    found = differences(straight, _outcome(work / "resumed"))
    if not found:
        log.info("verify-resume: PASS: after a stop at step %d and a resume, all %d tensors and %d scalars match the "
                 "uninterrupted run bit for bit", stop, len(straight[0]), len(straight[1]))
        return 0
    _train(cfg_file, work / "again", [], "a second uninterrupted run")
    if differences(straight, _outcome(work / "again")):
        reason = ("two uninterrupted runs differ too: something draws random numbers that --seed does not fix (a "
                  "dataset, model or augmentation with its own unseeded generator, or a nondeterministic kernel); "
                  "derive its randomness from the seed, epoch and sample index")
    else:
        reason = ("uninterrupted runs agree, so some state is not in the checkpoint: a dataset or model that keeps its "
                  "own random generator, counters or caches across steps; make it a pure function of the seed, "
                  "epoch and sample index, or save it with the model")
    more = " (and %d more)" % (len(found) - SHOWN) if len(found) > SHOWN else ""
    log.info("verify-resume: FAIL: after a stop at step %d and a resume, these differ from the uninterrupted run: "
             "%s%s. Likely reason: %s", stop, "; ".join(found[:SHOWN]), more, reason)
    return 1
