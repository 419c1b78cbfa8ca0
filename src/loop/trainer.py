"""The training loop: steps, evaluation, a clean stop on signals, and at the end one evaluation of the best
checkpoint on the test split. The loop decides when; the task (src/tasks/) says what a step's loss and metrics
are, precision.py how the step runs in mixed precision, state/manager.py how the parts it registers are saved and
restored, evaluation.py how a split is evaluated, data/loading.py in which order batches come.

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
import re
import time

import torch

from . import meter
from .ema import EMA
from .evaluation import evaluate, loader_for
from .progress import Best, LastEval, Progress, finished, stopped_early
from .. import models
from ..augment import Augment
from ..data import input_transform
from ..data.loading import EpochBatches, check_workers, make_loader, worker_died
from ..files import atomic
from ..runtime import compat, slurm
from ..runtime.distributed import peer_lost
from ..runtime.errors import TrainingError, UsageError
from ..runtime.seeding import RandomStreams
from ..state import fileformat
from ..state.manager import CheckpointManager, Fixed, Model, Optimizer

log = logging.getLogger("train")


class Trainer(object):
    """The loop of one run. `run` is what the loop reports to and stops by (app/run.py's Run): its paths, loggers,
    dist, stop flag, hparams (for the hparams panel) and begin (the run's first writes, once a step succeeded)."""

    def __init__(self, cfg, parts, run):
        self.cfg, self.parts, self.run = cfg, parts, run
        self.paths, self.loggers, self.stop, self.dist = run.paths, run.loggers, run.stop, run.dist
        self.task, self.splits, self.device = parts.task, parts.splits, parts.device
        self.meter = meter.TrainMeter(self.device, self.dist)
        self.progress = Progress()
        self.best = Best.of_monitor(cfg.monitor, on_change=self.progress.reset_stale)
        self.last_eval = LastEval()
        self.said_nothing = False  # the "learned nothing" line is said once a session
        self.augment = Augment(cfg.augment, cfg.seed)
        self.ema = EMA(parts.model, cfg.ema, self.dist) if cfg.ema else None  # of the weights as built
        self.rng = RandomStreams(self.dist, cfg.seed, self.progress)
        self.checkpoints = CheckpointManager(cfg, self.paths, self.dist, before_save=lambda: self.ensure_finite(True),
                                             before_write=lambda: self.loggers.flush(durable=True))
        self._register(cfg, parts)
        self.bar = None  # the console's progress (a bar or nothing), given by fit
        self.train_batches = self.train_loader = self.eval_loader = None
        self.stalls_logged = 0  # how many checkpoint stalls TensorBoard has had
        self.graphs_tried = False  # --cuda-graphs: the capture happens at the first step
        self.between_steps = False  # True while fetching a batch or evaluating: the state is a whole step's

    def _register(self, cfg, parts):
        """Every piece of training state, by its name in the checkpoint, in restore order (random streams last)."""
        add = self.checkpoints.register
        add("model", Model(parts.model, models.describe(cfg)))
        add("optimizer", Optimizer(parts.optimizer, "optimizer", "--optimizer %s" % cfg.optimizer))
        add("scheduler", Optimizer(parts.scheduler, "scheduler", "--scheduler %s" % cfg.scheduler,
                                   save=compat.scheduler_state))
        add("scaler", parts.precision, optional=True)
        add("meter", self.meter)
        add("progress", self.progress)
        add("best", self.best)
        add("last_eval", self.last_eval, optional=True)
        if self.ema is not None:
            add("ema", self.ema, optional=True)
        spec = {"model": cfg.model, "input_shape": list(parts.splits.input_shape),
                "outputs": parts.splits.num_classes, "task": cfg.task}
        if parts.splits.classes:
            spec["classes"] = [str(c) for c in parts.splits.classes]
        if parts.splits.encoding:  # how a table's raw rows become inputs (csv:PATH): for predictions elsewhere
            spec["encoding"] = parts.splits.encoding
        transform = input_transform(parts.splits.train)
        if transform is not None:
            spec["input_transform"] = transform
        for name, value in (("task", parts.task.state_dict()), ("model_spec", spec), ("config", self.run.config),
                            ("versions", fileformat.versions()), ("git_commit", fileformat.git_commit())):
            add(name, Fixed(value), optional=True)
        add("owner", Fixed(self.run.owner), optional=True)  # a plain run, a sweep's trial, a reproduction
        add("data", Fixed(self.run.data), optional=True)  # the fingerprint of the files read, and the split sizes
        if self.run.record is not None:  # code, packages, hardware of each session (runtime/record.py)
            add("record", Fixed(self.run.record), optional=True)
        if self.run.init_record is not None:  # what --init-from loaded, carried by every checkpoint of the run
            add("init", Fixed(self.run.init_record), optional=True)
        if self.dist.enabled:  # every rank's streams (one process: "rng" holds them)
            add("rng_ranks", self.rng.every_rank, optional=True)
        add("rng", self.rng)

    @property
    def step(self):
        return self.progress.step

    @property
    def model(self):  # what trains: DDP and/or compiled once the run wrapped it
        return self.parts.model

    def finished(self):
        return finished(self.cfg, self.progress)

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
        return evaluate(model, self.eval_loader, self.task, self.parts.precision, self.device, dist=self.dist,
                        channels_last=self.cfg.channels_last, stop=self.stop)

    def run_eval(self):
        """Evaluate on val (the EMA weights with --ema, the raw ones as val_raw/* beside them), log, judge best and
        early stopping. False when interrupted (the eval is then redone after a resume)."""
        if self.eval_loader is None:
            self.eval_loader = loader_for(self.splits.val, self.cfg, self.device, self.dist)
        self.progress.eval_pending = True  # until it is done: a checkpoint saved meanwhile redoes it
        self.between_steps = True
        result = self._evaluate(self.ema.module if self.ema else self.parts.eval_model)
        raw = self._evaluate(self.parts.eval_model) if self.ema and result is not None else None
        self.between_steps = False
        if result is None or (self.ema and raw is None):
            return False
        self.run.begin_once()
        values, pictures = result
        raw = raw[0] if raw is not None else {}
        self.progress.eval_pending = False
        if not all(math.isfinite(v) for v in list(values.values()) + list(raw.values())):
            raise TrainingError("non-finite validation loss at step %d; stopped. The last good checkpoint is "
                                "kept (%s). Lower --lr or set --grad-clip" % (self.step, self.paths.latest))
        self._log_eval(values, raw, pictures)
        return True

    def _log_eval(self, values, raw, pictures):
        values = {"val/" + k: v for k, v in values.items()}
        self.last_eval.values = values
        self.loggers.scalars(values, self.step)
        if raw:
            raw = {"val_raw/" + k: v for k, v in raw.items()}
            self.loggers.scalars(raw, self.step)
        for tag, image in pictures.items():
            self.loggers.image("val/" + tag, image, self.step)
        best = self.best
        value, loss = values[best.metric], values.get("val/loss")
        improved = best.update(value, self.step, loss)
        log.info("eval step %d: %s%s (best %s %.4f at step %d)", self.step, describe(values),
                 "; raw weights %s" % describe(raw) if raw else "", best.metric, best.value, best.step)
        if not self.said_nothing and self.step * 4 >= self.parts.total_steps:  # once, past a quarter of the run
            said = self.task.learned_nothing({k[4:]: v for k, v in values.items()})
            if said:
                self.said_nothing = True
                log.warning("WARNING: %s", said)
        if self.cfg.early_stop:
            self._count_stale(value, loss)
        if improved:
            self.checkpoints.save_best(best)

    def _count_stale(self, value, loss):
        """Early stopping's counter: evaluations since --monitor last beat its reference by more than the delta
        (a tie broken by val/loss, as for the best checkpoint)."""
        p = self.progress
        if self.best.beats(value, p.stale_ref, self.cfg.early_stop_delta, loss, p.stale_ref_loss):
            p.stale_ref, p.stale_ref_loss, p.stale_evals = value, loss, 0
        else:
            p.stale_evals += 1
        if stopped_early(self.cfg, p):
            log.info("early stop at step %d: %s has not improved by more than %g in %d evaluations (best %.4f at "
                     "step %d); the best checkpoint is tested next", self.step, self.best.metric,
                     self.cfg.early_stop_delta, p.stale_evals, self.best.value, self.best.step)

    def final_test(self):
        """The best checkpoint, evaluated once on the test split (the first time anything reads it): test/*
        scalars, the hparams panel and logs/<run>/metrics.json."""
        best = fileformat.load(self.paths.best)
        model = self.ema.module if self.ema else self.parts.eval_model
        fileformat.load_model_weights(model, best, self.paths.best, "this run's model", evaluated=True)
        loader = loader_for(self.splits.test, self.cfg, self.device, self.dist)
        values, _ = evaluate(model, loader, self.task, self.parts.precision, self.device, dist=self.dist,
                             channels_last=self.cfg.channels_last)
        test = {"test/" + k: v for k, v in values.items()}
        said = self.task.learned_nothing({k[4:]: v for k, v in (best.get("last_eval") or {}).items()
                                          if k.startswith("val/")})
        if said:
            log.warning("WARNING: at the best checkpoint (step %d): %s", best["progress"]["step"], said)
        report = metrics_report(self.cfg, self.last_eval.values, test, best, self.paths.best, step=self.step)
        if self.dist.main:
            atomic.write_text(self.paths.metrics_file, json.dumps(report, indent=2, sort_keys=True) + "\n")
        self.loggers.scalars(test, self.step)
        log.info("test of the best checkpoint (step %d): %s -> %s", best["progress"]["step"], describe(test),
                 self.paths.metrics_file)
        return test

    # ----- training ------------------------------------------------------------------------------------------
    def _train_step(self, batch, indices, global_size, log_step):
        """One optimizer step on this rank's part of a global batch (indices: its samples' dataset indices)."""
        if self.parts.freeze.update(self.step):
            log.info("from step %d on the %s parameters train too (%s %d)", self.step, "--freeze" if
                     self.cfg.freeze else "backbone's", "--unfreeze-at" if self.cfg.freeze else "--freeze-backbone",
                     self.parts.freeze.until)
        inputs, target = self.task.to_device(batch, self.device)
        if self.augment:
            inputs, target = self.augment(inputs, target, indices, self.progress.epoch)
        if self.cfg.channels_last:
            inputs = compat.channels_last(inputs)
        n = self.cfg.accum_steps
        micro = list(zip(inputs.chunk(n), target.chunk(n) if target is not None else [None] * n))
        precision, optimizer = self.parts.precision, self.parts.optimizer
        if self.cfg.cuda_graphs and not self.graphs_tried:  # once, on the first (micro-)batch of this session
            from . import cuda_graphs
            self.graphs_tried = True
            with precision.autocast():
                cuda_graphs.capture(compat.unwrap_model(self.model), micro[0][0])
        optimizer.zero_grad()
        for k, (x, t) in enumerate(micro):
            last = k == len(micro) - 1  # under DDP only the last backward all-reduces the summed gradients
            with contextlib.nullcontext() if last else compat.no_sync(self.model):
                with precision.autocast():
                    pred = self.task.prediction(self.model(x))
                    loss = self.task.loss(pred, t)
                # DDP averages gradients over ranks; weigh each (micro-)batch's mean by its share of the global
                # batch so that the sum is the gradient of the global batch's mean loss, whatever the sizes
                weight = len(x) * self.dist.world / float(global_size)
                precision.backward(loss * weight if weight != 1 else loss)
            self.meter.add(loss, self.task.train_sums(pred, t), len(x), step=last)
        precision.unscale(optimizer)
        grad_norm = None
        if self.cfg.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        elif log_step:
            grad_norm = compat.grad_norm(self.model.parameters())
        precision.step(optimizer)
        self.lr_used = optimizer.param_groups[0]["lr"]
        self.parts.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        if log_step:
            self.meter.set_grad_norm(grad_norm, must_be_finite=not precision.scaling)

    def _log_window(self, window):
        self.ensure_finite()
        values = self.meter.averages(self.dist, self.task)
        self.meter.reset()
        values["train/lr"] = self.lr_used
        elapsed = max(time.perf_counter() - window["start"] - window["excluded"], 1e-9)
        steps = max(window["steps"], 1)
        self.checkpoints.step_seconds = elapsed / steps
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
        self.loggers.scalars(values, self.step)
        self.loggers.scalars(perf, self.step)
        p = self.progress
        epoch = p.epoch + (1 if p.sample_in_epoch else 0)
        shown = " | ".join(("%s %.2f%%" % (k[6:], 100 * v)) if k == "train/acc" else "%s %.4f" % (k[6:], v)
                           for k, v in values.items() if k not in ("train/lr", "train/grad_norm"))
        log.info("step %d/%d | epoch %d/%d | %s | lr %.4g | %.0f samples/s", self.step, self.parts.total_steps, epoch,
                 self.cfg.epochs, shown, values["train/lr"], perf["z_perf/samples_per_sec"],
                 extra={"step_line": True})
        self.bar.postfix = {k[6:]: "%.4f" % v for k, v in values.items() if k not in ("train/lr", "train/grad_norm")}
        window.update(start=time.perf_counter(), excluded=0.0, steps=0, samples=0, data_wait=0.0)

    def close(self):
        """Let go of the data loaders: their workers shut down now, while the process still runs (not at exit,
        where a worker killed on the way out would be reported as an error)."""
        self.train_loader = self.eval_loader = self.train_batches = None

    def fit(self, bar, test_only=False):
        """Train to the end and test, or (test_only: a finished run resumed without its test results) test. bar:
        the console's progress."""
        self.bar = bar
        try:
            return self.finish() if test_only else self._fit()
        except KeyboardInterrupt:
            raise  # a second Ctrl-C leaves at once; a half-written temporary file is removed at the next start
        except BaseException as err:
            if worker_died(err):
                raise self._after_worker_death(err)
            if isinstance(err, UsageError) and self.between_steps and self.run.begun:
                raise self._after_data_error(err)
            self.checkpoints.wait_quietly()  # an error: still let the last good checkpoint reach the disk
            if self.dist.enabled and peer_lost(err):
                raise self._after_peer_loss(err)
            if self.dist.main and self.run.begun:  # the old events were trimmed (hparams too): write them again
                try:
                    self.log_hparams()
                except Exception:
                    pass
            raise

    def _after_peer_loss(self, err):
        """A collective failed because another process is gone (its node died, was killed, lost the network): one
        line, the last checkpoint kept (this step's state is half reduced: not saved), how to go on."""
        what = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip().splitlines()[0]).split(". ")[0][:120]
        kept = self.checkpoints.saved_step
        return TrainingError("another process of this run is gone (%s) at step %d: a node died, was killed or lost "
                             "its network. %s; continue with the same command again, --resume auto, on every node "
                             "(or on the nodes left: --batch-size is global)" % (
                                 what, self.step, "The last checkpoint (step %d) is kept" % kept if kept >= 0 else
                                 "No checkpoint was saved yet"))

    def _after_worker_death(self, err):
        """A DataLoader worker died (killed, out of memory): stop with one line, and when the loop stood between two
        steps (a failed fetch changes nothing; an evaluation it cut is marked pending), save that state first."""
        what = str(err).strip().splitlines()[0][:200]
        # a death is raised before a fetch or by the fetch (loading.check_workers), or, where torch's own SIGCHLD
        # handler stayed, wherever the loop is: mid-step the state is half made; under several processes the other
        # ranks would wait forever in the save's collectives
        if self.dist.enabled or not self.between_steps:
            kept = self.checkpoints.saved_step
            return TrainingError("%s at step %d; %s. Run again with --resume (add --num-workers 0 if it happens "
                                 "again)" % (what, self.step, "the last checkpoint (step %d) is kept" % kept
                                             if kept >= 0 else "no checkpoint was saved yet"))
        return TrainingError("%s; %s. Run again with --resume (add --num-workers 0 if it happens again)"
                             % (what, self._save_whole_step("a data loader worker died")))

    def _save_whole_step(self, why):
        """After an error met between two steps: save that state (one process); what happened, in words."""
        try:
            self.checkpoints.save(self.step, why)
            self.checkpoints.flush()
            return "saved step %d to %s" % (self.step, self.paths.latest)
        except Exception as failed:
            self.checkpoints.wait_quietly()
            return "could not save (%s); the last good checkpoint is kept" % str(failed).splitlines()[0][:120]

    def _after_data_error(self, err):
        """A sample that cannot be read any more while training (a file deleted or damaged under a streaming run,
        in this process or a loader worker): the state is a whole step's, so it is saved, and the run stops with
        one line (exit 1: the run was under way) saying how to go on."""
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        what = re.sub(r"^[\w.]*UsageError: ", "", lines[-1] if lines else type(err).__name__)[:300]
        what = re.sub(r"; fix or delete it$", "", what)
        if self.dist.enabled:  # the other ranks would wait forever in the save's collectives
            kept = self.checkpoints.saved_step
            saved = "the last checkpoint (step %d) is kept" % kept if kept >= 0 else "no checkpoint was saved yet"
        else:
            saved = self._save_whole_step("the data could not be read")
        return TrainingError("%s at step %d; %s. Put the file back, then --resume (with the data changed, "
                             "--resume --allow-data-change)" % (what, self.step, saved))

    def _epoch_batches(self):
        """This epoch's batches (from the sample the progress stands at) and an iterator over them; one loader for
        the run: its workers (if any) persist across epochs."""
        if self.train_loader is None:
            self.train_batches = EpochBatches(len(self.splits.train), self.cfg.batch_size, self.cfg.seed,
                                              dist=self.dist)
            self.train_loader = make_loader(self.splits.train, self.train_batches, self.cfg, self.device)
        self.train_batches.set_epoch(self.progress.epoch, self.progress.sample_in_epoch)
        self.between_steps = True  # persistent workers wake for the epoch: the state is a whole step
        batch_iter = iter(self.train_loader)
        self.between_steps = False
        return self.train_batches, batch_iter

    def _fit(self):
        window = {"start": time.perf_counter(), "excluded": 0.0, "steps": 0, "samples": 0, "data_wait": 0.0}
        if self.progress.eval_pending and not self.run_eval():
            return self.stopped()
        self.model.train()
        while not self.finished():
            batches, batch_iter = self._epoch_batches()
            for i, size in enumerate(batches.sizes):
                if self.finished():
                    break
                self._step(batch_iter, batches.tensors[i], size, window)
                epoch_end = self._advance(size, batches.epoch_samples, window)
                t1 = time.perf_counter()
                due_eval = (self.step % self.cfg.eval_every == 0) if self.cfg.eval_every else epoch_end
                if (due_eval or self.finished()) and not self.run_eval():
                    return self.stopped()
                if self.finished():
                    break
                self.checkpoints.maybe_save(self.step)
                window["excluded"] += time.perf_counter() - t1
                if self._stop_requested():
                    return self.stopped()
        if self.meter.steps > 0:  # the last, partial logging window
            self._log_window(window)
        self.checkpoints.save(self.step, "end of training")
        return self.finish()

    def _step(self, batch_iter, indices, size, window):
        """Fetch the next batch and train one step on it."""
        step = self.step + 1
        log_step = step % self.cfg.log_every == 0 or step >= self.parts.total_steps
        # a step between logging steps never waits for the GPU (--sync-check on CUDA: a wait raises)
        with compat.no_host_sync(self.cfg.sync_check and not log_step and self.device.type == "cuda"):
            t0 = time.perf_counter()
            self.between_steps = True  # a worker's death reported here finds the state of a whole step
            check_workers()
            batch = next(batch_iter)
            self.between_steps = False
            window["data_wait"] += time.perf_counter() - t0
            self._train_step(batch, indices, size, log_step)
        self.run.begin_once()

    def _advance(self, size, epoch_samples, window):
        """Count the step done (and the epoch, at its end; True then), log the window when due."""
        p = self.progress
        p.step += 1
        p.sample_in_epoch += size
        window["steps"] += 1
        window["samples"] += size
        epoch_end = p.sample_in_epoch >= epoch_samples
        if epoch_end:
            p.epoch += 1
            p.sample_in_epoch = 0
        if p.step % self.cfg.log_every == 0:
            self._log_window(window)
        self.bar.update()
        return epoch_end

    def _stop_requested(self):
        if self.cfg.stop_after_step and self.step == self.cfg.stop_after_step:
            self.stop.request("--stop-after-step %d" % self.cfg.stop_after_step)
        return self.dist.any(self.stop.requested)

    def finish(self):
        """The end of a run: the saved end-of-training checkpoint's best is tested. Also all that a resumed run
        does when training had ended but its test had not (a kill during the test)."""
        self.checkpoints.flush()
        self.run.begin_once()
        test = self.final_test()
        self.log_hparams(test)
        self.checkpoints.report_stalls()
        p, best = self.progress, self.best
        log.info("done%s: %d steps, %d epochs. Best %s %.4f at step %s -> %s",
                 " (stopped early)" if stopped_early(self.cfg, p) else "", p.step, p.epoch, best.metric,
                 best.value if best.value is not None else float("nan"), best.step, self.paths.best)
        return 0

    def stopped(self):
        log.info("stop requested: saving step %d", self.step)
        if self.checkpoints.saved_step != self.step or self.progress.eval_pending:
            self.checkpoints.save(self.step, "stop signal")
        self.checkpoints.flush()
        self.log_hparams()
        self.checkpoints.report_stalls()
        again = ("python -m src.launch %d" % self.dist.world) if self.dist.enabled else "python train.py"
        again = "%s --resume --run-name %s" % (again, self.cfg.run_name)
        prefix = os.environ.get("HOST_COMMAND_PREFIX")  # in the container: what the user types on the host
        if prefix:
            again = "./run.sh --run-name %s (or: %s %s)" % (self.cfg.run_name, prefix, again)
        if slurm.job() is not None:  # preempted, requeued or cancelled: only the first comes back by itself
            again = ("nothing, if Slurm requeued the job (it resumes by itself); after a scancel: RUN_NAME=%s sbatch "
                     "slurm/train.sbatch (or %s)" % (self.cfg.run_name, again))
        log.info("stopped at step %d; continue with: %s", self.step, again)
        return 0

    def log_hparams(self, test=None):
        metrics = dict(self.last_eval.values, **(test or {}))  # the breakdowns (val/f1/<class>) stay scalars only
        self.loggers.hparams(self.run.hparams, {k: v for k, v in metrics.items() if k.count("/") < 2})
        self.loggers.flush(durable=True)


def describe(values):
    """val/loss 0.1234, val/acc 98.50% ...: accuracies as percentages, the rest with 4 decimals; not the
    breakdowns (val/f1/<label>: TensorBoard has them)."""
    return ", ".join(("%s %.2f%%" % (k, 100 * v)) if k.endswith("/acc") else "%s %.4f" % (k, v)
                     for k, v in values.items() if k.count("/") < 2)


def metrics_report(cfg, val, test, best_state, best_path, *, step):
    """What logs/<run>/metrics.json holds: the final val metrics, the best checkpoint's test metrics, where it is."""
    return {"run": cfg.run_name, "task": cfg.task, "dataset": cfg.dataset, "model": cfg.model, "step": step,
            "val": val, "test": test,
            "best": {"step": best_state["progress"]["step"], "path": str(best_path), "monitor": str(cfg.monitor),
                     "value": best_state["best"]["value"], "val": best_state.get("last_eval") or {}}}
