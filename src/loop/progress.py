"""Where a run stands, as small dataclasses that save and restore themselves (registered with the checkpoint
manager by name: "progress", "best", "last_eval"), and the two questions asked of them: is the run finished,
did it stop early. Their checkpoint entries are plain dicts of the fields below (unchanged since format 1)."""
import logging
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, Optional

log = logging.getLogger("train")


class _Plain(object):
    """state_dict: every field (but callbacks); load_state_dict: the fields a checkpoint has, defaults for the rest
    (older checkpoints lack the newer fields; None, an optional part that an older checkpoint lacks: kept as built)."""

    def state_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("saved", True)}

    def load_state_dict(self, state):
        if state is None:
            return
        for f in fields(self):
            if f.metadata.get("saved", True):
                setattr(self, f.name, state.get(f.name, f.default))


@dataclass
class Progress(_Plain):
    """The position of the loop: optimizer steps done, the epoch and the samples consumed in it (so a resume
    continues the epoch's data order), an evaluation cut short (redone on resume), and early stopping's count
    of evaluations since --monitor last improved by more than --early-stop-delta on stale_ref (ties: on
    stale_ref_loss, the val/loss that went with it)."""
    epoch: int = 0
    sample_in_epoch: int = 0
    step: int = 0
    eval_pending: bool = False
    stale_evals: int = 0
    stale_ref: Optional[float] = None
    stale_ref_loss: Optional[float] = None

    @classmethod
    def of(cls, state):
        """The Progress saved in a checkpoint's entry."""
        progress = cls()
        progress.load_state_dict(state)
        return progress

    def reset_stale(self):
        self.stale_evals, self.stale_ref, self.stale_ref_loss = 0, None, None


@dataclass
class Best(_Plain):
    """The best validation value of --monitor so far, its step and val/loss (which breaks ties). A checkpoint
    judged by another metric or mode is judged afresh (on_change: early stopping's count restarts too)."""
    metric: str = "val/loss"
    mode: str = "min"
    value: Optional[float] = None
    step: Optional[int] = None
    loss: Optional[float] = None
    on_change: Optional[Callable[[], None]] = field(default=None, metadata={"saved": False})

    @classmethod
    def of_monitor(cls, monitor, on_change=None):
        """Best of --monitor (its .metric and .mode)."""
        return cls(metric=monitor.metric, mode=monitor.mode, on_change=on_change)

    def load_state_dict(self, state):
        if state is None or (state["metric"], state["mode"]) == (self.metric, self.mode):
            return _Plain.load_state_dict(self, state)
        log.info("--monitor changed from %s:%s to %s:%s; best is judged afresh", state["metric"], state["mode"],
                 self.metric, self.mode)
        if self.on_change is not None:
            self.on_change()

    def beats(self, value, ref, by=0.0, loss=None, ref_loss=None):
        """Whether value is better than ref (None: nothing to beat) by more than `by` in this mode. A tie (the same
        value: a metric saturated at 1.0 on a small split) goes to the lower val/loss, when both are known."""
        if ref is None:
            return True
        if value == ref and loss is not None and ref_loss is not None:
            return loss < ref_loss
        return value > ref + by if self.mode == "max" else value < ref - by

    def update(self, value, step, loss):
        """Whether (value, loss) at step is the new best; if so it is recorded."""
        if not self.beats(value, self.value, loss=loss, ref_loss=self.loss):
            return False
        self.value, self.step, self.loss = value, step, loss
        return True


@dataclass
class LastEval(_Plain):
    """The latest val/* values (logged again with the hparams, and in metrics.json)."""
    values: Dict[str, float] = field(default_factory=dict)

    def state_dict(self):
        return dict(self.values)

    def load_state_dict(self, state):
        self.values = dict(state or {})


def stopped_early(cfg, progress):
    """Whether --early-stop ended the run: PATIENCE evaluations in a row without improvement (a resume with a
    larger patience, or 0, trains on)."""
    return bool(cfg.early_stop and progress.stale_evals >= cfg.early_stop)


def finished(cfg, progress):
    """Whether a run at this progress has nothing left to do (all --epochs, or --max-steps, done, or stopped early)."""
    if progress.eval_pending:
        return False
    return (progress.epoch >= cfg.epochs or bool(cfg.max_steps and progress.step >= cfg.max_steps)
            or stopped_early(cfg, progress))


__all__ = ["Best", "LastEval", "Progress", "finished", "stopped_early"]
