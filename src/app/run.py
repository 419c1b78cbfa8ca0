"""One training run as one object: the checks and the resume lookup (nothing written yet), the parts built and
every piece of state restored, then the lock, the first writes and the loop.

    Run(cfg, user, stop, dist).train(bar)
        resolve()   fresh start or resume: which checkpoint, the merged config, what changed
        build()     data, model, task, optimizer... (app/build.py) and the Trainer, which registers every piece
                    of state with the checkpoint manager; the checkpoint restored into them
        locked()    rank 0 locks the run; the run's files are checked again, stale temporary files removed
        loop()      DDP/compile wrap, loggers, the config printed, Trainer.fit
"""
import contextlib
import errno
import json
import logging
import shlex
import sys
import threading
from pathlib import Path

import torch

from .. import data, models
from ..data import identity
from . import flags
from .build import build_all, wrap_model
from ..files import atomic, console
from ..files.lock import RunLock
from ..files.loggers import Loggers, TensorBoard
from ..files.paths import RunPaths
from ..loop import optim
from ..loop.progress import Progress, finished, stopped_early
from ..loop.trainer import Trainer
from ..runtime import record, seeding, slurm
from ..runtime.errors import TrainingError, UsageError
from ..runtime.signals import Stopped
from ..runtime.text import printable, redact, redact_values
from ..state import fileformat
from ..state.resume import find_resume_state, fingerprint, load_or_usage_error

log = logging.getLogger("train")


class Run(object):
    def __init__(self, cfg, user, stop, dist):
        self.cfg, self.user, self.stop, self.dist = cfg, user, stop, dist
        self.state = self.source = None  # the checkpoint resumed, and where it came from
        self.changes = []  # (key, old, new) of every config value the user changed on resume
        self.paths = self.parts = self.trainer = self.seen = self.init = None  # init: --init-from's checkpoint
        self.init_record = None  # what --init-from loaded (its checkpoint's "init" on a resume)
        self.loggers = Loggers([])
        self.hparams = {}
        self.begun = False
        self.unfinished = False  # the loop stopped on a signal before the run's end
        self.config_text = ""
        self.record = None  # the reproducibility record: one entry per session (runtime/record.py)
        self.owner = owner_of(cfg)  # whose checkpoints these are: a plain run, a sweep's trial, a reproduction
        self.data = None  # the fingerprint of the data read (data/identity.py), with the size of each split
        self.original_data = None  # --reproduce: the data fingerprint the reproduced run recorded

    @property
    def step0(self):
        return self.state["progress"]["step"] if self.state is not None else 0

    def train(self, bar):
        """The whole run; its exit code. Every check that can fail on bad input comes first, before any folder,
        lock or file is made."""
        if not self.resolve():
            return 0
        self.build()
        try:
            return self.locked(bar)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            raise TrainingError("cannot write %s (%s); free space there (or point --logs-dir / --models-dir "
                                "elsewhere), then --resume: the last good checkpoint is kept"
                                % (err.filename or "the run's files", err.strerror or err))

    def resolve(self):
        """Fresh start or resume, and the config that results; False when there is nothing left to do."""
        cfg, user = self.cfg, self.user
        explicit = None
        if cfg.resume not in (None, "latest", "auto"):
            explicit = load_or_usage_error(cfg.resume, "--resume")
            if "run_name" not in user:
                cfg.run_name = flags.check_run_name(explicit["config"]["run_name"], "the checkpoint's run name")
        if cfg.init_from:
            self.init = load_or_usage_error(cfg.init_from, "--init-from", full=False)
        self.paths = RunPaths(cfg)
        self.paths.check()
        self.seen = fingerprint(self.paths)
        self.state, self.source = find_resume_state(cfg, self.paths, explicit)
        if self.state is None:
            check_history(cfg, self.paths)
            return True
        if explicit is None:  # the run's own files (--resume PATH is an explicit choice: it continues as this run)
            check_owner(self.owner, self.state.get("owner"), cfg.run_name, self.source)
        self.cfg, self.changes = flags.merge_resumed(self.state["config"], cfg, user, self.source)
        self.init_record = self.state.get("init")
        progress = Progress.of(self.state["progress"])
        if finished(self.cfg, progress):
            if tested(self.paths, self.state) or not self.paths.best.is_file():  # tested, or nothing to test
                log.info("run %s already finished: %s", self.cfg.run_name, finished_hint(self.cfg, progress))
                return False
            log.info("run %s finished training at step %d, but its test did not complete (stopped or killed during "
                     "it): testing the best checkpoint now", self.cfg.run_name, progress.step)
        return True

    def build(self):
        """The parts and the Trainer, with the checkpoint's state restored into them (or --init-from's weights)."""
        cfg = self.cfg
        located = None
        if self.state is None and cfg.pretrained:  # no weights to start from: one line before the data is read
            located = models.hook(cfg, "locate")(cfg)
        _, splits, self.parts = build_all(cfg, self.dist, self.stop)
        self.data = identity.with_splits(splits.source, splits)
        data_changed = self.check_data()
        if self.state is None and cfg.init_from:  # before the Trainer: --ema averages from these weights
            self.init_record = init_weights(self.parts.model, self.init, cfg)
        if self.state is None and cfg.pretrained:
            self.init_record = pretrained_weights(self.parts.model, cfg, located)
        enabled = cfg.tensorboard and self.dist.main
        # resuming: drop events logged after the checkpoint; fresh: drop any left by a run that never saved
        self.loggers = Loggers([TensorBoard(self.paths.run_dir, enabled, self.step0 if self.state else -1)])
        self.hparams, self.config = flags.hparams(cfg), redact_values(flags.plain(cfg))  # as saved
        job = slurm.job()
        if job is not None:
            self.hparams.update(job.hparams())
        if self.dist.main:  # code, packages, hardware of this session, after those of the sessions before
            now = dict(record.collect(), step=self.step0, config_changes=[list(c) for c in self.changes],
                       data=self.data)
            if data_changed:
                now["data_changed"] = data_changed
            self.record = record.sessions(self.state.get("record") if self.state else None, now)
        self.trainer = Trainer(cfg, self.parts, self)
        if self.state is not None:
            self.restore(splits)
        if self.stop.requested:
            raise Stopped(self.stop.name)

    def check_data(self):
        """A resume on other data than the checkpoint's is one line (nothing written), unless --allow-data-change:
        then said, and the change returned for the record. --reproduce says whether the data is the run's."""
        if self.original_data is not None and self.data is not None:
            log.info("  data: %s", "the same files as the run's (%s)" % printable(self.data["digest"][:12])
                     if identity.same(self.original_data, self.data) else
                     "differs from the run's: %s" % printable(identity.describe_change(self.original_data, self.data)))
        saved = self.state.get("data") if self.state is not None else None
        if identity.same(saved, self.data):
            return None
        change = printable(identity.describe_change(saved, self.data))
        if not self.cfg.allow_data_change:
            raise UsageError("run '%s' was trained on other data than %s holds now (%s): its splits and results "
                             "would mix two data sets; nothing was changed. Continue knowingly with "
                             "--allow-data-change (the record notes it), or start another run with --run-name NAME"
                             % (self.cfg.run_name, self.cfg.dataset, change))
        log.warning("WARNING: the data changed since step %d (%s); continuing as --allow-data-change asks (noted in "
                    "the record)", self.step0, change)
        return change

    def restore(self, splits):
        sample = self.state["progress"]["sample_in_epoch"]
        if sample >= len(splits.train):  # the epoch would never end
            raise UsageError("checkpoint %s: unusable progress (sample %d of an epoch of %d training samples); "
                             "resume another checkpoint" % (self.source, sample, len(splits.train)))
        self.trainer.checkpoints.restore(self.state, self.source)  # random streams last
        optim.apply_config(self.cfg, self.parts.optimizer, self.parts.scheduler, self.parts.device,
                           self.parts.model)

    def locked(self, bar):
        """Rank 0 locks the run (in logs/ and models/), checks nothing changed since the first look, cleans up."""
        cfg, paths, dist = self.cfg, self.paths, self.dist
        paths.make()
        locks = (RunLock(paths.lock_file, cfg.run_name), RunLock(paths.models_lock_file, cfg.run_name))
        with contextlib.ExitStack() as held:
            if dist.main:
                for lock in locks:
                    held.enter_context(lock)
                if fingerprint(paths) != self.seen:
                    raise TrainingError("run '%s' changed while this trainer was starting (another trainer wrote "
                                        "it); run the command again" % cfg.run_name)
                if self.state is None:  # again under the lock: another run may have written there since the first look
                    check_history(cfg, paths)
                for folder, name in paths.temporary_files():
                    atomic.remove_stale_tmp(folder, name)
            dist.start(self.parts.device)
            try:
                dist.same(self.step0, "the step to resume from")
                return self.loop(bar)
            finally:
                dist.stop()

    def loop(self, bar):
        threading.excepthook = _quiet_io_errors
        cfg, dist = self.cfg, self.dist
        self.parts = self.trainer.parts = wrap_model(self.parts, cfg, dist)
        console.setup(self.paths.log_file, bar, dist.main)
        seeding.set_deterministic(cfg.deterministic)
        self.announce()
        mark = self.paths.started_mark()
        if mark is not None and dist.main:  # run.sh waits for it: the trainer runs, its checks passed
            atomic.write_text(mark, cfg.run_name + "\n")
        progress = console.ProgressBar(bar, self.parts.total_steps, self.step0)
        try:
            if self.state is None:
                self.trainer.rng.start()  # own dropout masks on ranks > 0, same weights
            code = self.trainer.fit(progress, test_only=self.state is not None and self.trainer.finished())
            self.unfinished = self.stop.requested and not self.trainer.finished()
            return code
        finally:
            self.trainer.close()
            progress.close()
            self.loggers.close()

    def announce(self):
        """The run's first lines: fresh or resumed, changes, learning rate, recipe, config, model and data."""
        cfg, parts, dist, step0 = self.cfg, self.parts, self.dist, self.step0
        if self.state is None:
            log.info("run %s: fresh start%s", cfg.run_name, " from the weights of %s" % cfg.init_from if cfg.init_from
                     else " from the pretrained weights of %s" % cfg.model if cfg.pretrained else "")
            if self.init_record is not None:
                log.info("%s", describe_init(self.init_record))
        else:
            p = self.state["progress"]
            log.info("run %s: resuming from %s at step %d (epoch %d, sample %d)", cfg.run_name, self.source,
                     p["step"], p["epoch"] + 1, p["sample_in_epoch"])
        job = slurm.job()
        if job is not None:
            log.info("%s%s; Slurm's warning signal (USR1 or USR2) saves and requeues", job.describe(),
                     ", task %d of %d" % (dist.rank, dist.world) if dist.enabled else "")
        for key, old, new in self.changes:
            log.info("config change on resume: %s %r -> %r", key, old, new)
        log.info("learning rate of the next step (%d): %.4g (--lr %g on the %s schedule%s, at step %d of %d)",
                 step0 + 1, parts.optimizer.param_groups[0]["lr"], cfg.lr, cfg.scheduler,
                 " after %d warmup steps" % cfg.warmup_steps if cfg.warmup_steps else "", step0, parts.total_steps)
        recipe = describe_recipe(cfg, dist)
        if recipe:
            log.info("recipe: %s", recipe)
        self.config_text = flags.to_yaml(cfg)
        log.info("config:\n%s", self.config_text.rstrip(), extra={"file_only": True})
        log.info("config: every value in %s (and train.log)", self.paths.config_file)
        n_params = sum(p.numel() for p in parts.eval_model.parameters())
        log.info("model %s: %s parameters on %s (%d CPU threads)%s; %s (%s): %d train / %d val / %d test samples; "
                 "%d steps in all", cfg.model, format(n_params, ","), parts.device, torch.get_num_threads(),
                 " x %d processes (global batch %d)" % (dist.world, cfg.batch_size) if dist.enabled else "",
                 cfg.dataset, cfg.task, len(parts.splits.train), len(parts.splits.val), len(parts.splits.test),
                 parts.total_steps)
        for line in describe_splits(cfg, parts.splits):
            log.info("%s", line)

    def begin_once(self):
        """The run's first writes to logs/<run>/, once its first step (or pending evaluation) has succeeded: a
        resume that fails before that (a bad flag value the checks cannot see) leaves the run as it was."""
        if self.begun:
            return
        self.begun = True
        if self.dist.main:
            atomic.write_text(self.paths.config_file, self.config_text)
            atomic.write_text(self.paths.record_file, json.dumps({"run": self.cfg.run_name, "sessions": self.record},
                                                                 indent=1, sort_keys=True) + "\n")
            diff = self.record[-1]["code"].get("diff")
            if diff:  # git apply logs/<run>/code.diff on its commit: this session's code
                atomic.write_text(self.paths.code_diff, diff)
        self.loggers.open()
        self.loggers.text("config", "```yaml\n%s```" % self.config_text, self.step0)
        self.loggers.text("command", " ".join(shlex.quote(redact(a)) for a in [sys.executable] + sys.argv),
                          self.step0)
        if self.changes:
            self.loggers.text("config_changes", "\n".join("- %s: %r -> %r" % c for c in self.changes), self.step0)


def owner_of(cfg):
    """Who a run's checkpoints belong to: a run started by hand, trial N of a sweep (its name and id: a sweep
    started again under the same name after its folder was removed is another sweep), or the reproduction of a
    run. Saved in every checkpoint ("owner"); a run resumes only its own (check_owner)."""
    if cfg.sweep_trial:
        name, sweep_id, n = cfg.sweep_trial.rsplit(":", 2)
        return {"kind": "trial", "sweep": name, "id": sweep_id, "trial": int(n)}
    if cfg.reproduce:
        return {"kind": "reproduce", "of": cfg.reproduce}
    return {"kind": "run"}


def describe_owner(owner):
    if owner["kind"] == "trial":
        return "trial %d of sweep %s" % (owner["trial"], printable(owner["sweep"]))
    if owner["kind"] == "reproduce":
        return "the reproduction of run %s" % printable(owner["of"])
    return "a run started by hand"


def check_owner(mine, saved, run_name, source):
    """A run, a sweep's trial or a reproduction resumes only its own checkpoints; anything else is one line before
    any write. A checkpoint from before owners were saved counts as a run started by hand (or, for a trial of a
    sweep that is older too, as that trial)."""
    if saved is None:
        saved = dict(mine) if mine["kind"] == "trial" and not mine["id"] else {"kind": "run"}
    if not isinstance(saved, dict) or saved.get("kind") not in ("run", "trial", "reproduce"):
        saved = {"kind": "run"}
    if saved == mine:
        return
    if mine["kind"] == "trial":
        hint = ("give the sweep another name (name: in its spec, or --run-name), or move that run's files away "
                "(models/*/%s.pt, models/tmp/%s, logs/%s)" % (run_name, run_name, run_name))
    elif mine["kind"] == "reproduce":
        hint = "reproduce it under another name with --run-name NAME"
    elif saved["kind"] == "trial":
        hint = ("continue the sweep with its own command (train.py --sweep SPEC), or train a copy of this trial with "
                "--resume %s --run-name NEW" % source)
    else:
        hint = "continue it with --reproduce %s, or train a copy with --resume %s --run-name NEW" % (
            printable(saved.get("of", "RUN")), source)
    try:
        theirs = describe_owner(saved)
    except (KeyError, TypeError, ValueError):
        theirs = "another run"
    raise UsageError("run '%s' has checkpoints of %s (%s), not of %s; nothing was changed: %s"
                     % (run_name, theirs, source, describe_owner(mine), hint))


def init_weights(model, state, cfg):
    """--init-from's evaluated weights into model (all of them, or with --init-partial those that fit); the record
    of what was loaded."""
    try:
        report = fileformat.load_model_weights(model, state, cfg.init_from, models.describe(cfg), evaluated=True,
                                               partial=cfg.init_partial)
    except UsageError as err:
        if cfg.init_partial:
            raise
        raise UsageError("%s; add --init-partial to load only the tensors that fit (the rest starts fresh)" % err)
    return dict(report, path=str(cfg.init_from), partial=cfg.init_partial)


def pretrained_weights(model, cfg, located=None):
    """--pretrained's weights (the file the run located, else found here) into model: those whose names and shapes
    fit (a head for another number of classes starts fresh); the record of what was loaded. Weights that fit
    nothing, or under half of the model, are one line: they are another architecture's."""
    state, where = models.hook(cfg, "pretrained")(cfg, model, located)
    what = models.describe(cfg)
    try:
        report = fileformat.fit_weights(model, state, what, partial=True)
    except UsageError as err:
        raise UsageError("--pretrained %s %s" % (where, err))
    total = len(report["loaded"]) + len(report["fresh"])
    if len(report["loaded"]) * 2 < total:
        raise UsageError("--pretrained %s fits only %d of the %d tensors of %s (not in the file: %s); give weights "
                         "of this architecture" % (where, len(report["loaded"]), total, what,
                                                   ", ".join(report["fresh"][:3])))
    return dict(report, path=str(where), partial=True, flag="--pretrained")


def describe_init(loaded):
    """--init-from X: loaded 6 of 8 tensors; fresh: ...; not in this model: ..."""
    total = len(loaded["loaded"]) + len(loaded["fresh"])
    parts = ["%s %s: loaded %d of the model's %d tensors" % (loaded.get("flag", "--init-from"), loaded["path"],
                                                              len(loaded["loaded"]), total)]
    for what, names in (("fresh", loaded["fresh"]), ("not in this model", loaded["unused"])):
        if names:
            parts.append("%s: %s%s" % (what, ", ".join(names[:8]), " and %d more" % (len(names) - 8)
                                       if len(names) > 8 else ""))
    return "; ".join(parts)


def finished_hint(cfg, progress):
    """Which limit a finished run reached, and the flag that lets it train longer (as it would work)."""
    step, epoch = progress.step, progress.epoch
    if stopped_early(cfg, progress):
        return ("it stopped early at step %d: %s did not improve by more than %g in %d evaluations. To train on, "
                "resume with a larger --early-stop (or --early-stop 0: off)" % (step, cfg.monitor.metric,
                                                                             cfg.early_stop_delta, cfg.early_stop))
    if cfg.max_steps and step >= cfg.max_steps and epoch < cfg.epochs:
        return ("it reached --max-steps %d (in epoch %d of --epochs %d). To train longer, resume with a higher "
                "--max-steps, or with --epochs N alone (that drops the step limit)" % (cfg.max_steps, epoch + 1,
                                                                                   cfg.epochs))
    return ("its --epochs %d are done (step %d). To train longer, resume with a higher --epochs"
            % (cfg.epochs, step))


SMALL_VAL = 200  # fewer validation samples than this: a score that moves in steps of 0.5 % or more is said


def describe_splits(cfg, splits):
    """The classes and how many samples of each every split holds (where the labels are at hand), and a word
    when validation is small: the best checkpoint and early stopping are chosen on its noisy score."""
    lines = []
    names = splits.classes
    if cfg.task == "classification" and names:
        counts = {name: data.class_counts(getattr(splits, name), len(names)) for name in ("train", "val", "test")}
        if all(c is not None for c in counts.values()):
            shown = ["%s %d/%d/%d" % ((printable(str(names[k])),) + tuple(counts[s][k] for s in ("train", "val",
                                                                                              "test")))
                     for k in range(min(len(names), 20))]
            lines.append("classes (train/val/test samples): %s%s" % (", ".join(shown), " and %d more" % (
                len(names) - 20) if len(names) > 20 else ""))
    n_val = len(splits.val)
    if n_val < SMALL_VAL:
        lines.append("note: validation holds %d samples (one is %.1f %% of its score), so the best checkpoint and "
                     "--early-stop follow a noisy score; a larger --val-split (say 0.2) steadies it"
                     % (n_val, 100.0 / max(1, n_val)))
    return lines


def describe_recipe(cfg, dist):
    """The training recipe's flags that are on, in one line."""
    parts = []
    if cfg.augment:
        parts.append("augment %s (training batches only)" % (cfg.augment,))
    if cfg.accum_steps > 1:
        parts.append("%d micro-batches of ~%d%s per step (global batch %d)" % (
            cfg.accum_steps, cfg.batch_size // (cfg.accum_steps * dist.world),
            " in each process" if dist.enabled else "", cfg.batch_size))
    if cfg.label_smoothing:
        parts.append("label smoothing %g" % cfg.label_smoothing)
    if cfg.freeze:
        parts.append("frozen: %s%s" % (cfg.freeze, " until step %d" % cfg.unfreeze_at if cfg.unfreeze_at else ""))
    if cfg.lr_groups:
        parts.append("lr x factor by name: %s" % (cfg.lr_groups,))
    if cfg.ema:
        parts.append("EMA of the weights, decay %g (val/*, best and test use it; val_raw/*: the raw weights)"
                     % cfg.ema)
    if cfg.early_stop:
        parts.append("early stop after %d evaluations without %s improving by more than %g" % (
            cfg.early_stop, cfg.monitor.metric, cfg.early_stop_delta))
    return "; ".join(parts)


def check_history(cfg, paths):
    """A fresh start writes into logs/<run>/ only when it holds no TensorBoard history, or the history of this run
    killed before its first checkpoint (its config.yaml names these --models-dir): never another run's."""
    if not list(paths.run_dir.glob("events.out.tfevents.*")):
        return
    try:
        import yaml
        saved = yaml.safe_load(paths.config_file.read_text())
        same = Path(saved["models_dir"]).resolve() == Path(cfg.models_dir).resolve()
    except Exception:  # missing, unreadable or foreign config.yaml: not this run's
        same = False
    if not same:
        raise UsageError("%s already holds the TensorBoard history of a run whose checkpoints are not in %s; resume "
                         "it with the --models-dir it used, or pick another --run-name (nothing was changed)"
                         % (paths.run_dir, cfg.models_dir))


def tested(paths, state):
    """Whether a finished run's final test results are on disk (logs/<run>/metrics.json of its last step)."""
    try:
        return json.loads(paths.metrics_file.read_text())["step"] == state["progress"]["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _quiet_io_errors(args, default=threading.excepthook):
    """A background thread (TensorBoard's writer) that dies of a full disk: one line, not a traceback; the loop
    reports the failure itself at its next write."""
    if issubclass(args.exc_type, OSError):
        log.warning("WARNING: %s stopped: %s", getattr(args.thread, "name", "a background thread"), args.exc_value)
    else:
        default(args)
