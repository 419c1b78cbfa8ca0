"""The checkpoint manager: built once with every stateful part of a run, registered by name; it saves them
(latest + models/tmp/<run>/step-N.pt pruned to --keep-last, and best; in the background) and restores them.
It knows no part's insides: a part is anything with state_dict() / load_state_dict(state), and its name is its
key in the checkpoint. Adding a piece of training state is: build it, register it (Trainer._register).

Registered by the Trainer (loop/trainer.py), in restore order (the random streams last: nothing may draw after
them):
    model, optimizer, scheduler, scaler (precision), meter, progress, best, last_eval, ema (with --ema)
    task, model_spec, config, versions, git_commit   fixed facts of the run (restoring them does nothing)
    rng_ranks (several processes), rng               Python, NumPy, torch CPU and CUDA generator states
The file format (digest record, safe loading, the checks of each entry's values) is fileformat.py's; the
background write writer.py's; which checkpoint to resume resume.py's.
"""
import logging

from . import fileformat
from .writer import CheckpointWriter
from ..runtime import compat, slurm
from ..runtime.errors import TrainingError, UsageError

log = logging.getLogger("train")


class Fixed(object):
    """A fact of the run saved in every checkpoint (its config, the model spec): restoring it changes nothing."""

    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return self.value

    def load_state_dict(self, state):
        pass


class Model(object):
    """The model's weights as a part: saved unwrapped (no DDP or compile prefixes); one line if they do not fit."""

    def __init__(self, model, what):
        self.model, self.what = model, what

    def state_dict(self):
        return compat.clean_state_dict(compat.unwrap_model(self.model).state_dict())

    def load_state_dict(self, state):
        fileformat.fit_weights(self.model, state, self.what)


class Optimizer(object):
    """An optimizer (or scheduler: anything torch saves) as a part; a state of another optimizer is one line."""

    def __init__(self, optimizer, name, what, save=None):
        self.optimizer, self.name, self.what, self.save = optimizer, name, what, save

    def state_dict(self):
        return self.save(self.optimizer) if self.save else self.optimizer.state_dict()

    def load_state_dict(self, state):
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError) as err:
            raise UsageError("%s state does not fit %s (%s)" % (self.name, self.what, err))


class CheckpointManager(object):
    """Writes a run's checkpoints (rank 0, in the background; the other ranks wait at a barrier for the copy) and
    restores them. before_save runs on every rank before the state is taken (the loop's finiteness check);
    before_write in the writer, before the files (TensorBoard's events reach the disk first)."""

    def __init__(self, cfg, paths, dist, before_save=None, before_write=None):
        self.cfg, self.paths, self.dist = cfg, paths, dist
        self.before_save, self.before_write = before_save, before_write
        self.parts, self.optional = {}, set()
        self.writer = CheckpointWriter(background=cfg.async_ckpt)
        self.saved_step = -1
        self.stalls = []  # seconds the loop stalled for each checkpoint of this session
        self.step_seconds = 0.0  # a recent step's time (the loop tells): a stop's save comes after one more step

    def register(self, name, part, optional=False):
        """Save part under `name` in every checkpoint and restore it from there, in the order registered. An
        optional part may be missing from a checkpoint (older ones lack it): it then gets load_state_dict(None)."""
        self.parts[name] = part
        if optional:
            self.optional.add(name)
        return part

    def required(self):
        return [name for name in self.parts if name not in self.optional]

    def state_dict(self):
        """The full training state; a collective under several processes (every rank calls it)."""
        return {name: part.state_dict() for name, part in self.parts.items()}

    def restore(self, state, source):
        """Every registered part from a checkpoint's state, in the order registered."""
        missing = [name for name in self.required() if name not in state]
        if missing:
            raise UsageError("checkpoint %s lacks %s; resume another checkpoint" % (source, ", ".join(missing)))
        for name, part in self.parts.items():
            try:
                part.load_state_dict(state.get(name))
            except UsageError as err:  # the part says what does not fit; this says where, and what to try
                hint = ("; if the run was started by an older version whose defaults differ, resume with the "
                        "sizes it had (--width N --depth N), or resume another checkpoint") if name == "model" else ""
                raise UsageError("checkpoint %s %s%s" % (source, err, hint))
        self.saved_step = state["progress"]["step"]

    def _submit(self, targets, message, prune=False):
        if self.before_save is not None:
            self.before_save()
        state = self.state_dict()
        if self.dist.main:
            first = not self.stalls

            def done(seconds, size):  # in the writer, once the files are in place
                if prune:
                    fileformat.prune(self.paths.tmp_dir, self.cfg.keep_last)
                log.info("%s", message)
                if first:
                    self._report_first_save(seconds, size)

            self._check_write(lambda: self.stalls.append(self.writer.submit(state, targets, done,
                                                                            self.before_write)))
        self.dist.barrier()

    def save(self, step, why):
        self._submit((self.paths.latest, self.paths.tmp_checkpoint(step)),
                     "saved checkpoint step %d (%s) -> %s" % (step, why, self.paths.latest), prune=True)
        self.saved_step = step

    def maybe_save(self, step):
        """The periodic checkpoint: every --ckpt-every steps."""
        every = self.cfg.ckpt_every
        if every and step % every == 0:
            self.save(step, "every %d steps" % every)

    def save_best(self, best):
        self._submit((self.paths.best,), "new best %s %.4f at step %d -> %s" % (
            best.metric, best.value, best.step, self.paths.best))

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
        if slurm.job() is not None:
            slurm.check_lead(self.cfg.slurm_lead, self.step_seconds, seconds)
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
