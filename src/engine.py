"""The training loop: steps, evaluation, best/latest/tmp checkpoints, a clean stop on signals.

Order inside each step (what makes resume exact): train -> log window (every --log-every) -> evaluate
(every --eval-every, or at each epoch's end) -> best checkpoint -> periodic checkpoint -> stop if asked.
The data order is a pure function of (seed, epoch) and the checkpoint records the samples consumed in
the epoch, so a resumed run sees the same batches in the same order.

Under several processes (distributed.py) every rank runs this same loop in lockstep: the collectives (log
window sums, evaluation sums, the stop flag, checkpoint state) happen at the same points on all ranks, and
only rank 0 writes files. Metrics stay on the device between logging steps (no host sync per step).
"""
import logging
import math
import os
import time

import torch
import torch.nn.functional as F

from . import checkpoint, compat, metrics, seeding
from .checkpoint_writer import CheckpointWriter
from .config import PER_INVOCATION, monitor
from .errors import TrainingError
from .signals import ignore_stop_signals

log = logging.getLogger("train")


class EpochBatches(torch.utils.data.Sampler):
    """This process's index batches of one epoch, from global sample `start` on.

    The global order is shuffled by (seed, epoch), or in order when seed is None, and cut into global batches
    of batch_size; each process takes its slice of every global batch (dist.shard). A last global batch with
    fewer samples than processes is dropped (a process would get none). `sizes` are the global batch sizes.
    """

    def __init__(self, n, batch_size, seed=None, epoch=0, start=0, dist=None, drop_tiny=True):
        self.n, self.batch_size, self.seed, self.dist, self.drop_tiny = n, batch_size, seed, dist, drop_tiny
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch, start=0):
        """Switch to another epoch (or position): a DataLoader built on this sampler keeps its workers."""
        n, seed, dist = self.n, self.seed, self.dist
        order = torch.arange(n) if seed is None else torch.randperm(n, generator=seeding.epoch_generator(seed, epoch))
        world = dist.world if dist is not None else 1
        batches = list(order[start:].split(self.batch_size))
        if self.drop_tiny and batches and len(batches[-1]) < world:
            batches.pop()
        self.sizes = [len(b) for b in batches]
        self.tensors = [dist.shard(b) if dist is not None else b for b in batches]  # for direct indexing
        self.batches = [b.tolist() for b in self.tensors]  # for a DataLoader (datasets expect int indices)
        self.epoch_samples = epoch_samples(n, self.batch_size, world)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def epoch_samples(n, batch_size, world=1):
    """Samples one epoch trains on: all n, less a last batch too small to give every process one."""
    tail = n % batch_size
    return n - tail if 0 < tail < world else n


def steps_per_epoch(n, batch_size, world=1):
    return int(math.ceil(epoch_samples(n, batch_size, world) / float(batch_size)))


def make_loader(dataset, batches, cfg, device):
    """Batches over precomputed index batches; never draws from the global RNG. An in-memory dataset that
    indexes a whole batch at once, with no workers and no pinning, is read directly (a DataLoader would only
    add its per-batch overhead); anything else goes through a DataLoader."""
    settings = loader_settings(cfg, dataset, device)
    batched = getattr(dataset, "batched", False)
    if batched and settings["num_workers"] == 0 and not settings["pin_memory"]:
        return DirectBatches(dataset, batches)
    common = dict(compat.loader_options(settings), generator=torch.Generator())
    if settings["num_workers"] > 0:  # workers ignore stop signals sent to the whole group: the main process saves
        common["worker_init_fn"] = ignore_stop_signals
    if batched:
        return torch.utils.data.DataLoader(dataset, sampler=batches, batch_size=None, **common)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, **common)


class DirectBatches(object):
    """Iterating gives dataset[batch] for the sampler's current batches (like a DataLoader, minus its cost)."""

    def __init__(self, dataset, batches):
        self.dataset, self.batches = dataset, batches

    def __iter__(self):
        return (self.dataset[b] for b in self.batches.tensors)


def loader_settings(cfg, dataset, device):
    """DataLoader settings per device; each flag overrides its automatic choice.

    workers: 0 for in-memory datasets indexed a batch at a time (a worker would only add a copy between
    processes); otherwise up to 8 on CUDA and 2 on CPU (where they share the cores with the math), divided
    among the processes of this node. Pinned memory on CUDA. Workers persist across epochs.
    """
    workers = cfg.num_workers
    if workers < 0:
        if getattr(dataset, "batched", False):
            workers = 0
        else:
            per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
            cpus = max(1, (os.cpu_count() or 1) // per_node)
            workers = min(8 if device.type == "cuda" else 2, cpus - 1 if cpus > 1 else 0)
    pin = device.type == "cuda" if cfg.pin_memory == "auto" else cfg.pin_memory == "on"
    return {"num_workers": workers, "pin_memory": pin, "persistent_workers": workers > 0 and cfg.persistent_workers,
            "prefetch_factor": cfg.prefetch_factor if workers > 0 and cfg.prefetch_factor else None}


def finished(cfg, progress):
    """Whether a run at this progress has nothing left to do (all --epochs, or --max-steps, done)."""
    if progress.get("eval_pending"):
        return False
    return progress["epoch"] >= cfg.epochs or bool(cfg.max_steps and progress["step"] >= cfg.max_steps)


class Trainer(object):
    def __init__(self, cfg, parts, paths, board, stop, progress, dist, begin=None):
        self.cfg, self.paths, self.board, self.stop, self.progress, self.dist = (
            cfg, paths, board, stop, progress, dist)
        self.begin = begin  # the run's first writes to logs/<run>/, done once a step or evaluation succeeded
        self.model, self.eval_model, self.optimizer, self.scheduler, self.scaler = (
            parts.model, parts.eval_model, parts.optimizer, parts.scheduler, parts.scaler)
        self.splits, self.device, self.amp_dtype = parts.splits, parts.device, parts.amp_dtype
        self.total_steps = parts.total_steps
        self.meter = metrics.TrainMeter(self.device)
        self.metric, self.mode = monitor(cfg)
        self.progress_state = {"epoch": 0, "sample_in_epoch": 0, "step": 0, "eval_pending": False}
        self.best = {"metric": self.metric, "mode": self.mode, "value": None, "step": None}
        self.last_eval = {}
        self.saved_step = -1
        self.writer = CheckpointWriter(background=cfg.async_ckpt)
        self.train_batches = self.train_loader = self.eval_loader = None
        self.stalls = []  # seconds the loop stalled for each checkpoint of this session
        self.stalls_logged = 0  # how many of them TensorBoard has had
        # asked once, not at every save (git is a subprocess)
        self.provenance = {"versions": checkpoint.versions(), "git_commit": checkpoint.git_commit()}
        self.use_scaler = self.scaler.is_enabled()  # fp16 loss scaling (it skips steps with inf gradients)

    # ----- state ---------------------------------------------------------------------------------------------
    def state_dict(self):
        """The full training state; a collective under several processes (every rank calls it)."""
        rng = seeding.capture()
        state = {
            "model": compat.clean_state_dict(compat.unwrap_model(self.model).state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": compat.scheduler_state(self.scheduler),
            "scaler": self.scaler.state_dict(),
            "meter": self.meter.global_state(self.dist),
            "progress": dict(self.progress_state),
            "best": dict(self.best),
            "last_eval": dict(self.last_eval),
            "rng": rng,
            "config": dict(vars(self.cfg)),
            "versions": self.provenance["versions"],
            "git_commit": self.provenance["git_commit"],
        }
        if self.dist.enabled:
            state["rng_ranks"] = self.dist.gather(rng)
        return state

    def load_state_dict(self, state):
        """Everything but the model weights and optimizer (restored by run.py before the optimizer is used)."""
        self.meter.load_state_dict(state["meter"], self.dist.main)
        self.progress_state = dict(state["progress"])
        self.last_eval = dict(state.get("last_eval") or {})
        best = state["best"]
        if (best["metric"], best["mode"]) == (self.metric, self.mode):
            self.best = dict(best)
        else:
            log.info("--monitor changed from %s:%s to %s:%s; best is judged afresh", best["metric"], best["mode"],
                     self.metric, self.mode)
        self.saved_step = self.progress_state["step"]

    @property
    def step(self):
        return self.progress_state["step"]

    def finished(self):
        return finished(self.cfg, self.progress_state)

    # ----- checkpoints ---------------------------------------------------------------------------------------
    def _ensure_finite(self, weights=False):
        """Raise (on every rank) before a non-finite loss, gradient or (when saving) weight can reach a log or a
        checkpoint."""
        bad = not self.meter.is_finite(self.dist)
        if weights and not bad:
            bad = not bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all())
        if bad:
            raise TrainingError(
                "non-finite loss, gradient or weights at or before step %d; stopped. The last good checkpoint is kept "
                "(%s). Lower --lr or set --grad-clip, then --resume" % (self.step, self.paths.latest))

    def _submit(self, targets, message, prune=False):
        """Hand the state to the background writer (rank 0; the others wait at a barrier for the copy)."""
        self._ensure_finite(weights=True)
        state = self.state_dict()
        if self.dist.main:
            def before():  # in the writer: TensorBoard events up to this step reach the disk before the checkpoint
                self.board.flush(durable=True)

            first = not self.stalls

            def done(seconds, size):  # in the writer, once the files are in place
                if prune:
                    checkpoint.prune(self.paths.tmp_dir, self.cfg.keep_last)
                log.info("%s", message)
                if first:
                    self._report_first_save(seconds, size)

            self._check_write(lambda: self.stalls.append(self.writer.submit(state, targets, done, before)))
        self.dist.barrier()

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
            free = checkpoint.free_bytes(self.paths.tmp_dir)
        except OSError:
            return
        if self.cfg.keep_last * size > free:
            log.warning("WARNING: %s keeps %d checkpoints of %.0f MB, but only %.0f MB are free there; lower "
                        "--keep-last or free space", self.paths.tmp_dir, self.cfg.keep_last, size / 1e6, free / 1e6)

    def save(self, why):
        self._submit((self.paths.latest, self.paths.tmp_checkpoint(self.step)),
                     "saved checkpoint step %d (%s) -> %s" % (self.step, why, self.paths.latest), prune=True)
        self.saved_step = self.step

    def flush(self):
        """Wait until every submitted checkpoint is on disk (rank 0), then let every rank go on."""
        if self.dist.main:
            self._check_write(self.writer.wait)
        self.dist.barrier()

    def _save_best(self):
        self._submit((self.paths.best,), "new best %s %.4f at step %d -> %s" % (
            self.metric, self.best["value"], self.step, self.paths.best))

    # ----- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self):
        """Validation metrics and confusion matrix over all ranks' shards; None if a stop cut it short."""
        ds = self.splits.val
        k = self.splits.num_classes
        if self.eval_loader is None:
            self.eval_loader = make_loader(
                ds, EpochBatches(len(ds), self.cfg.batch_size, dist=self.dist, drop_tiny=False), self.cfg, self.device)
        loader = self.eval_loader
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        confusion = torch.zeros(k * k, dtype=torch.long, device=self.device)
        self.eval_model.eval()
        try:
            with torch.no_grad():
                for x, y in loader:
                    if self.dist.any(self.stop.requested):
                        return None
                    if len(y) == 0:
                        continue
                    x, y = self._to_device(x), y.to(self.device, non_blocking=True)
                    with compat.autocast(self.device.type, self.amp_dtype):
                        out = self.eval_model(x)
                    loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
                    confusion += metrics.confusion_counts(y, out.argmax(1), k)
        finally:
            self.eval_model.train()
        sums = self.dist.sum_(torch.cat([loss_sum.view(1), confusion.double()])).cpu()
        confusion = sums[1:].round().long().view(k, k)
        n = max(int(confusion.sum()), 1)
        values = {"val/loss": float(sums[0]) / n, "val/acc": float(confusion.diag().sum()) / n}
        return values, confusion

    def run_eval(self):
        """Evaluate, log, judge best. False when interrupted (the eval is then redone after a resume)."""
        result = self.evaluate()
        if result is None:
            self.progress_state["eval_pending"] = True
            return False
        self._begin_once()
        values, confusion = result
        self.progress_state["eval_pending"] = False
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingError("non-finite validation loss at step %d; stopped. The last good checkpoint is "
                                "kept (%s). Lower --lr or set --grad-clip" % (self.step, self.paths.latest))
        self.last_eval = values
        self.board.scalars(values, self.step)
        self.board.image("val/confusion_matrix", metrics.confusion_image(confusion), self.step)
        value, best = values[self.metric], self.best["value"]
        improved = best is None or (value > best if self.mode == "max" else value < best)
        if improved:
            self.best.update(value=value, step=self.step)
        log.info("eval step %d: val/loss %.4f, val/acc %.2f%% (best %s %.4f at step %d)", self.step,
                 values["val/loss"], 100 * values["val/acc"], self.metric, self.best["value"], self.best["step"])
        if improved:
            self._save_best()
        return True

    # ----- training ------------------------------------------------------------------------------------------
    def _to_device(self, x):
        x = x.to(self.device, non_blocking=True)
        return compat.channels_last(x) if self.cfg.channels_last else x

    def _train_step(self, x, y, global_size, log_step):
        x, y = self._to_device(x), y.to(self.device, non_blocking=True)
        with compat.autocast(self.device.type, self.amp_dtype):
            out = self.model(x)
            loss = F.cross_entropy(out.float(), y)
        # DDP averages gradients over ranks; when the shards differ in size, weigh each rank's mean by its
        # share so that the result is the gradient of the global batch's mean loss
        weight = len(y) * self.dist.world / float(global_size)
        self.optimizer.zero_grad()
        scaled = loss * weight if weight != 1 else loss
        if self.use_scaler:
            self.scaler.scale(scaled).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            scaled.backward()
        grad_norm = None
        if self.cfg.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        elif log_step:
            grad_norm = compat.grad_norm(self.model.parameters())
        if self.use_scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_used = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.meter.add(loss, (out.argmax(1) == y).sum(), len(y))
        if log_step:
            self.meter.set_grad_norm(grad_norm, must_be_finite=not self.use_scaler)

    def _log_window(self, window):
        self._ensure_finite()
        values = self.meter.averages(self.dist)
        self.meter.reset()
        values["train/lr"] = self.lr_used
        elapsed = max(time.perf_counter() - window["start"] - window["excluded"], 1e-9)
        steps = max(window["steps"], 1)
        # z_perf/: TensorBoard sorts groups by name, so train/ and val/ come first
        perf = {"z_perf/samples_per_sec": window["samples"] / elapsed, "z_perf/step_time_ms": 1000 * elapsed / steps,
                "z_perf/data_wait_ms": 1000 * window["data_wait"] / steps}
        if len(self.stalls) > self.stalls_logged:  # the worst checkpoint stall since the last logging step
            perf["z_perf/ckpt_stall_ms"] = 1000 * max(self.stalls[self.stalls_logged:])
            self.stalls_logged = len(self.stalls)
        if self.device.type == "cuda":
            perf["z_perf/gpu_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
            torch.cuda.reset_peak_memory_stats(self.device)
        self.board.scalars(values, self.step)
        self.board.scalars(perf, self.step)
        p = self.progress_state
        epoch = p["epoch"] + (1 if p["sample_in_epoch"] else 0)
        log.info("step %d/%d | epoch %d/%d | loss %.4f | acc %.2f%% | lr %.4g | %.0f samples/s", self.step,
                 self.total_steps, epoch, self.cfg.epochs, values["train/loss"], 100 * values["train/acc"],
                 values["train/lr"], perf["z_perf/samples_per_sec"], extra={"step_line": True})
        self.progress.postfix = {"loss": "%.4f" % values["train/loss"], "acc": "%.3f" % values["train/acc"]}
        window.update(start=time.perf_counter(), excluded=0.0, steps=0, samples=0, data_wait=0.0)

    def _begin_once(self):
        if self.begin is not None:
            begin, self.begin = self.begin, None
            begin()

    def fit(self):
        try:
            return self._fit()
        except KeyboardInterrupt:
            raise  # a second Ctrl-C leaves at once; a half-written temporary file is removed at the next start
        except BaseException:
            if self.dist.main:  # an error: still let the last good checkpoint reach the disk, and keep the hparams
                try:
                    self.writer.wait()
                except Exception:
                    pass
                if self.begin is None:  # the old events were trimmed (hparams with them): write them again
                    try:
                        self.board_hparams()
                    except Exception:
                        pass
            raise

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
            for size in batches.sizes:
                if self.finished():
                    break
                t0 = time.perf_counter()
                x, y = next(batch_iter)
                window["data_wait"] += time.perf_counter() - t0
                step = p["step"] + 1
                self._train_step(x, y, size, step % cfg.log_every == 0 or step >= self.total_steps)
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
                if cfg.ckpt_every and p["step"] % cfg.ckpt_every == 0:
                    self.save("every %d steps" % cfg.ckpt_every)
                window["excluded"] += time.perf_counter() - t1
                if cfg.stop_after_step and p["step"] == cfg.stop_after_step:
                    self.stop.request("--stop-after-step %d" % cfg.stop_after_step)
                if self.dist.any(self.stop.requested):
                    return self.stopped()
        if self.meter.steps > 0:  # the last, partial logging window
            self._log_window(window)
        self.save("end of training")
        self.flush()
        self.board_hparams()
        self.report_stalls()
        log.info("done: %d steps, %d epochs. Best %s %.4f at step %s -> %s", p["step"], p["epoch"], self.metric,
                 self.best["value"] if self.best["value"] is not None else float("nan"), self.best["step"],
                 self.paths.best)
        return 0

    def stopped(self):
        log.info("stop requested: saving step %d", self.step)
        if self.saved_step != self.step or self.progress_state["eval_pending"]:
            self.save("stop signal")
        self.flush()
        self.board_hparams()
        self.report_stalls()
        again = ("python -m src.launch %d" % self.dist.world) if self.dist.enabled else "python train.py"
        again = "%s --resume --run-name %s" % (again, self.cfg.run_name)
        prefix = os.environ.get("HOST_COMMAND_PREFIX")  # in the container: what the user types on the host
        if prefix:
            again = "./run.sh --run-name %s (or: %s %s)" % (self.cfg.run_name, prefix, again)
        log.info("stopped at step %d; continue with: %s", self.step, again)
        return 0

    def report_stalls(self):
        if self.stalls:
            ordered = sorted(self.stalls)
            log.info("checkpoints: %d written %s; the loop stalled %.1f ms median, %.1f ms max for them",
                     len(ordered), "in the background" if self.cfg.async_ckpt else "in the loop",
                     1000 * ordered[len(ordered) // 2], 1000 * ordered[-1])

    def board_hparams(self):
        hp = {k: v for k, v in vars(self.cfg).items()
              if k not in PER_INVOCATION and not k.endswith("_dir") and k not in ("progress", "tensorboard")}
        self.board.hparams(hp, dict(self.last_eval))
        self.board.flush(durable=True)
