"""The training loop: steps, evaluation, a clean stop on signals, and at the end one evaluation of the best
checkpoint on the test split. The loop decides when; the task (src/tasks/) says what a step's loss and metrics
are, precision.py how the step runs in mixed precision, checkpoint_manager.py what a checkpoint holds and how
it is written, evaluation.py how a split is evaluated, data/loading.py in which order batches come.

Order inside each step (what makes resume exact): train (augment the batch, forward and backward over
--accum-steps micro-batches, clip, optimizer step, schedule, EMA) -> log window (every --log-every) ->
evaluate (every --eval-every, or at each epoch's end; early stopping counts here) -> best checkpoint ->
periodic checkpoint -> stop if asked. The data order is a pure function of (seed, epoch), augmentation of
(seed, epoch, sample), and the checkpoint records the samples consumed in the epoch, so a resumed run sees the
same batches in the same order, augmented alike; a stop always falls between optimizer steps.

Under several processes (distributed.py) every rank runs this same loop in lockstep: the collectives (log
window sums, evaluation sums, the stop flag, checkpoint state) happen at the same points on all ranks, and
only rank 0 writes files. Metrics stay on the device between logging steps (no host sync per step).
"""
import contextlib
import json
import logging
import math
import os
import time

import torch

from ..files import atomic
from . import meter
from ..runtime import compat
from ..state import fileformat
from ..state.manager import CheckpointManager
from ..app.flags import PER_INVOCATION, monitor
from ..augment import Augment
from ..data.loading import EpochBatches, make_loader, worker_died
from .ema import EMA
from ..runtime.errors import TrainingError
from .evaluation import evaluate, loader_for

log = logging.getLogger("train")


def finished(cfg, progress):
    """Whether a run at this progress has nothing left to do (all --epochs, or --max-steps, done, or stopped early)."""
    if progress.get("eval_pending"):
        return False
    return (progress["epoch"] >= cfg.epochs or bool(cfg.max_steps and progress["step"] >= cfg.max_steps)
            or stopped_early(cfg, progress))


def beats(value, ref, mode, by=0.0, loss=None, ref_loss=None):
    """Whether value is better than ref (None: nothing to beat) by more than `by`, for --monitor's mode. A tie
    (the same value: a metric saturated at 1.0 on a small split) goes to the lower val/loss, when both are known."""
    if ref is None:
        return True
    if value == ref and loss is not None and ref_loss is not None:
        return loss < ref_loss
    return value > ref + by if mode == "max" else value < ref - by


def stopped_early(cfg, progress):
    """Whether --early-stop ended the run: PATIENCE evaluations in a row without improvement (a resume with a
    larger patience, or 0, trains on)."""
    return bool(cfg.early_stop and progress.get("stale_evals", 0) >= cfg.early_stop)


class Trainer(object):
    def __init__(self, cfg, parts, paths, board, stop, progress, dist, begin=None):
        self.cfg, self.parts, self.paths, self.board, self.stop, self.progress, self.dist = (
            cfg, parts, paths, board, stop, progress, dist)
        self.begin = begin  # the run's first writes to logs/<run>/, done once a step or evaluation succeeded
        self.model, self.eval_model, self.optimizer, self.scheduler = (
            parts.model, parts.eval_model, parts.optimizer, parts.scheduler)
        self.precision, self.task, self.splits, self.device = parts.precision, parts.task, parts.splits, parts.device
        self.total_steps = parts.total_steps
        self.meter = meter.TrainMeter(self.device)
        self.metric, self.mode = monitor(cfg)
        self.augment = Augment(cfg.augment, cfg.seed)
        self.ema = EMA(parts.model, cfg.ema) if cfg.ema else None  # of the weights as built or restored
        # stale_evals: evaluations since --monitor last improved by more than --early-stop-delta (on stale_ref)
        self.progress_state = {"epoch": 0, "sample_in_epoch": 0, "step": 0, "eval_pending": False,
                               "stale_evals": 0, "stale_ref": None, "stale_ref_loss": None}
        self.best = {"metric": self.metric, "mode": self.mode, "value": None, "step": None, "loss": None}
        self.last_eval = {}
        self.checkpoints = CheckpointManager(cfg, paths, board, dist)
        self.train_batches = self.train_loader = self.eval_loader = None
        self.stalls_logged = 0  # how many checkpoint stalls TensorBoard has had
        self.graphs_tried = False  # --cuda-graphs: the capture happens at the first step
        self.between_steps = False  # True while fetching a batch or evaluating: the state is a whole step's

    @property
    def step(self):
        return self.progress_state["step"]

    def finished(self):
        return finished(self.cfg, self.progress_state)

    def ensure_finite(self, weights=False):
        """Raise (on every rank) before a non-finite loss, gradient or (when saving) weight can reach a log or a
        checkpoint."""
        bad = not self.meter.is_finite(self.dist)
        if weights and not bad:
            bad = not bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all())
        if bad:
            raise TrainingError(
                "non-finite loss, gradient or weights at or before step %d; stopped. The last good checkpoint is kept "
                "(%s). Lower --lr or set --grad-clip, then --resume" % (self.step, self.paths.latest))

    # ----- evaluation ----------------------------------------------------------------------------------------
    def _evaluate(self, model):
        return evaluate(model, self.eval_loader, self.task, self.precision, self.device, self.dist,
                        self.cfg.channels_last, self.stop)

    def run_eval(self):
        """Evaluate on val (the EMA weights with --ema, the raw ones as val_raw/* beside them), log, judge best and
        early stopping. False when interrupted (the eval is then redone after a resume)."""
        if self.eval_loader is None:
            self.eval_loader = loader_for(self.splits.val, self.cfg, self.device, self.dist)
        self.progress_state["eval_pending"] = True  # until it is done: a checkpoint saved meanwhile redoes it
        self.between_steps = True
        result = self._evaluate(self.ema.module if self.ema else self.eval_model)
        raw = self._evaluate(self.eval_model) if self.ema and result is not None else None
        self.between_steps = False
        if result is None or (self.ema and raw is None):
            return False
        self._begin_once()
        values, pictures = result
        raw = raw[0] if raw is not None else {}
        self.progress_state["eval_pending"] = False
        if not all(math.isfinite(v) for v in list(values.values()) + list(raw.values())):
            raise TrainingError("non-finite validation loss at step %d; stopped. The last good checkpoint is "
                                "kept (%s). Lower --lr or set --grad-clip" % (self.step, self.paths.latest))
        values = {"val/" + k: v for k, v in values.items()}
        self.last_eval = values
        self.board.scalars(values, self.step)
        if raw:
            raw = {"val_raw/" + k: v for k, v in raw.items()}
            self.board.scalars(raw, self.step)
        for tag, image in pictures.items():
            self.board.image("val/" + tag, image, self.step)
        value, loss = values[self.metric], values.get("val/loss")
        improved = beats(value, self.best["value"], self.mode, loss=loss, ref_loss=self.best.get("loss"))
        if improved:
            self.best.update(value=value, step=self.step, loss=loss)
        log.info("eval step %d: %s%s (best %s %.4f at step %d)", self.step, describe(values),
                 "; raw weights %s" % describe(raw) if raw else "", self.metric, self.best["value"],
                 self.best["step"])
        if self.cfg.early_stop:
            self._count_stale(value, loss)
        if improved:
            self.checkpoints.save_best(self)
        return True

    def _count_stale(self, value, loss):
        """Early stopping's counter: evaluations since --monitor last beat its reference by more than the delta
        (a tie broken by val/loss, as for the best checkpoint)."""
        p = self.progress_state
        if beats(value, p.get("stale_ref"), self.mode, self.cfg.early_stop_delta, loss, p.get("stale_ref_loss")):
            p["stale_ref"], p["stale_ref_loss"], p["stale_evals"] = value, loss, 0
        else:
            p["stale_evals"] = p.get("stale_evals", 0) + 1
        if stopped_early(self.cfg, p):
            log.info("early stop at step %d: %s has not improved by more than %g in %d evaluations (best %.4f at "
                     "step %d); the best checkpoint is tested next", self.step, self.metric,
                     self.cfg.early_stop_delta, p["stale_evals"], self.best["value"], self.best["step"])

    def final_test(self):
        """The best checkpoint, evaluated once on the test split (the first time anything reads it): test/*
        scalars, the hparams panel and logs/<run>/metrics.json."""
        best = fileformat.load(self.paths.best)
        model = self.ema.module if self.ema else self.eval_model
        fileformat.load_model_weights(model, best, self.paths.best, "this run's model", evaluated=True)
        loader = loader_for(self.splits.test, self.cfg, self.device, self.dist)
        values, _ = evaluate(model, loader, self.task, self.precision, self.device, self.dist,
                             self.cfg.channels_last)
        test = {"test/" + k: v for k, v in values.items()}
        report = metrics_report(self.cfg, self.last_eval, test, best, self.paths.best, self.step)
        if self.dist.main:
            atomic.write_text(self.paths.run_dir / "metrics.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
        self.board.scalars(test, self.step)
        log.info("test of the best checkpoint (step %d): %s -> %s", best["progress"]["step"], describe(test),
                 self.paths.run_dir / "metrics.json")
        return test

    # ----- training ------------------------------------------------------------------------------------------
    def _train_step(self, batch, indices, global_size, log_step):
        """One optimizer step on this rank's part of a global batch (indices: its samples' dataset indices)."""
        inputs, target = self.task.to_device(batch, self.device)
        if self.augment:
            inputs, target = self.augment(inputs, target, indices, self.progress_state["epoch"])
        if self.cfg.channels_last:
            inputs = compat.channels_last(inputs)
        n = self.cfg.accum_steps
        micro = list(zip(inputs.chunk(n), target.chunk(n) if target is not None else [None] * n))
        if self.cfg.cuda_graphs and not self.graphs_tried:  # once, on the first (micro-)batch of this session
            from . import cuda_graphs
            self.graphs_tried = True
            with self.precision.autocast():
                cuda_graphs.capture(compat.unwrap_model(self.model), micro[0][0])
        self.optimizer.zero_grad()
        for k, (x, t) in enumerate(micro):
            last = k == len(micro) - 1  # under DDP only the last backward all-reduces the summed gradients
            with contextlib.nullcontext() if last else compat.no_sync(self.model):
                with self.precision.autocast():
                    pred = self.task.prediction(self.model(x))
                    loss = self.task.loss(pred, t)
                # DDP averages gradients over ranks; weigh each (micro-)batch's mean by its share of the global
                # batch so that the sum is the gradient of the global batch's mean loss, whatever the sizes
                weight = len(x) * self.dist.world / float(global_size)
                self.precision.backward(loss * weight if weight != 1 else loss)
            self.meter.add(loss, self.task.train_sums(pred, t), len(x), step=last)
        self.precision.unscale(self.optimizer)
        grad_norm = None
        if self.cfg.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        elif log_step:
            grad_norm = compat.grad_norm(self.model.parameters())
        self.precision.step(self.optimizer)
        self.lr_used = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        if log_step:
            self.meter.set_grad_norm(grad_norm, must_be_finite=not self.precision.scaling)

    def _log_window(self, window):
        self.ensure_finite()
        values = self.meter.averages(self.dist, self.task)
        self.meter.reset()
        values["train/lr"] = self.lr_used
        elapsed = max(time.perf_counter() - window["start"] - window["excluded"], 1e-9)
        steps = max(window["steps"], 1)
        # z_perf/: TensorBoard sorts groups by name, so train/ and val/ come first
        perf = {"z_perf/samples_per_sec": window["samples"] / elapsed, "z_perf/step_time_ms": 1000 * elapsed / steps,
                "z_perf/data_wait_ms": 1000 * window["data_wait"] / steps}
        stalls = self.checkpoints.stalls
        if len(stalls) > self.stalls_logged:  # the worst checkpoint stall since the last logging step
            perf["z_perf/ckpt_stall_ms"] = 1000 * max(stalls[self.stalls_logged:])
            self.stalls_logged = len(stalls)
        if self.device.type == "cuda":
            perf["z_perf/gpu_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
            torch.cuda.reset_peak_memory_stats(self.device)
        self.board.scalars(values, self.step)
        self.board.scalars(perf, self.step)
        p = self.progress_state
        epoch = p["epoch"] + (1 if p["sample_in_epoch"] else 0)
        shown = " | ".join(("%s %.2f%%" % (k[6:], 100 * v)) if k == "train/acc" else "%s %.4f" % (k[6:], v)
                           for k, v in values.items() if k not in ("train/lr", "train/grad_norm"))
        log.info("step %d/%d | epoch %d/%d | %s | lr %.4g | %.0f samples/s", self.step, self.total_steps, epoch,
                 self.cfg.epochs, shown, values["train/lr"], perf["z_perf/samples_per_sec"],
                 extra={"step_line": True})
        self.progress.postfix = {k[6:]: "%.4f" % v for k, v in values.items()
                                 if k not in ("train/lr", "train/grad_norm")}
        window.update(start=time.perf_counter(), excluded=0.0, steps=0, samples=0, data_wait=0.0)

    def _begin_once(self):
        if self.begin is not None:
            begin, self.begin = self.begin, None
            begin()

    def fit(self, test_only=False):
        """Train to the end and test, or (test_only: a finished run resumed without its test results) test."""
        try:
            return self.finish() if test_only else self._fit()
        except KeyboardInterrupt:
            raise  # a second Ctrl-C leaves at once; a half-written temporary file is removed at the next start
        except BaseException as err:
            if worker_died(err):
                raise self._after_worker_death(err)
            self.checkpoints.wait_quietly()  # an error: still let the last good checkpoint reach the disk
            if self.dist.main and self.begin is None:  # the old events were trimmed (hparams too): write them again
                try:
                    self.board_hparams()
                except Exception:
                    pass
            raise

    def _after_worker_death(self, err):
        """A DataLoader worker died (killed, out of memory): stop with one line, and when the loop stood between two
        steps (a failed fetch changes nothing; an evaluation it cut is marked pending), save that state first."""
        what = str(err).strip().splitlines()[0][:200]
        # torch reports the death from its SIGCHLD handler, wherever the loop is: mid-step the state is half made;
        # under several processes the other ranks would wait forever in the save's collectives
        if self.dist.enabled or not self.between_steps:
            kept = self.checkpoints.saved_step
            return TrainingError("%s at step %d; %s. Run again with --resume (add --num-workers 0 if it happens "
                                 "again)" % (what, self.step, "the last checkpoint (step %d) is kept" % kept
                                             if kept >= 0 else "no checkpoint was saved yet"))
        try:
            self.checkpoints.save(self, "a data loader worker died")
            self.checkpoints.flush()
            saved = "saved step %d to %s" % (self.step, self.paths.latest)
        except Exception as failed:
            self.checkpoints.wait_quietly()
            saved = "could not save (%s); the last good checkpoint is kept" % str(failed).splitlines()[0][:120]
        return TrainingError("%s; %s. Run again with --resume (add --num-workers 0 if it happens again)"
                             % (what, saved))

    def _fit(self):
        cfg, p = self.cfg, self.progress_state
        n = len(self.splits.train)
        window = {"start": time.perf_counter(), "excluded": 0.0, "steps": 0, "samples": 0, "data_wait": 0.0}
        if p["eval_pending"] and not self.run_eval():
            return self.stopped()
        self.model.train()
        while not self.finished():
            if self.train_loader is None:  # one loader for the run: its workers (if any) persist across epochs
                self.train_batches = EpochBatches(n, cfg.batch_size, cfg.seed, dist=self.dist)
                self.train_loader = make_loader(self.splits.train, self.train_batches, cfg, self.device)
            batches = self.train_batches
            batches.set_epoch(p["epoch"], p["sample_in_epoch"])
            batch_iter = iter(self.train_loader)
            for i, size in enumerate(batches.sizes):
                if self.finished():
                    break
                step = p["step"] + 1
                log_step = step % cfg.log_every == 0 or step >= self.total_steps
                # a step between logging steps never waits for the GPU (--sync-check on CUDA: a wait raises)
                with compat.no_host_sync(cfg.sync_check and not log_step and self.device.type == "cuda"):
                    t0 = time.perf_counter()
                    self.between_steps = True  # a worker's death reported here finds the state of a whole step
                    batch = next(batch_iter)
                    self.between_steps = False
                    window["data_wait"] += time.perf_counter() - t0
                    self._train_step(batch, batches.tensors[i], size, log_step)
                self._begin_once()
                p["step"] += 1
                p["sample_in_epoch"] += size
                window["steps"] += 1
                window["samples"] += size
                epoch_end = p["sample_in_epoch"] >= batches.epoch_samples
                if epoch_end:
                    p["epoch"] += 1
                    p["sample_in_epoch"] = 0
                if p["step"] % cfg.log_every == 0:
                    self._log_window(window)
                self.progress.update()
                t1 = time.perf_counter()
                due_eval = (p["step"] % cfg.eval_every == 0) if cfg.eval_every else epoch_end
                if (due_eval or self.finished()) and not self.run_eval():
                    return self.stopped()
                if self.finished():
                    break
                self.checkpoints.maybe_save(self)
                window["excluded"] += time.perf_counter() - t1
                if cfg.stop_after_step and p["step"] == cfg.stop_after_step:
                    self.stop.request("--stop-after-step %d" % cfg.stop_after_step)
                if self.dist.any(self.stop.requested):
                    return self.stopped()
        if self.meter.steps > 0:  # the last, partial logging window
            self._log_window(window)
        self.checkpoints.save(self, "end of training")
        return self.finish()

    def finish(self):
        """The end of a run: the saved end-of-training checkpoint's best is tested. Also all that a resumed run
        does when training had ended but its test had not (a kill during the test)."""
        self.checkpoints.flush()
        self._begin_once()
        test = self.final_test()
        self.board_hparams(test)
        self.checkpoints.report_stalls()
        cfg, p = self.cfg, self.progress_state
        log.info("done%s: %d steps, %d epochs. Best %s %.4f at step %s -> %s",
                 " (stopped early)" if stopped_early(cfg, p) else "", p["step"], p["epoch"], self.metric,
                 self.best["value"] if self.best["value"] is not None else float("nan"), self.best["step"],
                 self.paths.best)
        return 0

    def stopped(self):
        log.info("stop requested: saving step %d", self.step)
        if self.checkpoints.saved_step != self.step or self.progress_state["eval_pending"]:
            self.checkpoints.save(self, "stop signal")
        self.checkpoints.flush()
        self.board_hparams()
        self.checkpoints.report_stalls()
        again = ("python -m src.launch %d" % self.dist.world) if self.dist.enabled else "python train.py"
        again = "%s --resume --run-name %s" % (again, self.cfg.run_name)
        prefix = os.environ.get("HOST_COMMAND_PREFIX")  # in the container: what the user types on the host
        if prefix:
            again = "./run.sh --run-name %s (or: %s %s)" % (self.cfg.run_name, prefix, again)
        log.info("stopped at step %d; continue with: %s", self.step, again)
        return 0

    def board_hparams(self, test=None):
        hp = {k: v for k, v in vars(self.cfg).items()
              if k not in PER_INVOCATION and not k.endswith("_dir") and k not in ("progress", "tensorboard")}
        self.board.hparams(hp, dict(self.last_eval, **(test or {})))
        self.board.flush(durable=True)


def describe(values):
    """val/loss 0.1234, val/acc 98.50% ...: accuracies as percentages, the rest with 4 decimals."""
    return ", ".join(("%s %.2f%%" % (k, 100 * v)) if k.endswith("/acc") else "%s %.4f" % (k, v)
                     for k, v in values.items())


def metrics_report(cfg, val, test, best_state, best_path, step):
    """What logs/<run>/metrics.json holds: the final val metrics, the best checkpoint's test metrics, where it is."""
    return {"run": cfg.run_name, "task": cfg.task, "dataset": cfg.dataset, "model": cfg.model, "step": step,
            "val": val, "test": test,
            "best": {"step": best_state["progress"]["step"], "path": str(best_path), "monitor": cfg.monitor,
                     "value": best_state["best"]["value"], "val": best_state.get("last_eval") or {}}}
