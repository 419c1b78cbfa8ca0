"""The one place that knows what a checkpoint holds, where its files live, how a run to resume is found, and
when files are written and pruned. Adding a piece of training state touches this file only: `state_dict`
(what goes in) and `restore_parts` / `restore_loop` (what comes out).

    model, optimizer, scheduler, scaler (precision), meter     state dicts
    progress    {epoch, sample_in_epoch, step, eval_pending, stale_evals, stale_ref, stale_ref_loss (early stop)}
    ema         {weights, updates, buffers_ranks}: the moving average of --ema (absent without it)
    best        {metric, mode, value, step, loss (val/loss: breaks ties)};  last_eval  the latest val/* values
    rng         Python, NumPy, torch CPU and CUDA generator states (rng_ranks: every rank's, under DDP)
    task        what the task needs to use the model elsewhere (a regression's target scale)
    model_spec  {model, input_shape, outputs, task, input_transform}: enough to rebuild the model and feed it raw
                inputs (src.models.from_checkpoint)
    config      the effective config;  versions, git_commit;  format
The file format (digest record, safe loading) is fileformat.py's; the background write checkpoint_writer.py's.
"""
import logging
from pathlib import Path

from .. import data
from ..loop import optim
from ..runtime import compat, seeding
from . import fileformat
from .writer import CheckpointWriter
from ..runtime.errors import TrainingError, UsageError

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
    state, path = fileformat.newest_valid(paths)
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


def describe_model(cfg):
    """How an error names the model a checkpoint must fit."""
    return "model '%s' on dataset '%s'" % (cfg.model, cfg.dataset)


def restore_parts(parts, state, source, cfg):
    """Weights, optimizer, scheduler and scaler from a checkpoint (before DDP wraps the model); the config's
    hyperparameters on top."""
    if state["progress"]["sample_in_epoch"] >= len(parts.splits.train):  # the epoch would never end
        raise UsageError("checkpoint %s: unusable progress (sample %d of an epoch of %d training samples); resume "
                         "another checkpoint" % (source, state["progress"]["sample_in_epoch"],
                                                 len(parts.splits.train)))
    fileformat.load_model_weights(parts.model, state, source, describe_model(cfg))
    try:
        parts.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as err:
        raise UsageError("checkpoint %s: optimizer state does not fit --optimizer %s (%s)" % (source, cfg.optimizer,
                                                                                            err))
    parts.scheduler.load_state_dict(state["scheduler"])
    optim.apply_config(cfg, parts.optimizer, parts.scheduler, parts.device)
    parts.precision.load_state_dict(state.get("scaler"))


def restore_loop(trainer, state, dist, cfg):
    """The loop's own state (meter, progress, best, last evaluation, EMA), then every rank's random streams: last,
    since nothing after it may draw random numbers before the next step."""
    trainer.meter.load_state_dict(state["meter"], dist.main)
    trainer.progress_state = dict(trainer.progress_state, **state["progress"])
    trainer.last_eval = dict(state.get("last_eval") or {})
    best = state["best"]
    if (best["metric"], best["mode"]) == (trainer.metric, trainer.mode):
        trainer.best = dict(best)
    else:
        log.info("--monitor changed from %s:%s to %s:%s; best is judged afresh", best["metric"], best["mode"],
                 trainer.metric, trainer.mode)
        trainer.progress_state.update(stale_evals=0, stale_ref=None, stale_ref_loss=None)
    if trainer.ema is not None:
        if state.get("ema"):
            trainer.ema.load_state_dict(state["ema"], dist)
        else:
            log.info("--ema %g starts now: the average begins at the weights of step %d", cfg.ema,
                     state["progress"]["step"])
    trainer.checkpoints.saved_step = trainer.progress_state["step"]
    ranks = state.get("rng_ranks") or [state["rng"]]
    if len(ranks) == dist.world:
        seeding.restore(ranks[dist.rank])
    elif dist.rank == 0:
        log.info("resuming %d processes from a run of %d: same data order; random streams of ranks > 0 restart",
                 dist.world, len(ranks))
        seeding.restore(state["rng"])
    else:
        seeding.seed_everything(seeding.rank_seed(cfg.seed, dist.rank) + state["progress"]["step"])


class CheckpointManager(object):
    """Writes a run's checkpoints: latest + models/tmp/<run>/step-N.pt (pruned to --keep-last) and best, in the
    background (rank 0; the other ranks wait at a barrier for the copy)."""

    def __init__(self, cfg, paths, board, dist):
        self.cfg, self.paths, self.board, self.dist = cfg, paths, board, dist
        self.writer = CheckpointWriter(background=cfg.async_ckpt)
        self.saved_step = -1
        self.stalls = []  # seconds the loop stalled for each checkpoint of this session
        self.provenance = {"versions": fileformat.versions(), "git_commit": fileformat.git_commit()}
        self.spec = None

    def state_dict(self, trainer):
        """The full training state; a collective under several processes (every rank calls it)."""
        rng = seeding.capture()
        parts = trainer.parts
        state = {
            "model": compat.clean_state_dict(compat.unwrap_model(trainer.model).state_dict()),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": compat.scheduler_state(parts.scheduler),
            "scaler": parts.precision.state_dict(),
            "meter": trainer.meter.global_state(self.dist),
            "progress": dict(trainer.progress_state),
            "best": dict(trainer.best),
            "last_eval": dict(trainer.last_eval),
            "rng": rng,
            "task": parts.task.state_dict(),
            "model_spec": self._model_spec(parts),
            "config": dict(vars(self.cfg)),
            "versions": self.provenance["versions"],
            "git_commit": self.provenance["git_commit"],
        }
        if trainer.ema is not None:
            state["ema"] = trainer.ema.state_dict(self.dist)
        if self.dist.enabled:
            state["rng_ranks"] = self.dist.gather(rng)
        return state

    def _model_spec(self, parts):
        """What rebuilds the model and feeds it raw inputs elsewhere (src.models.from_checkpoint); made once."""
        if self.spec is None:
            self.spec = {"model": self.cfg.model, "input_shape": list(parts.splits.input_shape),
                         "outputs": parts.splits.num_classes, "task": self.cfg.task}
            transform = data.input_transform(parts.splits.train)
            if transform is not None:
                self.spec["input_transform"] = transform
        return self.spec

    def _submit(self, trainer, targets, message, prune=False):
        trainer.ensure_finite(weights=True)
        state = self.state_dict(trainer)
        if self.dist.main:
            def before():  # in the writer: TensorBoard events up to this step reach the disk before the checkpoint
                self.board.flush(durable=True)

            first = not self.stalls

            def done(seconds, size):  # in the writer, once the files are in place
                if prune:
                    fileformat.prune(self.paths.tmp_dir, self.cfg.keep_last)
                log.info("%s", message)
                if first:
                    self._report_first_save(seconds, size)

            self._check_write(lambda: self.stalls.append(self.writer.submit(state, targets, done, before)))
        self.dist.barrier()

    def save(self, trainer, why):
        step = trainer.step
        self._submit(trainer, (self.paths.latest, self.paths.tmp_checkpoint(step)),
                     "saved checkpoint step %d (%s) -> %s" % (step, why, self.paths.latest), prune=True)
        self.saved_step = step

    def maybe_save(self, trainer):
        """The periodic checkpoint: every --ckpt-every steps."""
        every = self.cfg.ckpt_every
        if every and trainer.step % every == 0:
            self.save(trainer, "every %d steps" % every)

    def save_best(self, trainer):
        self._submit(trainer, (self.paths.best,), "new best %s %.4f at step %d -> %s" % (
            trainer.metric, trainer.best["value"], trainer.step, self.paths.best))

    def flush(self):
        """Wait until every submitted checkpoint is on disk (rank 0), then let every rank go on."""
        if self.dist.main:
            self._check_write(self.writer.wait)
        self.dist.barrier()

    def wait_quietly(self):
        """After an error: still let the last good checkpoint reach the disk."""
        if self.dist.main:
            try:
                self.writer.wait()
            except Exception:
                pass

    def _check_write(self, action):
        try:
            action()
        except OSError as err:
            raise TrainingError("writing a checkpoint failed (%s); the previous checkpoint is kept. Free space or fix "
                                "the folder, then --resume" % err)

    def _report_first_save(self, seconds, size):
        """Say whether a save fits the grace period of a stop signal, and whether models/tmp will fit its files."""
        grace = self.cfg.stop_grace
        if grace and seconds > 0.5 * grace:
            log.warning("WARNING: a checkpoint (%.0f MB) took %.1f s to write; a stop leaves %g s before a kill, so "
                        "the stop checkpoint may be cut short (the previous one is kept). Raise the grace period "
                        "(docker compose: stop_grace_period, then --stop-grace)", size / 1e6, seconds, grace)
        else:
            log.info("a checkpoint (%.0f MB) takes %.1f s to write: a stop fits in its %g s grace period",
                     size / 1e6, seconds, grace)
        try:
            free = fileformat.free_bytes(self.paths.tmp_dir)
        except OSError:
            return
        if self.cfg.keep_last * size > free:
            log.warning("WARNING: %s keeps %d checkpoints of %.0f MB, but only %.0f MB are free there; lower "
                        "--keep-last or free space", self.paths.tmp_dir, self.cfg.keep_last, size / 1e6, free / 1e6)

    def report_stalls(self):
        if self.stalls:
            ordered = sorted(self.stalls)
            log.info("checkpoints: %d written %s; the loop stalled %.1f ms median, %.1f ms max for them",
                     len(ordered), "in the background" if self.cfg.async_ckpt else "in the loop",
                     1000 * ordered[len(ordered) // 2], 1000 * ordered[-1])
