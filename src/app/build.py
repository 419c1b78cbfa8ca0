"""The parts of a run, built from its config and checked before any file is written: device, threads, data,
model (run once on two samples: a model that does not fit the data or task is one line), task, optimizer,
schedule, precision; wrap_model adds DDP and torch.compile once the run holds its lock."""
import logging
import os
from collections import namedtuple
from types import SimpleNamespace

import torch

from .. import augment, data, models, tasks
from ..data import recipe
from ..data.loading import place_splits, steps_per_epoch
from ..files.paths import check_folder
from ..loop import optim
from ..loop.precision import Precision
from ..runtime import compat, seeding
from ..runtime.errors import TrainingError, UsageError
from . import flags

log = logging.getLogger("train")

# model: what trains (DDP and/or compiled); eval_model: the same weights without the DDP wrapper
Parts = namedtuple("Parts", "model eval_model optimizer scheduler precision task splits device total_steps freeze")


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
    if cfg.pretrained and not cfg.lr_groups:  # fine-tuning: the fresh head at HEAD_LR x the pretrained layers' lr
        cfg.lr_groups = flags.LrGroups((name + ".*", recipe.HEAD_LR) for name in models.head_of(cfg, model))
    if (cfg.unfreeze_at or cfg.freeze_backbone) and (dist.enabled or cfg.cuda_graphs):
        raise UsageError("--unfreeze-at (--freeze-backbone) works in one process without --cuda-graphs (DDP and the "
                         "graphs fix which parameters train when they start); drop it, or train the two phases as "
                         "two runs with --init-from")
    optimizer = optim.build_optimizer(cfg, optim.param_groups(cfg, model), device)
    total = optim.total_steps(cfg, steps_per_epoch(len(splits.train), cfg.batch_size, dist.world))
    scheduler = optim.build_scheduler(cfg, optimizer, total)
    precision = Precision(device, pick_amp(cfg, device), cache=not cfg.cuda_graphs)
    freeze = optim.Freeze(model, cfg)
    freeze.update(0)  # before DDP wraps the model: it skips what does not train
    return Parts(model, model, optimizer, scheduler, precision, task, splits, device, total, freeze)


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
    for name in models.plain_names() if task is not None else ():
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


def build_data(cfg, stop):
    """The dataset's splits; a stop signal while it downloads or reads ends it at once (Stopped)."""
    check_folder(cfg.data_dir, "--data-dir")
    with stop.interrupting():
        try:
            return data.build(cfg)
        except OSError as err:
            raise TrainingError("cannot read the dataset %s in %s (%s)" % (cfg.dataset, cfg.data_dir,
                                                                           err.strerror or err))


def fit_recipe(cfg, splits, dist):
    """The training flags the data chooses (data/recipe.py) where the config leaves them unset: a fresh run of
    folder:PATH, csv:PATH or a dataset of your own. Said in one line; a resumed run has its values already."""
    filled = recipe.missing(cfg, recipe.FITTED)
    if not filled:
        return
    n = len(splits.train)
    values = recipe.fit(cfg, n, splits.input_shape, lambda batch: steps_per_epoch(n, batch, dist.world))
    for key in filled:
        setattr(cfg, key, augment.parse(values["augment"]) if key == "augment" else values.get(key, 0))
    flags.check_batch(cfg)
    log.info("%s", recipe.describe(cfg, splits, filled))


def fit_inputs(cfg):
    """--pretrained: the image size, resizing and normalization its weights were trained with (timm's data
    config) where the config leaves them unset (a resumed run has its values already). Said in one line."""
    get = models.hook(cfg, "inputs")
    if not cfg.pretrained or get is None:
        return
    filled = []
    for key, value in sorted(get(cfg).items()):
        if getattr(cfg, key) in (None, 0):
            setattr(cfg, key, flags.Floats(value) if key in ("mean", "std") else value)
            filled.append("%s %s" % (key.replace("_", "-"), getattr(cfg, key)))
    if filled:
        log.info("inputs as the pretrained weights of %s expect them: %s", cfg.model, ", ".join(filled))


def build_all(cfg, dist, stop):
    """(device, splits, parts) of a config: seeds and threads set, data built (a stop ends it), the recipe the data
    chooses, model and the rest."""
    seeding.seed_everything(cfg.seed)
    torch.set_num_threads(pick_threads(cfg))
    device = pick_device(cfg, dist)
    fit_inputs(cfg)
    splits = build_data(cfg, stop)
    fit_recipe(cfg, splits, dist)
    splits, where = place_splits(splits, cfg, device)
    if device.type != "cpu":
        log.info("data: %s", where)
    return device, splits, build_parts(cfg, splits, device, dist)
