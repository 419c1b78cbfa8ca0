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
from types import SimpleNamespace

import torch

from .. import augment, data, models, tasks
from . import flags
from ..files import atomic, console
from ..loop import optim
from ..runtime import compat, seeding
from ..state import fileformat
from ..state.manager import (describe_model, find_resume_state, fingerprint, load_or_usage_error, restore_loop,
                                 restore_parts)
from ..data.loading import place_splits, steps_per_epoch
from ..runtime.distributed import Dist
from ..loop.trainer import Trainer, finished, stopped_early
from ..loop.precision import Precision
from ..runtime.errors import TrainingError, UsageError
from ..files.lock import RunLock
from ..files.paths import RunPaths, check_folder
from ..runtime.signals import Stopped
from ..files.loggers import Board

log = logging.getLogger("train")

# model: what trains (DDP and/or compiled); eval_model: the same weights without the DDP wrapper
Parts = namedtuple("Parts", "model eval_model optimizer scheduler precision task splits device total_steps")


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


def build_parts(cfg, splits, device, dist):
    """Model, optimizer, schedule and scaler; the model is wrapped (DDP, compile) later by wrap_model."""
    if cfg.batch_size < dist.world:
        raise UsageError("--batch-size %d is the global batch; it needs at least one sample for each of the %d "
                         "processes" % (cfg.batch_size, dist.world))
    if cfg.compile and not compat.has_compile():
        raise UsageError("--compile needs torch >= 2.0 (this is %s)" % torch.__version__)
    if cfg.cuda_graphs:
        from ..loop import cuda_graphs
        if device.type != "cuda" or not cuda_graphs.available():
            raise UsageError("--cuda-graphs needs a CUDA device and torch >= 1.10 (here: %s, torch %s); drop the flag"
                             % (device, torch.__version__))
        if cfg.compile:
            raise UsageError("--cuda-graphs and --compile do not go together; pick one")
    augment.check(cfg.augment, splits.input_shape)
    model, task = build_model_and_task(cfg, splits, device)
    if cfg.channels_last:
        model = compat.channels_last(model)
    optimizer = optim.build_optimizer(cfg, model.parameters(), device)
    total = optim.total_steps(cfg, steps_per_epoch(len(splits.train), cfg.batch_size, dist.world))
    scheduler = optim.build_scheduler(cfg, optimizer, total)
    precision = Precision(device, pick_amp(cfg, device), cache=not cfg.cuda_graphs)
    return Parts(model, model, optimizer, scheduler, precision, task, splits, device, total)


def _probe(model, task, batch, device):
    """The model's prediction and the task's loss on a batch, in eval mode without gradients: nothing changes."""
    model.eval()
    try:
        with torch.no_grad():
            inputs, target = task.to_device(batch, device)
            task.loss(task.prediction(model(inputs)), target)
    finally:
        model.train()


def _build_model(cfg, splits, device):
    try:
        return models.build(cfg, splits.input_shape, splits.num_classes).to(device)
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and "alloc" not in str(err).lower():
            raise
        raise UsageError("model '%s' does not fit in memory with --width %d --depth %d (%s); make it smaller"
                         % (cfg.model, cfg.width, cfg.depth, str(err).strip().splitlines()[0][:120]))


def build_model_and_task(cfg, splits, device):
    """The model and the task, once the model has run on two training samples: a model that does not fit the
    dataset or the task (an image model on a table, a segmentation model on labels) is one line before any file
    is written, naming the models that fit."""
    batch = data.sample_batch(splits.train, 2)
    task = None
    try:
        task = tasks.build(cfg, splits)
        model = _build_model(cfg, splits, device)
        _probe(model, task, batch, device)
        return model, task
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        error = " ".join(str(err).split())[:160] or type(err).__name__
    fits = []
    for name in models.names() if task is not None else ():
        try:
            _probe(_build_model(SimpleNamespace(**dict(vars(cfg), model=name)), splits, device), task, batch, device)
            fits.append(name)
        except Exception:
            pass
    raise UsageError("--model %s does not fit dataset %s with --task %s (%s); %s" % (
        cfg.model, cfg.dataset, cfg.task, error, "models that fit: %s" % ", ".join(fits) if fits else
        "no built-in model fits this dataset and task: pick another --task (or --model), or add a model in "
        "src/models/"))


def wrap_model(parts, cfg, dist):
    """DistributedDataParallel under several processes (it broadcasts rank 0's weights), then torch.compile."""
    model = dist.wrap(parts.model, parts.device)
    eval_model = parts.model
    if cfg.compile:
        model = torch.compile(model)
        if not dist.enabled:  # under DDP, evaluation runs the plain module (no wrapper, no collectives)
            eval_model = model
    return parts._replace(model=model, eval_model=eval_model)


def build_all(cfg, dist, stop):
    """(device, splits, parts) of a config: seeds and threads set, data built (a stop ends it), model and the rest."""
    seeding.seed_everything(cfg.seed)
    torch.set_num_threads(pick_threads(cfg))
    device = pick_device(cfg, dist)
    splits, where = place_splits(build_data(cfg, stop), cfg, device)
    if device.type != "cpu":
        log.info("data: %s", where)
    return device, splits, build_parts(cfg, splits, device, dist)


def finished_hint(cfg, progress):
    """Which limit a finished run reached, and the flag that lets it train longer (as it would work)."""
    step, epoch = progress["step"], progress["epoch"]
    if stopped_early(cfg, progress):
        return ("it stopped early at step %d: %s did not improve by more than %g in %d evaluations. To train on, "
                "resume with a larger --early-stop (or --early-stop 0: off)" % (step, flags.monitor(cfg)[0],
                                                                             cfg.early_stop_delta, cfg.early_stop))
    if cfg.max_steps and step >= cfg.max_steps and epoch < cfg.epochs:
        return ("it reached --max-steps %d (in epoch %d of --epochs %d). To train longer, resume with a higher "
                "--max-steps, or with --epochs N alone (that drops the step limit)" % (cfg.max_steps, epoch + 1,
                                                                                   cfg.epochs))
    return ("its --epochs %d are done (step %d). To train longer, resume with a higher --epochs"
            % (cfg.epochs, step))


def describe_recipe(cfg, dist):
    """The training recipe's flags that are on, in one line."""
    parts = []
    if cfg.augment != "none":
        parts.append("augment %s (training batches only)" % cfg.augment)
    if cfg.accum_steps > 1:
        parts.append("%d micro-batches of ~%d%s per step (global batch %d)" % (
            cfg.accum_steps, cfg.batch_size // (cfg.accum_steps * dist.world),
            " in each process" if dist.enabled else "", cfg.batch_size))
    if cfg.label_smoothing:
        parts.append("label smoothing %g" % cfg.label_smoothing)
    if cfg.ema:
        parts.append("EMA of the weights, decay %g (val/*, best and test use it; val_raw/*: the raw weights)"
                     % cfg.ema)
    if cfg.early_stop:
        parts.append("early stop after %d evaluations without %s improving by more than %g" % (
            cfg.early_stop, flags.monitor(cfg)[0], cfg.early_stop_delta))
    return "; ".join(parts)


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
    log.info("dataset %s ready in %s: %d train, %d val and %d test samples of shape %s", cfg.dataset, cfg.data_dir,
             len(splits.train), len(splits.val), len(splits.test), "x".join(map(str, splits.input_shape)))
    return 0


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
    import json
    try:
        return json.loads((paths.run_dir / "metrics.json").read_text())["step"] == state["progress"]["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


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
    if cfg.evaluate:
        return evaluate_checkpoint(cfg, user, stop, dist)
    # Every check that can fail on bad input comes first, before any folder, lock or file is made.
    explicit = None
    if cfg.resume not in (None, "latest", "auto"):
        explicit = load_or_usage_error(cfg.resume, "--resume")
        if "run_name" not in user:
            cfg.run_name = flags.check_run_name(explicit["config"]["run_name"], "the checkpoint's run name")
    if cfg.init_from:
        init = load_or_usage_error(cfg.init_from, "--init-from", full=False)
    paths = RunPaths(cfg)
    paths.check()
    seen = fingerprint(paths)
    state, source = find_resume_state(cfg, paths, explicit)
    changes = []
    if state is not None:
        cfg, changes = flags.merge_resumed(state["config"], cfg, user, source)
        if finished(cfg, state["progress"]):
            if tested(paths, state) or not paths.best.is_file():  # tested, or nothing to test
                log.info("run %s already finished: %s", cfg.run_name, finished_hint(cfg, state["progress"]))
                return 0
            log.info("run %s finished training at step %d, but its test did not complete (stopped or killed during "
                     "it): testing the best checkpoint now", cfg.run_name, state["progress"]["step"])
    else:
        check_history(cfg, paths)
    device, splits, parts = build_all(cfg, dist, stop)
    if state is not None:
        restore_parts(parts, state, source, cfg)
    elif cfg.init_from:
        fileformat.load_model_weights(parts.model, init, cfg.init_from, describe_model(cfg), evaluated=True)
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
            if fingerprint(paths) != seen:
                raise TrainingError("run '%s' changed while this trainer was starting (another trainer wrote it); "
                                    "run the command again" % cfg.run_name)
            if state is None:  # again under the lock: another run may have written there since the first look
                check_history(cfg, paths)
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
    recipe = describe_recipe(cfg, dist)
    if recipe:
        log.info("recipe: %s", recipe)
    text = flags.to_yaml(cfg)
    log.info("config:\n%s", text.rstrip(), extra={"file_only": True})
    log.info("config: every value in %s (and train.log)", paths.config_file)
    n_params = sum(p.numel() for p in parts.eval_model.parameters())
    log.info("model %s: %s parameters on %s (%d CPU threads)%s; %s (%s): %d train / %d val / %d test samples; %d "
             "steps in all", cfg.model, format(n_params, ","), parts.device, torch.get_num_threads(),
             " x %d processes (global batch %d)" % (dist.world, cfg.batch_size) if dist.enabled else "",
             cfg.dataset, cfg.task, len(parts.splits.train), len(parts.splits.val), len(parts.splits.test),
             parts.total_steps)

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
            restore_loop(trainer, state, dist, cfg)  # random streams last: nothing after may draw before step 1
        elif dist.rank > 0:
            seeding.seed_everything(seeding.rank_seed(cfg.seed, dist.rank))  # own dropout masks, same weights
        return trainer.fit(test_only=state is not None and finished(cfg, state["progress"]))
    finally:
        progress.close()
        board.close()


def evaluate_checkpoint(cfg, user, stop, dist):
    """--evaluate [PATH] --split val|test: a checkpoint's model on one split, with the checkpoint's own config (this
    checkout's folders); prints the metrics as JSON and writes them to logs/<run>/evaluate-<split>.json. The same
    code as the end of training, so the test metrics of metrics.json come out exactly again."""
    import json
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
    fileformat.load_model_weights(parts.model, state, path, describe_model(cfg), evaluated=True)
    seeding.set_deterministic(cfg.deterministic)
    model = torch.compile(parts.model) if cfg.compile else parts.model
    from ..loop.evaluation import evaluate, loader_for
    dist.start(device)
    try:
        loader = loader_for(getattr(splits, cfg.split), cfg, device, dist)
        values, _ = evaluate(model, loader, parts.task, parts.precision, device, dist, cfg.channels_last)
    finally:
        dist.stop()
    report = {"run": cfg.run_name, "checkpoint": str(path), "step": state["progress"]["step"], "split": cfg.split,
              cfg.split: {"%s/%s" % (cfg.split, k): v for k, v in values.items()}}
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    if dist.main:
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(paths.run_dir / ("evaluate-%s.json" % cfg.split), text)
        sys.stdout.write(text)
    return 0
