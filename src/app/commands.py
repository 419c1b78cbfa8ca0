"""What train.py starts: one command per invocation (train, --evaluate, --predict, --prepare-data,
--verify-resume, --doctor), given the parsed config."""
import json
import logging
import os
import sys
from pathlib import Path

import torch

from .. import models
from . import flags
from .build import build_all, build_data
from .run import Run
from ..files import atomic, console
from ..files.paths import RunPaths, check_folder
from ..loop.evaluation import evaluate, loader_for
from ..runtime import seeding, slurm
from ..runtime.distributed import Dist
from ..runtime.errors import UsageError
from ..runtime.signals import Stopped
from ..state import fileformat
from ..state.resume import load_or_usage_error

log = logging.getLogger("train")


def main(cfg, user, stop):
    """Run the command the flags ask for; its exit code."""
    dist = Dist()
    bar = console.use_bar(cfg.progress) and dist.main
    console.setup(None, bar, dist.main)
    if cfg.doctor:
        from . import doctor
        return doctor.run()
    if cfg.prepare_data:
        return prepare_data(cfg, stop)
    if cfg.verify_resume:
        from . import verify
        return verify.run(cfg)
    if cfg.evaluate:
        return at_once(stop, "--evaluate", lambda: evaluate_checkpoint(cfg, user, stop, dist))
    if cfg.predict:
        from . import predict
        return at_once(stop, "--predict", lambda: predict.run(cfg))
    if cfg.sweep or cfg.seeds:
        from . import sweep
        return sweep.run(cfg, user, stop)
    if cfg.parallel != 1 or cfg.retry_failed:
        raise UsageError("--parallel and --retry-failed apply to sweeps: add --sweep SPEC.yaml or --seeds S1,S2,...")
    then, original_data = None, None
    if cfg.reproduce:
        from . import reproduce
        cfg, user, then, original_data = reproduce.prepare(cfg, user)
    run = Run(cfg, user, stop, dist)
    run.original_data = original_data
    code = train(run, bar)
    return then(code) if then else code


def at_once(stop, what, command):
    """A command that does not train ends at once on a stop signal: its files are written whole or not at all
    (atomic), so nothing partial is left; the exit code says it did not finish (128 + the signal's number)."""
    try:
        with stop.interrupting():
            return command()
    except Stopped as stopped:
        log.warning("%s stopped by %s; nothing was written (run the same command again)", what, stopped.name)
        return stopped.exit_code


def train(run, bar):
    """Train; after Slurm's warning signal (the run saved and stopped short of its end) requeue the job."""
    job, stop = slurm.job(), run.stop
    try:
        code = run.train(bar)
    except Stopped:
        if not (stop.warning and job):
            raise
        log.info("stopped by %s before training started; nothing was saved", stop.name)
        code, run.unfinished = 0, True
    if code == 0 and stop.warning and job is not None and run.unfinished:
        if os.environ.get("TRAIN_REQUEUE") == "parent":  # a sweep's trial: the sweep requeues its job once
            return 0
        return slurm.requeue(job, stop) if run.dist.main else 0
    return code


def prepare_data(cfg, stop):
    """--prepare-data: the dataset downloaded and verified; with --pretrained also the weights, into the hub's cache
    (a login node with internet fills it for compute nodes without)."""
    if cfg.pretrained:
        with stop.interrupting():
            path, where = models.hook(cfg, "locate")(cfg)
        log.info("pretrained weights of %s ready: %s", cfg.model, where)
    splits = build_data(cfg, stop)
    log.info("dataset %s ready in %s: %d train, %d val and %d test samples of shape %s", cfg.dataset, cfg.data_dir,
             len(splits.train), len(splits.val), len(splits.test), "x".join(map(str, splits.input_shape)))
    return 0


def evaluate_checkpoint(cfg, user, stop, dist):
    """--evaluate [PATH] --split val|test: a checkpoint's model on one split, with the checkpoint's own config (this
    checkout's folders); prints the metrics as JSON and writes them to logs/<run>/evaluate-<split>.json. The same
    code as the end of training, so the test metrics of metrics.json come out exactly again."""
    if cfg.evaluate == "best":
        path = RunPaths(cfg).best
        if not path.is_file():
            raise UsageError("run '%s' has no best checkpoint (%s); train it first, or give --evaluate PATH"
                             % (cfg.run_name, path))
    else:
        path = Path(cfg.evaluate)
    state = load_or_usage_error(path, "--evaluate")
    if "run_name" not in user:
        user = set(user) | {"run_name"}
        cfg.run_name = flags.check_run_name(state["config"]["run_name"], "the checkpoint's run name")
    cfg, _ = flags.merge_resumed(state["config"], cfg, user, path)
    paths = RunPaths(cfg)
    check_folder(cfg.logs_dir, "--logs-dir")
    device, splits, parts = build_all(cfg, dist, stop)
    fileformat.load_model_weights(parts.model, state, path, models.describe(cfg), evaluated=True)
    seeding.set_deterministic(cfg.deterministic)
    model = torch.compile(parts.model) if cfg.compile else parts.model
    dist.start(device)
    try:
        loader = loader_for(getattr(splits, cfg.split), cfg, device, dist)
        values, _ = evaluate(model, loader, parts.task, parts.precision, device, dist=dist,
                             channels_last=cfg.channels_last)
    finally:
        dist.stop()
    report = {"run": cfg.run_name, "checkpoint": str(path), "step": state["progress"]["step"], "split": cfg.split,
              cfg.split: {"%s/%s" % (cfg.split, k): v for k, v in values.items()}}
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    if dist.main:
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(paths.evaluate_file(cfg.split), text)
        sys.stdout.write(text)
    return 0
