"""Every flag of train.py, one record each (name, type, default, help, group, range check, scope), and what is
made from the records: the argparse parser (--help), the coercion of YAML values, the validation, which keys a
checkpoint passes on, the hparams panel; tests/test_readme.py ties the README's flag table to them.

Precedence, lowest first: defaults < checkpoint's config (on --resume) < --config FILE < command line.
The config is a SimpleNamespace (cfg.lr, cfg.batch_size); vars(cfg) is its plain dict.
Scopes: "run" (saved with the run, inherited on resume), "fixed" (a resume cannot change it: it says which samples
are validation data and what the model predicts), "local" (a place on this machine: taken from this invocation,
never from a checkpoint), "invocation" (this command only: never inherited, never in a config file).
"""
import argparse
import math
import os
import re
import sys
import urllib.parse
from collections import namedtuple
from types import SimpleNamespace

import yaml

from .. import augment, data, models, tasks
from ..data import folder, recipe
from ..files.paths import ROOT, read_bounded
from ..runtime.errors import UsageError
from ..runtime.text import redact, redact_values

MAX_CONFIG_BYTES = 1 << 20
MAX_RUN_NAME = 100
FLOAT32_MAX = 3.4028234663852886e38


def _finite(value, low=None):
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX and (low is None or value >= low)


def _env_float(name, default):
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


class _Items(tuple):
    """A flag's comma-separated items; str() is the text form saved with the run."""

    def __str__(self):
        return ",".join(str(item) for item in self)


class Shape(_Items):
    """--synthetic-shape: (C, H, W), 3,32,32."""


class Steps(_Items):
    """--lr-milestones: ascending step numbers, 32000,48000."""


class Patterns(_Items):
    """--freeze: parameter name patterns (fnmatch), 0.*,1.*."""


class Monitor(namedtuple("Monitor", "metric mode")):
    """--monitor METRIC:MODE, say val/acc:max; str() is that text (saved with the run)."""

    def __str__(self):
        return "%s:%s" % self


class LrGroups(tuple):
    """--lr-groups: ((pattern, factor), ...) in order; str() is the text form saved with the run, 11.*=10."""

    def __str__(self):
        return ",".join("%s=%s" % (pattern, _number(factor)) for pattern, factor in self)


def _number(value):
    return str(int(value)) if float(value).is_integer() else repr(value)


def _patterns(text):
    items = [p.strip() for p in str(text).split(",")]
    if str(text).strip() and not all(items):
        raise argparse.ArgumentTypeError("expected name patterns such as 0.*,1.* (comma-separated), got %r" % text)
    return Patterns(p for p in items if p)


def _lr_groups(text):
    groups = []
    for item in (p.strip() for p in str(text).split(",") if str(text).strip()):
        pattern, _, factor = item.rpartition("=")
        try:
            value = float(factor)
        except ValueError:
            value = None
        if not pattern or value is None or not _finite(value) or value <= 0:
            raise argparse.ArgumentTypeError("expected PATTERN=FACTOR items such as 11.*=10 (a positive factor of "
                                             "--lr), got %r" % text)
        groups.append((pattern, value))
    return LrGroups(groups)


def _shape(text):
    try:
        dims = tuple(int(d) for d in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected C,H,W such as 3,32,32, got %r" % text)
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError("expected three positive sizes C,H,W, got %r" % text)
    return Shape(dims)


def _steps(text):
    """--lr-milestones: ascending step numbers, given as 32000,48000 (or a YAML list)."""
    try:
        steps = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected step numbers such as 32000,48000, got %r" % text)
    if any(s < 1 for s in steps) or steps != sorted(set(steps)):
        raise argparse.ArgumentTypeError("expected ascending positive step numbers such as 32000,48000, got %r" % text)
    return Steps(steps)


class Floats(_Items):
    """--mean, --std: one value per image channel, 0.485,0.456,0.406."""


def _floats(text):
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or not all(_finite(v) for v in values):
        raise argparse.ArgumentTypeError("expected one value per channel such as 0.485,0.456,0.406 (or one value), "
                                         "got %r" % text)
    return Floats(values)


class Seeds(_Items):
    """--seeds: distinct seeds, 0,1,2."""


def _seeds(text):
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected seeds such as 0,1,2, got %r" % text)
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s < 2 ** 32 for s in seeds):
        raise argparse.ArgumentTypeError("expected distinct seeds in 0 .. 2**32-1 such as 0,1,2, got %r" % text)
    return Seeds(seeds)


def _monitor(text):
    """--monitor: auto (the task's own, resolved by validate) or METRIC:MODE (checked against the task there)."""
    if text == "auto":
        return text
    metric, _, mode = str(text).partition(":")
    return Monitor(metric, mode)


def _recipe(text):
    """--augment: auto (the dataset's own, resolved by validate), none, or NAME[:ARG],... parsed by augment."""
    return text if text == "auto" else augment.parse(text)


TYPED = (_Items, Monitor, LrGroups, augment.Recipe)  # what the parsers of the typed flags return


def plain(cfg):
    """vars(cfg) with every parsed value back in its text form: what a checkpoint, config.yaml, a --config file and
    the hparams panel hold (plain str, int, float, bool, None)."""
    return {k: _text(v) for k, v in vars(cfg).items()}


def plain_values(values):
    """A mapping of dests to values (parsed or not) in the text forms of plain()."""
    return {k: _text(v) for k, v in values.items()}


def typed(values):
    """A saved config (a checkpoint's "config", config.yaml) as a config again: each typed flag parsed from its
    text form, the rest as they are."""
    out = dict(values)
    for dest, f in BY_DEST.items():
        if f.type in _TEXT_TYPES and isinstance(out.get(dest), str):
            out[dest] = f.type(out[dest])
    return SimpleNamespace(**out)


def _text(value):
    return str(value) if isinstance(value, TYPED) else value


# check: (test of the value, what it must be), or None; the message is "--NAME must be WHAT, got VALUE"
Flag = namedtuple("Flag", "name type default help group check scope choices metavar const")


def flag(name, type=str, default=None, help="", check=None, *, scope="run", choices=None, metavar=None, const=None):
    return Flag(name, type, default, help, None, check, scope, choices, metavar, const)


def _records(items):
    """The flags in order, each in the group (a --help section) of the title above it."""
    group, records = None, []
    for item in items:
        if isinstance(item, str):
            group = item
        else:
            records.append(item._replace(group=group))
    return records


def _in(low, high):
    return (lambda v: low <= v <= high, "in %s .. %s" % (low, high))


def _at_least(low):
    return (lambda v: v >= low, ">= %s" % low)


def _fraction(what="in [0, 1)"):
    return (lambda v: _finite(v) and 0 <= v < 1, what)


SUPPRESS = argparse.SUPPRESS
_SWEEP_TRIAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*:[0-9a-f]*:[0-9]+")
FLAGS = _records([
    "experiment",
    flag("config", metavar="FILE.yaml", help="read flags from a YAML file (command line wins)",
         scope="invocation"),
    flag("run-name", metavar="NAME", help="name of this run (None: <dataset>-<model>)"),
    flag("seed", int, 0, "seed for weights, data order and dropout (0 to 2**32-1)",
         (lambda v: 0 <= v < 2 ** 32, "in 0 .. 2**32-1")),
    flag("deterministic", bool, False, "deterministic kernels: bit-exact runs and resumes"),
    flag("sweep", str, None, "run the trials of this sweep (README \"Experiments\") as runs <sweep>-<trial>; the "
         "same command again continues it", scope="invocation", metavar="SPEC.yaml"),
    flag("seeds", _seeds, None, "train these flags once per seed (a sweep named <run-name>-seeds), then report "
         "mean, std and a 95%% interval of every test metric", scope="invocation", metavar="S1,S2,..."),
    flag("parallel", int, 1, "sweeps: trials at once in this process (one per GPU where there are GPUs; "
         "other processes running the same sweep share its trials)", _in(1, 1024), scope="invocation",
         metavar="N"),
    flag("retry-failed", bool, False, "sweeps: run the trials that failed again (otherwise they are reported and "
         "skipped)", scope="invocation"),
    flag("reproduce", str, None, "train again with the config recorded by run RUN (as RUN-reproduce, or "
         "--run-name), after saying what differs in code and environment", scope="invocation", metavar="RUN"),

    "data",
    flag("dataset", str, "digits", "dataset; folder:PATH reads your images from PATH/<class>/<image>, csv:PATH "
         "your table (see --target)",
         metavar="{%s}" % ",".join(data.choices())),
    flag("val-split", float, None, "share of the training data held out for validation, by a fixed seeded split "
         "(None: the dataset's own, 0.1 for most); fixed for a run", scope="fixed", metavar="FRACTION"),
    flag("test-split", float, 0.2, "share held out as test data, by a fixed seeded split, where the data has no test "
         "set of its own (folder:PATH without PATH/test); fixed for a run", (lambda v: 0 < v < 1, "in (0, 1)"),
         scope="fixed", metavar="FRACTION"),
    flag("split-by", str, "class", "folder and csv data: which samples are held out for val and test; class: each "
         "class in proportion, by a hash of each image's path (or row's text) within its class (a file added moves at "
         "most one other of its class a split; regression, multilabel: as path); path: by that hash alone (files "
         "added later move no other); position: by a seeded permutation of the list (runs started before these); "
         "fixed for a run", scope="fixed", choices=("class", "path", "position")),
    flag("allow-data-change", bool, False, "resume although the data's files changed since the checkpoint (the "
         "record notes it; otherwise such a resume is refused)", scope="invocation"),
    flag("image-size", int, 0, "folder data: each image becomes N x N (shorter side resized, the centre cut; 0: "
         "the images' own size when all share one square size)", _in(0, 4096), scope="fixed", metavar="N"),
    flag("interpolation", str, None, "folder data: how images are resized (None: bilinear, or what --pretrained "
         "weights were trained with)", scope="fixed", choices=folder.RESAMPLE),
    flag("crop-pct", float, None, "folder data: the centre cut's share of the resized image (the shorter side is "
         "resized to N / CROP_PCT, then N x N cut; None: 1, or what --pretrained weights were trained with)",
         (lambda v: _finite(v) and 0.1 <= v <= 1, "in 0.1 .. 1"), scope="fixed", metavar="CROP_PCT"),
    flag("mean", _floats, None, "folder data: per-channel mean the inputs are normalized by (None: the train split's, "
         "or --pretrained weights' own)", scope="fixed", metavar="M1,M2,M3"),
    flag("std", _floats, None, "folder data: per-channel standard deviation (None: the train split's, or "
         "--pretrained weights' own)", scope="fixed", metavar="S1,S2,S3"),
    flag("target", str, None, "csv data: the column(s) to predict, COLUMN[,COLUMN...] (None: the last column)",
         scope="fixed", metavar="COLUMN"),
    flag("id-column", str, None, "csv data: the column naming each row, left out of the features and written beside "
         "each prediction (None: a column named id, *_id, *Id or *ID with a value of its own in every row; none: "
         "no such column)", scope="fixed", metavar="COLUMN"),
    flag("label-sep", str, "|", "csv data with --task multilabel: what joins a row's labels in one target column",
         (lambda v: len(v) > 0, "a non-empty string"), scope="fixed", metavar="SEP"),
    flag("image-cache", str, "auto", "folder data: decode the images once and keep them in memory and in "
         "DATA_DIR/.cache/ (auto: when they take under a quarter of memory; off: the loader reads the files each "
         "epoch)", choices=("auto", "on", "off")),
    flag("data-dir", str, str(ROOT / "data"), "where datasets live", scope="local", metavar="DIR"),
    flag("num-workers", int, -1, "DataLoader worker processes (-1: per device and dataset, see README)",
         (lambda v: -1 <= v <= 256, "in 0 .. 256 (or -1: automatic)"), metavar="N"),
    flag("pin-memory", str, "auto", "pinned batches (auto: on CUDA)", choices=("auto", "on", "off")),
    flag("prefetch-factor", int, 0, "batches each worker loads ahead (0: torch's default)", _at_least(0),
         metavar="N"),
    flag("persistent-workers", bool, True, "keep DataLoader workers alive between epochs"),
    flag("download", bool, True, "download a missing dataset (--no-download: error instead)"),
    flag("data-mirror", str, os.environ.get("DATA_MIRROR", ""), "fetch datasets from URL/<dataset>/<file> (env "
         "DATA_MIRROR)", scope="local", metavar="URL"),
    flag("download-timeout", float, 60.0, "a download fails when no data came for this long",
         (lambda v: v > 0 and _finite(v), "> 0 seconds"), metavar="SECONDS"),
    flag("download-deadline", float, 3600.0, "a download fails when one file took longer than this in all (a mirror "
         "that trickles)", (lambda v: v > 0 and _finite(v), "> 0 seconds"), metavar="SECONDS"),
    flag("data-checksums", str, os.environ.get("DATA_CHECKSUMS", ""), "YAML/JSON {'<dataset>/<file>': md5} for a "
         "mirror with re-packed files (env DATA_CHECKSUMS)", scope="local", metavar="FILE"),
    flag("synthetic-size", int, 10000, "synthetic: training samples", _at_least(10), metavar="N"),
    flag("synthetic-shape", _shape, "3,32,32", "synthetic: sample shape", metavar="C,H,W"),
    flag("synthetic-classes", int, 10, "synthetic: classes", _at_least(2), metavar="K"),

    "model",
    flag("model", str, "auto", "model: %s, or timm:NAME, any architecture of the timm library (auto: the dataset's "
         "own: cnn for images, mlp for tables, fcn for segmentation)" % ", ".join(models.plain_names()),
         (lambda v: v == "auto" or models.known(v), "auto or one of %s" % ", ".join(models.choices())),
         metavar="NAME"),
    flag("pretrained", help="timm models: start from pretrained weights, the architecture's default ones from the "
         "Hugging Face hub (cached in HF_HOME), or PATH, a .safetensors, .pth or .bin file; their input size, "
         "resizing and normalization become the data's, and the fine-tuning recipe the default (README \"Fine-"
         "tuning a pretrained model\")", metavar="PATH", const="hub"),
    flag("drop-path", float, 0.0, "timm models: stochastic depth rate (0: off)", _fraction(), metavar="RATE"),
    flag("task", str, "auto", "what the model learns: loss, metrics, pictures (auto: the dataset's own)",
         scope="fixed", choices=("auto",) + tuple(tasks.names())),
    flag("loss", str, "auto", "regression loss (auto: mse)", choices=("auto", "mse", "l1", "huber")),
    flag("width", int, 0, "hidden units / base channels (0: model's own)", _in(0, 65536), metavar="N"),
    flag("depth", int, None, "layers (None: the dataset's own for its model, or chosen from the data; 0: the "
         "model's own)", _in(0, 1000), metavar="N"),
    flag("dropout", float, 0.0, "dropout probability", _fraction()),
    flag("init-from", metavar="PATH", help="start from the weights of this checkpoint (fine-tuning; its evaluated "
         "weights: the EMA where it has one)", scope="invocation"),
    flag("init-partial", bool, False, "with --init-from: load only the tensors whose names and shapes match the "
         "model; the rest (a new head) start fresh", scope="invocation"),
    flag("freeze", _patterns, "", "keep the parameters whose names match these patterns fixed (fnmatch, comma-"
         "separated; --init-from prints the names)", metavar="PATTERN,..."),
    flag("unfreeze-at", int, 0, "train the --freeze parameters too from this step on (0: never)", _at_least(0),
         metavar="STEP"),

    "optimization",
    flag("epochs", int, None, "passes over the training set (None: the data's own; see README \"Defaults that fit "
         "your data\")", _at_least(1)),
    flag("max-steps", int, 0, "stop after N steps in all (0: no limit)", _at_least(0), metavar="N"),
    flag("batch-size", int, None, "samples per optimizer step, over all processes and micro-batches (None: the "
         "data's own)", _at_least(1), metavar="N"),
    flag("accum-steps", int, 1, "gradient accumulation: each step's batch runs as N micro-batches of 1/N (memory "
         "of one)", metavar="N"),
    flag("lr", float, None, "peak learning rate (None: the data's own)", (lambda v: v > 0, "> 0")),
    flag("optimizer", str, "auto", "optimizer (auto: the data's own)", choices=("auto", "sgd", "adam", "adamw")),
    flag("momentum", float, 0.9, "SGD momentum, or Adam's beta1", _fraction()),
    flag("weight-decay", float, None, "L2 penalty, decoupled for adamw (None: the data's own)", _at_least(0)),
    flag("scheduler", str, "cosine", "learning-rate schedule after warmup",
         choices=("constant", "cosine", "linear", "step", "multistep")),
    flag("warmup-steps", int, None, "linear warmup from 0 (None: the data's own)", _at_least(0), metavar="N"),
    flag("lr-step-size", int, 1000, "step schedule: decay every N steps", _at_least(1), metavar="N"),
    flag("lr-milestones", _steps, "", "multistep schedule: multiply the lr by --lr-gamma at these steps",
         metavar="S1,S2"),
    flag("lr-groups", _lr_groups, "", "per-group learning rates: parameters whose names match PATTERN train at "
         "--lr times FACTOR (the first pattern that matches; the rest at --lr)", metavar="PATTERN=FACTOR,..."),
    flag("layer-decay", float, 0.0, "layer-wise lr decay: each block from the head down trains at FACTOR times the "
         "lr of the one above it (timm models; 0: off; say 0.75 for a ViT)", (lambda v: _finite(v) and 0 <= v <= 1,
                                                                              "in 0 .. 1 (0: off)"),
         metavar="FACTOR"),
    flag("freeze-backbone", int, 0, "train only the classifier head for the first N steps, then everything (a "
         "linear probe before fine-tuning; 0: off)", _at_least(0), metavar="STEPS"),
    flag("lr-gamma", float, 0.1, "step and multistep schedules: decay factor",
         (lambda v: 0 < v <= 1, "in (0, 1]")),
    flag("grad-clip", float, None, "clip gradient norm (0: off; None: the data's own)", _at_least(0),
         metavar="NORM"),

    "recipe (regularization)",
    flag("augment", _recipe, "auto", "training-batch augmentation on the device, e.g. crop:4,flip (auto: the dataset's "
         "standard recipe; see README)", metavar="auto|none|NAME[:ARG],..."),
    flag("label-smoothing", float, 0.0, "classification: cross-entropy against targets smoothed by EPS (0: off)",
         _fraction(), metavar="EPS"),
    flag("class-weights", str, "none", "classification: weigh each class's training loss (balanced: by n / (classes "
         "x its train count), so that a small class counts as much as a large one)", choices=("none", "balanced")),
    flag("ema", float, 0.0, "evaluate, pick the best and test an exponential moving average of the weights (say "
         "0.999; 0: off)", _fraction("a decay in [0, 1) such as 0.999 (0: off)"),
         metavar="DECAY"),
    flag("early-stop", int, 0, "end the run after PATIENCE evaluations without --monitor improving (0: off)",
         (lambda v: v >= 0, ">= 0 evaluations (0: off)"), metavar="PATIENCE"),
    flag("early-stop-delta", float, 0.0, "early stopping: an improvement must exceed DELTA to count", _at_least(0),
         metavar="DELTA"),

    "runtime",
    flag("device", str, "auto", "auto, cpu, cuda or cuda:N"),
    flag("threads", int, 0, "CPU threads for torch's math in each process (0: OMP_NUM_THREADS if set, else half the "
         "process's cores, at most 4)", _in(0, 1024), metavar="N"),
    flag("amp", str, "off", "mixed precision on CUDA", choices=("off", "fp16", "bf16")),
    flag("compile", bool, False, "torch.compile the model (torch >= 2.0)"),
    flag("cuda-graphs", bool, False, "replay the model's training forward and backward from CUDA graphs (torch >= "
         "1.10; a model that cannot be captured trains without them)"),
    flag("data-on-device", str, "auto", "hold an in-memory dataset on the GPU and make batches there (auto: when it "
         "takes under a quarter of the free GPU memory)", choices=("auto", "on", "off")),
    flag("channels-last", bool, False, "channels-last memory format for 4-d inputs (convolutions on GPUs)"),

    "logging and checkpoints",
    flag("log-every", int, 10, "train scalars to TensorBoard", _at_least(1),
         metavar="STEPS"),
    flag("eval-every", int, 0, "evaluate (0: at each epoch's end)", _at_least(0),
         metavar="STEPS"),
    flag("ckpt-every", int, 100, "save latest and models/tmp (0: only at the end and on stop)", _at_least(0),
         metavar="STEPS"),
    flag("async-ckpt", bool, True, "write checkpoints in a background thread (--no-async-ckpt: in the loop)"),
    flag("keep-last", int, 3, "checkpoints kept in models/tmp/<run>/", _at_least(1),
         metavar="N"),
    flag("monitor", _monitor, "auto", "best checkpoint by this validation metric, mode min or max (auto: the task's "
         "own, say val/acc:max for classification, val/rmse:min for regression)",
         metavar="METRIC:MODE"),
    flag("resume", help="continue this run's latest checkpoint (error if none); auto: latest if any, else start "
         "fresh; PATH: that checkpoint", scope="invocation", metavar="auto|PATH",
         const="latest"),
    flag("logs-dir", str, str(ROOT / "logs"), "TensorBoard and program logs",
         scope="local", metavar="DIR"),
    flag("models-dir", str, str(ROOT / "models"), "best/, latest/, tmp/", scope="local",
         metavar="DIR"),
    flag("progress", str, "auto", "progress bar on a terminal, plain lines otherwise",
         choices=("auto", "bar", "plain")),
    flag("tensorboard", bool, True, "write TensorBoard events (--no-tensorboard: off)"),
    flag("stop-grace", float, _env_float("STOP_GRACE", 10.0), "seconds a stop signal leaves before a kill (docker "
         "stop: 10; env STOP_GRACE); the first save says whether a checkpoint fits in them", _at_least(0),
         metavar="SECONDS"),
    flag("slurm-lead", float, 0.0, "Slurm: the seconds between the job's warning signal (#SBATCH --signal=B:USR1@"
         "SECONDS) and its time limit; the first save warns when a step plus a save do not fit (0: not checked)",
         _at_least(0), scope="local", metavar="SECONDS"),
    flag("stop-after-step", int, 0, SUPPRESS, _at_least(0), scope="invocation"),
    # this run is trial N of sweep SWEEP (ID), set by the sweep driver: it resumes only its own checkpoints
    flag("sweep-trial", str, None, SUPPRESS, (lambda v: v is None or bool(_SWEEP_TRIAL.fullmatch(v)),
                                              "SWEEP:ID:N"), scope="invocation"),
    flag("sync-check", bool, False, SUPPRESS, scope="invocation"),
    flag("prepare-data", bool, False, "download/verify the dataset (and the --pretrained weights), then exit",
         scope="invocation"),
    flag("evaluate", help="evaluate a checkpoint without training (no value: this run's best), print and write the "
         "metrics as JSON, then exit", scope="invocation", metavar="PATH",
         const="best"),
    flag("predict", str, None, "the run's best model on new inputs (an image, a folder of images, a CSV file): "
         "writes logs/<run>/predictions-<name>.csv, then exits", scope="invocation", metavar="INPUT"),
    flag("split", str, "test", "--evaluate on this split", scope="invocation",
         choices=("val", "test")),
    flag("verify-resume", int, 0, "self-test of exact resume with these flags: train K steps in one go and with a "
         "stop and a resume half way (in a temporary folder), compare weights and scalars, print PASS or what "
         "differs", (lambda v: v == 0 or 2 <= v <= 100000, "2 steps or more (and at "
         "most 100000)"), scope="invocation", metavar="K"),
    flag("doctor", bool, False, "print versions, GPUs and whether this torch build supports them, run one step, exit",
         scope="invocation"),
])
BY_DEST = {f.name.replace("-", "_"): f for f in FLAGS}
# The value a run's checkpoint stands for when it lacks a fixed flag (written before the flag existed): such a run
# resumes as it was trained
LEGACY = {"split_by": "position"}
# (the scopes as key sets, for the merge on resume and the config file)
PER_INVOCATION = tuple(d for d, f in BY_DEST.items() if f.scope == "invocation")
_TEXT_TYPES = {f.type for f in FLAGS if f.type not in (None, str, int, float, bool)}  # the typed flags' parsers
FIXED_ON_RESUME = tuple(d for d, f in BY_DEST.items() if f.scope == "fixed")
LOCAL = tuple(d for d, f in BY_DEST.items() if f.scope == "local")
FINITE = tuple(d for d, f in BY_DEST.items() if f.type is float and f.scope != "local")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError("%s (see --help)" % message)


def build_parser():
    """The argparse parser of the records: one group per record group, in order; booleans with a --no-X form."""
    p = _Parser(
        prog="train.py",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a model; resume exactly where it stopped; watch it in TensorBoard.",
        epilog="Boolean flags have a --no-X form. Any flag can also be a key of --config FILE.yaml "
        "(dashes or underscores); the command line wins over the file.",
    )
    groups = {}
    for f in FLAGS:
        g = groups.get(f.group) or groups.setdefault(f.group, p.add_argument_group(f.group))
        dest = f.name.replace("-", "_")
        if f.type is bool and f.scope == "invocation" and f.help != SUPPRESS:  # a command: --doctor
            g.add_argument("--" + f.name, action="store_true", help=f.help)
        elif f.type is bool:
            g.add_argument("--" + f.name, dest=dest, action="store_true", default=f.default, help=f.help)
            g.add_argument("--no-" + f.name, dest=dest, action="store_false", help=SUPPRESS)
        elif f.const is not None:
            g.add_argument("--" + f.name, nargs="?", const=f.const, metavar=f.metavar, help=f.help)
        else:
            kind = f.type if f.type is not str else None
            g.add_argument("--" + f.name, type=kind, default=f.default, choices=f.choices, metavar=f.metavar,
                           help=f.help)
    return p


def _explicit_keys(parser, argv):
    """The dests the command line set itself (defaults suppressed)."""
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def _coerce(action, key, value, where):
    """One YAML value checked against its flag's type and choices."""
    bad = "%s: %s is not a valid value for %s" % (where, _short(value), key)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UsageError(bad + " (expected true or false)")
        return value
    if isinstance(value, bool) and action.const is not None and action.nargs == "?":
        return action.const if value else None  # pretrained: true (a flag given without its value) / false
    if value is None:
        if action.default is None:
            return None
        raise UsageError(bad)
    kind = action.type
    if kind is _steps and isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                         for v in value):
        value = ",".join(str(v) for v in value)
    if kind is _floats and isinstance(value, (list, int, float)) and not isinstance(value, bool):
        value = ",".join(str(v) for v in (value if isinstance(value, list) else [value]))
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise UsageError(bad)
    if kind is int and not isinstance(value, int):
        raise UsageError(bad + " (expected an integer)")
    if kind is float and not isinstance(value, (int, float)):
        raise UsageError(bad + " (expected a number)")
    if (kind is None or kind in _TEXT_TYPES) and not isinstance(value, str):
        raise UsageError(bad + " (expected a string)")
    try:
        value = kind(value) if kind is not None else value
    except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
        raise UsageError("%s: %s: %s" % (where, key, err))
    except UsageError as err:  # a parser that names the flag itself (--augment)
        raise UsageError("%s: %s" % (where, err))
    if action.choices is not None and value not in action.choices:
        raise UsageError("%s (choose from %s)" % (bad, ", ".join(map(str, action.choices))))
    if key == "model" and not BY_DEST["model"].check[0](value):  # argparse choices cannot hold timm:NAME
        raise UsageError("%s (%s)" % (bad, BY_DEST["model"].check[1]))
    return value


def _short(value, limit=60):
    """repr(value) cut to limit characters, for error lines (a YAML alias bomb has a huge repr)."""
    text = repr(value) if not isinstance(value, (list, dict)) else "a %s" % type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _read_yaml(path, parser):
    where = "config file %s" % path
    blob = read_bounded(path, "--config", MAX_CONFIG_BYTES)  # a config holds flags only
    try:
        raw = yaml.safe_load(blob.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError("%s: not UTF-8 text; save it as UTF-8" % where)
    except RecursionError:
        raise UsageError("%s: nested too deeply; a config is a flat mapping of flag names to values" % where)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = " at line %d" % (mark.line + 1) if mark else ""
        raise UsageError("%s: not valid YAML%s: %s" % (where, at, getattr(err, "problem", None) or err))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError("%s: expected a mapping of flag names to values" % where)
    return coerce_values(raw, where, parser)


def read_config(path):
    """The checked values of a --config file (a sweep spec's `config:` too)."""
    return _read_yaml(path, build_parser())


def coerce_values(raw, where, parser=None):
    """A mapping of flag names (dashes or underscores) to YAML values, each checked as its flag's value: the dests
    and values; UsageError for an unknown key, a per-invocation one, or a bad value (`where` names the source)."""
    parser = parser or build_parser()
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    values = {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in PER_INVOCATION:
            raise UsageError("%s: unknown key %r" % (where, key))
        values[dest] = _coerce(actions[dest], key, value, where)
    return values


def parse(argv=None, base=None):
    """(config, keys the user set in the file or on the command line). base: values below --config and the command
    line (a sweep's trial, a run reproduced), already checked by coerce_values; they count as set by the user."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    cli = parser.parse_args(argv)
    explicit = _explicit_keys(parser, argv)
    values = vars(cli)
    user = set(explicit)
    for key, value in (base or {}).items():
        if key not in explicit:
            values[key] = value
            user.add(key)
    if cli.config:
        from_file = _read_yaml(cli.config, parser)
        for key, value in from_file.items():
            if key not in explicit:
                values[key] = value
        user |= set(from_file)
    cfg = SimpleNamespace(**values)
    validate(cfg)
    return cfg, user


def merge_resumed(saved, cfg, user, source="the checkpoint"):
    """The config of a resumed run: the checkpoint's (at `source`), with what the user set now on top; every value
    checked as a flag's would be.

    Returns (config, changes) where changes lists (key, old, new) for every value that moved.
    """
    merged = dict(vars(cfg))
    actions = {a.dest: a for a in build_parser()._actions}
    saved = dict(LEGACY, **saved)  # what a checkpoint from before a fixed flag existed did without it
    for key, old in saved.items():
        if key in actions and key not in PER_INVOCATION:
            try:  # each value checked as a flag's value is (type, choices, format), also where the user overrides it
                old = _coerce(actions[key], key, old, "%s: its config" % source)
            except UsageError as err:
                raise UsageError("%s; it was not written by this project: resume another checkpoint" % err)
        unset = key in recipe.FITTED and recipe.unset(merged.get(key))  # left to the data: the run's value
        if key in merged and (key not in user or unset) and key not in PER_INVOCATION and key not in LOCAL:
            merged[key] = old
    for key in FIXED_ON_RESUME:
        if key in user and key in saved and saved[key] != merged[key]:
            raise UsageError("--%s cannot change on resume (this run has %s); start another run with --run-name"
                             % (key.replace("_", "-"), _short(saved[key])))
    if "epochs" in user and "max_steps" not in user and merged.get("max_steps"):
        merged["max_steps"] = 0  # --epochs given on resume is the new limit: the old step limit goes
        user = set(user) | {"max_steps"}
    changes = [(k, saved[k], _text(merged[k])) for k in sorted(user)
               if k in saved and k not in PER_INVOCATION and k not in LOCAL and saved[k] != _text(merged[k])]
    out = SimpleNamespace(**merged)
    try:
        validate(out)
    except UsageError as err:
        raise UsageError("%s (with the config of %s)" % (err, source))
    return out, changes


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,4})?")


def check_run_name(name, what="--run-name"):
    """name if it is a usable run name (a file name in logs/ and models/), else UsageError."""
    if not isinstance(name, str) or len(name) > MAX_RUN_NAME or not _RUN_NAME.fullmatch(name):
        raise UsageError("%s %s: use up to %d letters, digits, '.', '_' and '-', starting with a letter or digit"
                         % (what, _short(name), MAX_RUN_NAME))
    return name


def _data_name(dataset):
    """The dataset's part of a default run name: its name, or the folder's or file's for KIND:PATH (my pets ->
    my-pets, houses.csv -> houses)."""
    if ":" not in dataset:
        return dataset
    base = os.path.basename(os.path.normpath(data.location(dataset)))
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", base[:-4] if base.lower().endswith(".csv") else base)
    return name.strip("-._")[:MAX_RUN_NAME - 20] or data.kind(dataset)


def _url_ok(url):
    """Whether --data-mirror is empty or a URL urllib can fetch (a bad port is caught here, not mid-download)."""
    if not url:
        return True
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname)) or (parts.scheme == "file" and bool(parts.path))


def validate(cfg):
    """Raise UsageError naming the first invalid value: each record's own check, then what depends on several."""
    def need(ok, message):
        if not ok:
            raise UsageError(message)

    need(data.known(cfg.dataset), "--dataset %s: no such dataset (known: %s)" % (_short(cfg.dataset),
                                                                             ", ".join(data.choices())))
    if cfg.model == "auto":
        cfg.model = data.defaults(cfg.dataset, cfg)["model"]
    need(models.known(cfg.model), "--model %s: no such model (known: %s)" % (_short(cfg.model),
                                                                         ", ".join(models.choices())))
    need(not cfg.pretrained or models.hook(cfg, "pretrained") is not None, "--pretrained: model %s has no pretrained "
         "weights; use a timm model (--model timm:NAME), or --init-from a checkpoint of this project"
         % _short(cfg.model))
    need(cfg.task == "auto" or cfg.task in tasks.names(), "--task %s: no such task (known: %s)"
         % (_short(cfg.task), ", ".join(tasks.names())))
    if cfg.run_name is None:
        cfg.run_name = "%s-%s" % (_data_name(cfg.dataset), cfg.model.replace(":", "-").replace("/", "-"))
    check_run_name(cfg.run_name)
    for dest in FINITE:
        value = getattr(cfg, dest)
        need(value is None or _finite(value), "--%s must be a finite number within float32 range, got %s"
             % (BY_DEST[dest].name, _short(value)))
    for dest, f in BY_DEST.items():
        if f.check is not None:
            ok, what = f.check
            value = getattr(cfg, dest)
            need((value is None and f.default is None) or ok(value), "--%s must be %s, got %s"
                 % (f.name, what, _short(value)))
    need(not (cfg.pretrained and cfg.init_from), "--pretrained and --init-from do not go together: --init-from "
         "starts from a trained checkpoint's weights already; drop one")
    need(not (cfg.freeze_backbone and cfg.freeze), "--freeze-backbone and --freeze do not go together: "
         "--freeze-backbone N is --freeze with every parameter outside the head and --unfreeze-at N; drop one")
    need(not cfg.unfreeze_at or bool(cfg.freeze), "--unfreeze-at needs --freeze PATTERN,... (the parameters to "
         "unfreeze)")
    need(cfg.scheduler != "multistep" or bool(cfg.lr_milestones),
         "--scheduler multistep needs --lr-milestones S1,S2 (the steps where the lr is multiplied by --lr-gamma)")
    need(bool(_DEVICE.fullmatch(cfg.device)), "--device %s: use auto, cpu, cuda or cuda:N" % _short(cfg.device))
    need(_url_ok(cfg.data_mirror), "--data-mirror %s: not a URL such as http://host:8000/datasets (scheme http, "
         "https or file, a host, a numeric port)" % _short(redact(cfg.data_mirror)))
    need(not (cfg.predict and (cfg.resume or cfg.evaluate)), "--predict INPUT uses a trained run's best model; "
         "drop --resume and --evaluate")
    need(not (cfg.resume and cfg.evaluate), "--resume and --evaluate do not go together: --evaluate [PATH] tests a "
         "checkpoint without training, --resume trains on; drop one")
    _resolve_auto(cfg, need)
    check_batch(cfg)  # the shipped datasets' batch size is known by now; one the data chooses, once it is read


def check_batch(cfg):
    """--accum-steps against --batch-size (once both are known: a batch size the data chooses is checked here
    when it has been chosen)."""
    if cfg.batch_size is not None and not 1 <= cfg.accum_steps <= cfg.batch_size:
        raise UsageError("--accum-steps must be in 1 .. --batch-size (%d), got %d" % (cfg.batch_size,
                                                                                    cfg.accum_steps))


def _resolve_auto(cfg, need):
    """The dataset's and the task's own values for what is auto (or None), each checked against the task."""
    meta = data.defaults(cfg.dataset, cfg if "auto" in (cfg.task, cfg.model) else None)  # csv:PATH reads its file
    if cfg.task == "auto":
        cfg.task = meta["task"]
    if cfg.model == "auto":
        cfg.model = meta["model"]
    if not cfg.depth and cfg.model == meta["model"] and meta.get("depth"):
        cfg.depth = meta["depth"]  # the dataset's own depth for its own model (src/data/*.py: register)
    if meta["recipe"] == "classic" and not cfg.pretrained:  # the shipped datasets' measured recipe; others (and
        # pretrained weights, which fine-tune): chosen from the data once read
        recipe.fill(cfg, recipe.CLASSIC)
        if cfg.depth is None:
            cfg.depth = 0
    if cfg.val_split is None:
        cfg.val_split = meta["val_split"]
    need(_finite(cfg.val_split) and 0 < cfg.val_split < 1, "--val-split must be a fraction between 0 and 1, got %s"
         % _short(cfg.val_split))
    task = tasks.get(cfg.task)
    if cfg.monitor == "auto":
        cfg.monitor = _monitor(task.MONITOR)
    known = ["val/" + m for m in task.METRICS]
    need(cfg.monitor.metric in known and cfg.monitor.mode in ("min", "max"), "--monitor %r: use METRIC:min or "
         "METRIC:max with METRIC one of %s (the metrics of --task %s)" % (str(cfg.monitor), ", ".join(known), cfg.task))
    need(cfg.loss == "auto" or cfg.task == "regression", "--loss %s applies to --task regression, not %s"
         % (cfg.loss, cfg.task))
    need(not cfg.label_smoothing or cfg.task == "classification", "--label-smoothing applies to --task "
         "classification, not %s" % cfg.task)
    if cfg.augment == "auto" and not (meta["recipe"] == "fit" and meta["augment"] == "none"):
        cfg.augment = augment.parse(meta["augment"])  # its arguments are checked against the data once it is built
    # (else it stays auto: data/recipe.py chooses it from the data once read)


def to_yaml(cfg):
    """config.yaml and train.log's config: the plain values, credentials in URLs redacted."""
    return yaml.safe_dump(dict(sorted(redact_values(plain(cfg)).items())), default_flow_style=False,
                          sort_keys=False)


def hparams(cfg):
    """The values of the hparams panel: the run's flags, without the per-invocation ones and the local folders."""
    return {k: v for k, v in redact_values(plain(cfg)).items()
            if k not in PER_INVOCATION and not k.endswith("_dir") and k not in ("progress", "tensorboard")}
