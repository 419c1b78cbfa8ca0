"""One training run, from config to finished checkpoint: pick fresh start or resume, build the parts,
restore every piece of state, hand over to the loop."""
import contextlib
import errno
import logging
import os
import shlex
import sys
import threading
from collections import namedtuple
from pathlib import Path

import torch

from . import atomic, checkpoint, compat, config, console, data, models, optim, seeding
from .distributed import Dist
from .engine import Trainer, finished, steps_per_epoch
from .errors import TrainingError, UsageError
from .lock import RunLock
from .paths import RunPaths, check_folder
from .signals import Stopped
from .tensorboard_writer import Board

log = logging.getLogger("train")

# model: what trains (DDP and/or compiled); eval_model: the same weights without the DDP wrapper
Parts = namedtuple("Parts", "model eval_model optimizer scheduler scaler splits device amp_dtype total_steps")


def pick_device(cfg, dist):
    """The device of this process: under several processes, GPU LOCAL_RANK of this node."""
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if compat.cuda_available() else "cpu"
    if kind.startswith("cuda"):
        if not compat.cuda_available():
            raise UsageError("--device %s: CUDA is not available here (use --device cpu)" % cfg.device)
        index = torch.device(kind).index
        if dist.enabled:
            if index is not None:
                raise UsageError("--device %s: with several processes each one uses GPU LOCAL_RANK; use --device "
                                 "cuda (or CUDA_VISIBLE_DEVICES)" % cfg.device)
            index = dist.local_rank
        if index is not None and index >= torch.cuda.device_count():
            raise UsageError("--device %s: only %d GPU(s) visible" % (
                "cuda:%d" % index, torch.cuda.device_count()))
        if index is not None:
            torch.cuda.set_device(index)
            return torch.device("cuda", index)
    return torch.device(kind)


def pick_threads(cfg):
    """--threads, else OMP_NUM_THREADS, else half the cores of this process's share of the machine, at most 4:
    torch's default of every core makes small models up to 10x slower when other work shares the machine."""
    if cfg.threads:
        return cfg.threads
    if os.environ.get("OMP_NUM_THREADS"):  # set by the user (or src.launch): torch already follows it
        return torch.get_num_threads()
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(4, (os.cpu_count() or 1) // per_node // 2))


def pick_amp(cfg, device):
    if cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        if device.type != "cuda":
            raise UsageError("--amp fp16 needs a CUDA device (use --amp bf16 or --amp off on CPU)")
        return torch.float16
    if device.type == "cuda" and not compat.bf16_supported():
        raise UsageError("--amp bf16: this GPU has no bfloat16 support (use --amp fp16)")
    if device.type != "cuda" and not hasattr(torch, "autocast"):
        raise UsageError("--amp bf16 on CPU needs torch >= 1.10")
    return torch.bfloat16


def _load_or_usage_error(path, flag, full=True):
    path = Path(path)
    if not path.is_file():
        raise UsageError("%s %s: no such checkpoint file" % (flag, path))
    try:
        return checkpoint.load(path, full=full)
    except checkpoint.CorruptCheckpoint as err:
        raise UsageError("%s %s: unreadable checkpoint (%s); give a checkpoint this project wrote" % (flag, path, err))
    except OSError as err:
        raise UsageError("%s %s: cannot read it (%s)" % (flag, path, err.strerror or err))


def _existing_runs(models_dir):
    return sorted(p.stem for p in (Path(models_dir) / "latest").glob("*.pt"))


def find_resume_state(cfg, paths, explicit_state):
    """(state, path) to continue from, or (None, None) for a fresh start; refuses to clobber a run."""
    has_files = paths.latest.exists() or bool(checkpoint.tmp_checkpoints(paths.tmp_dir))
    if cfg.resume is None:
        if has_files:
            raise UsageError("run '%s' already has checkpoints (%s); continue it with --resume, or start another "
                             "with --run-name NAME" % (cfg.run_name, paths.latest))
        return None, None
    if cfg.resume not in ("latest", "auto"):
        return explicit_state, Path(cfg.resume)
    state, path = checkpoint.newest_valid(paths)
    if state is not None:
        return state, path
    if has_files:
        raise UsageError("run '%s' has no readable checkpoint in %s or %s; nothing was changed"
                         % (cfg.run_name, paths.latest, paths.tmp_dir))
    if cfg.resume == "auto":
        return None, None
    others = [r for r in _existing_runs(cfg.models_dir) if r != cfg.run_name]
    hint = " (runs with checkpoints: %s; pick one with --run-name)" % ", ".join(others) if others else ""
    raise UsageError("nothing to resume: run '%s' has no checkpoint in %s%s" % (cfg.run_name, paths.latest.parent,
                                                                                 hint))


def build_parts(cfg, splits, device, dist):
    """Model, optimizer, schedule and scaler; the model is wrapped (DDP, compile) later by wrap_model."""
    if cfg.batch_size < dist.world:
        raise UsageError("--batch-size %d is the global batch; it needs at least one sample for each of the %d "
                         "processes" % (cfg.batch_size, dist.world))
    if cfg.compile and not compat.has_compile():
        raise UsageError("--compile needs torch >= 2.0 (this is %s)" % torch.__version__)
    try:
        model = models.build(cfg, splits.input_shape, splits.num_classes).to(device)
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and "alloc" not in str(err).lower():
            raise
        raise UsageError("model '%s' does not fit in memory with --width %d --depth %d (%s); make it smaller"
                         % (cfg.model, cfg.width, cfg.depth, str(err).strip().splitlines()[0][:120]))
    if cfg.channels_last:
        model = compat.channels_last(model)
    optimizer = optim.build_optimizer(cfg, model.parameters())
    total = optim.total_steps(cfg, steps_per_epoch(len(splits.train), cfg.batch_size, dist.world))
    scheduler = optim.build_scheduler(cfg, optimizer, total)
    amp_dtype = pick_amp(cfg, device)
    scaler = compat.grad_scaler(amp_dtype == torch.float16)
    return Parts(model, model, optimizer, scheduler, scaler, splits, device, amp_dtype, total)


def wrap_model(parts, cfg, dist):
    """DistributedDataParallel under several processes (it broadcasts rank 0's weights), then torch.compile."""
    model = dist.wrap(parts.model, parts.device)
    eval_model = parts.model
    if cfg.compile:
        model = torch.compile(model)
        if not dist.enabled:  # under DDP, evaluation runs the plain module (no wrapper, no collectives)
            eval_model = model
    return parts._replace(model=model, eval_model=eval_model)


def describe_model(cfg):
    """How an error names the model a checkpoint must fit."""
    return "model '%s' on dataset '%s'" % (cfg.model, cfg.dataset)


def restore_parts(parts, state, source, cfg):
    """Weights, optimizer, scheduler and scaler from a checkpoint; the config's hyperparameters on top."""
    checkpoint.load_model_weights(parts.model, state, source, describe_model(cfg))
    try:
        parts.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as err:
        raise UsageError("checkpoint %s: optimizer state does not fit --optimizer %s (%s)" % (source, cfg.optimizer,
                                                                                            err))
    parts.scheduler.load_state_dict(state["scheduler"])
    optim.apply_config(cfg, parts.optimizer, parts.scheduler)
    if state.get("scaler") and parts.scaler.is_enabled():
        parts.scaler.load_state_dict(state["scaler"])


def finished_hint(cfg, progress):
    """Which limit a finished run reached, and the flag that lets it train longer (as it would work)."""
    step, epoch = progress["step"], progress["epoch"]
    if cfg.max_steps and step >= cfg.max_steps and epoch < cfg.epochs:
        return ("it reached --max-steps %d (in epoch %d of --epochs %d). To train longer, resume with a higher "
                "--max-steps, or with --epochs N alone (that drops the step limit)" % (cfg.max_steps, epoch + 1,
                                                                                   cfg.epochs))
    return ("its --epochs %d are done (step %d). To train longer, resume with a higher --epochs"
            % (cfg.epochs, step))


def build_data(cfg, stop):
    """The dataset's splits; a stop signal while it downloads or reads ends it at once (Stopped)."""
    check_folder(cfg.data_dir, "--data-dir")
    with stop.interrupting():
        try:
            return data.build(cfg)
        except OSError as err:
            raise TrainingError("cannot read the dataset %s in %s (%s)" % (cfg.dataset, cfg.data_dir,
                                                                           err.strerror or err))


def prepare_data(cfg, stop):
    splits = build_data(cfg, stop)
    log.info("dataset %s ready in %s: %d training and %d validation samples of shape %s", cfg.dataset, cfg.data_dir,
             len(splits.train), len(splits.val), "x".join(map(str, splits.input_shape)))
    return 0


def _fingerprint(paths):
    """What the resume lookup saw of a run's checkpoint files (compared again once the run is locked)."""
    def seen(path):
        try:
            info = path.stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size
    return seen(paths.latest), tuple((step, seen(path)) for step, path in checkpoint.tmp_checkpoints(paths.tmp_dir))


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


def run(cfg, user, stop):
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
    # Every check that can fail on bad input comes first, before any folder, lock or file is made.
    explicit = None
    if cfg.resume not in (None, "latest", "auto"):
        explicit = _load_or_usage_error(cfg.resume, "--resume")
        if "run_name" not in user:
            cfg.run_name = config.check_run_name(explicit["config"]["run_name"], "the checkpoint's run name")
    if cfg.init_from:
        init = _load_or_usage_error(cfg.init_from, "--init-from", full=False)
    paths = RunPaths(cfg)
    paths.check()
    seen = _fingerprint(paths)
    state, source = find_resume_state(cfg, paths, explicit)
    changes = []
    if state is not None:
        cfg, changes = config.merge_resumed(state["config"], cfg, user)
        if finished(cfg, state["progress"]):
            log.info("run %s already finished: %s", cfg.run_name, finished_hint(cfg, state["progress"]))
            return 0
    else:
        check_history(cfg, paths)
    seeding.seed_everything(cfg.seed)
    torch.set_num_threads(pick_threads(cfg))
    device = pick_device(cfg, dist)
    splits = build_data(cfg, stop)
    parts = build_parts(cfg, splits, device, dist)
    if state is not None:
        restore_parts(parts, state, source, cfg)
    elif cfg.init_from:
        checkpoint.load_model_weights(parts.model, init, cfg.init_from, describe_model(cfg))
    if stop.requested:
        raise Stopped(stop.name)

    # All checks passed: the first writes. Rank 0 locks the run (in logs/ and models/) and cleans up.
    try:
        return _locked(cfg, parts, state, source, changes, paths, bar, stop, dist, device, seen)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise TrainingError("cannot write %s (%s); free space there (or point --logs-dir / --models-dir elsewhere), "
                            "then --resume: the last good checkpoint is kept"
                            % (err.filename or "the run's files", err.strerror or err))


def _locked(cfg, parts, state, source, changes, paths, bar, stop, dist, device, seen):
    paths.make()
    locks = (RunLock(paths.lock_file, cfg.run_name), RunLock(paths.models_lock_file, cfg.run_name))
    with contextlib.ExitStack() as held:
        if dist.main:
            for lock in locks:
                held.enter_context(lock)
            if _fingerprint(paths) != seen:
                raise TrainingError("run '%s' changed while this trainer was starting (another trainer wrote it); "
                                    "run the command again" % cfg.run_name)
            atomic.remove_stale_tmp(paths.latest.parent, paths.latest.name)
            atomic.remove_stale_tmp(paths.best.parent, paths.best.name)
            atomic.remove_stale_tmp(paths.tmp_dir)
        step0 = state["progress"]["step"] if state is not None else 0
        dist.start(device)
        try:
            dist.same(step0, "the step to resume from")
            return _train(cfg, parts, state, source, changes, paths, bar, stop, dist, step0)
        finally:
            dist.stop()


def _quiet_io_errors(args, default=threading.excepthook):
    """A background thread (TensorBoard's writer) that dies of a full disk: one line, not a traceback; the loop
    reports the failure itself at its next write."""
    if issubclass(args.exc_type, OSError):
        log.warning("WARNING: %s stopped: %s", getattr(args.thread, "name", "a background thread"), args.exc_value)
    else:
        default(args)


def _train(cfg, parts, state, source, changes, paths, bar, stop, dist, step0):
    threading.excepthook = _quiet_io_errors
    parts = wrap_model(parts, cfg, dist)
    console.setup(paths.log_file, bar, dist.main)
    seeding.set_deterministic(cfg.deterministic)
    if state is None:
        log.info("run %s: fresh start%s", cfg.run_name,
                 " from the weights of %s" % cfg.init_from if cfg.init_from else "")
    else:
        p = state["progress"]
        log.info("run %s: resuming from %s at step %d (epoch %d, sample %d)", cfg.run_name, source, p["step"],
                 p["epoch"] + 1, p["sample_in_epoch"])
    for key, old, new in changes:
        log.info("config change on resume: %s %r -> %r", key, old, new)
    log.info("learning rate of the next step (%d): %.4g (--lr %g on the %s schedule%s, at step %d of %d)", step0 + 1,
             parts.optimizer.param_groups[0]["lr"], cfg.lr, cfg.scheduler,
             " after %d warmup steps" % cfg.warmup_steps if cfg.warmup_steps else "", step0, parts.total_steps)
    text = config.to_yaml(cfg)
    log.info("config:\n%s", text.rstrip(), extra={"file_only": True})
    log.info("config: every value in %s (and train.log)", paths.config_file)
    n_params = sum(p.numel() for p in parts.eval_model.parameters())
    log.info("model %s: %s parameters on %s (%d CPU threads)%s; %s: %d train / %d val samples; %d steps in all",
             cfg.model, format(n_params, ","), parts.device, torch.get_num_threads(),
             " x %d processes (global batch %d)" % (dist.world, cfg.batch_size) if dist.enabled else "",
             cfg.dataset, len(parts.splits.train), len(parts.splits.val), parts.total_steps)

    # resuming: drop events logged after the checkpoint; fresh: drop any left by a run that never saved
    board = Board(paths.run_dir, cfg.tensorboard and dist.main, resume_step=step0 if state is not None else -1)

    def begin():
        """The run's first writes to logs/<run>/, once its first step (or pending evaluation) has succeeded: a
        resume that fails before that (a bad flag value the checks cannot see) leaves the run as it was."""
        if dist.main:
            atomic.write_text(paths.config_file, text)
        board.open()
        board.text("config", "```yaml\n%s```" % text, step0)
        board.text("command", " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv), step0)
        if changes:
            board.text("config_changes", "\n".join("- %s: %r -> %r" % c for c in changes), step0)

    progress = console.Progress(bar, parts.total_steps, step0)
    trainer = Trainer(cfg, parts, paths, board, stop, progress, dist, begin)
    try:
        if state is not None:
            trainer.load_state_dict(state)
            restore_rng(state, dist, cfg)  # last: nothing after this may draw random numbers before step 1
        elif dist.rank > 0:
            seeding.seed_everything(seeding.rank_seed(cfg.seed, dist.rank))  # own dropout masks, same weights
        return trainer.fit()
    finally:
        progress.close()
        board.close()


def restore_rng(state, dist, cfg):
    """Each rank's random streams as they were; a changed process count restarts those of ranks > 0."""
    ranks = state.get("rng_ranks") or [state["rng"]]
    if len(ranks) == dist.world:
        seeding.restore(ranks[dist.rank])
        return
    if dist.rank == 0:
        log.info("resuming %d processes from a run of %d: same data order; random streams of ranks > 0 restart",
                 dist.world, len(ranks))
        seeding.restore(state["rng"])
    else:
        seeding.seed_everything(seeding.rank_seed(cfg.seed, dist.rank) + state["progress"]["step"])
