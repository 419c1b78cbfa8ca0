"""Every flag of train.py, the YAML config file, and their merge into one validated config.

Precedence, lowest first: defaults < checkpoint's config (on --resume) < --config FILE < command line.
The config is a SimpleNamespace (cfg.lr, cfg.batch_size); vars(cfg) is its plain dict.
"""
import argparse
import math
import os
import re
import sys
import urllib.parse
from types import SimpleNamespace

import yaml

from .. import augment, data, models, tasks
from ..runtime.errors import UsageError
from ..files.paths import ROOT, read_bounded

# Keys that belong to one invocation: never inherited from a checkpoint, never in a config file.
PER_INVOCATION = ("config", "resume", "init_from", "prepare_data", "doctor", "verify_resume", "stop_after_step",
                  "evaluate", "split", "sync_check")
# Keys a resumed run cannot change: they define which samples are validation data and what the model predicts.
FIXED_ON_RESUME = ("val_split", "task")
# Keys that name places on this machine: a resumed run takes them from this invocation (its defaults are this
# checkout's folders), never from a checkpoint written in another checkout or container.
LOCAL = ("data_dir", "logs_dir", "models_dir", "data_checksums")
MAX_CONFIG_BYTES = 1 << 20
MAX_RUN_NAME = 100
FLOAT32_MAX = 3.4028234663852886e38


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError("%s (see --help)" % message)


def _shape(text):
    try:
        dims = tuple(int(d) for d in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected C,H,W such as 3,32,32, got %r" % text)
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError("expected three positive sizes C,H,W, got %r" % text)
    return ",".join(str(d) for d in dims)


def _steps(text):
    """--lr-milestones: ascending step numbers, given as 32000,48000 (or a YAML list)."""
    try:
        steps = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected step numbers such as 32000,48000, got %r" % text)
    if any(s < 1 for s in steps) or steps != sorted(set(steps)):
        raise argparse.ArgumentTypeError("expected ascending positive step numbers such as 32000,48000, got %r" % text)
    return ",".join(str(s) for s in steps)


def _env_float(name, default):
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def _bool_flag(group, name, default, help):
    dest = name.replace("-", "_")
    group.add_argument("--" + name, dest=dest, action="store_true", default=default, help=help)
    group.add_argument("--no-" + name, dest=dest, action="store_false", help=argparse.SUPPRESS)


def build_parser():
    p = _Parser(
        prog="train.py",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a model; resume exactly where it stopped; watch it in TensorBoard.",
        epilog="Boolean flags have a --no-X form. Any flag can also be a key of --config FILE.yaml "
        "(dashes or underscores); the command line wins over the file.",
    )
    g = p.add_argument_group("experiment")
    g.add_argument("--config", metavar="FILE.yaml", help="read flags from a YAML file (command line wins)")
    g.add_argument("--run-name", metavar="NAME", help="name of this run (None: <dataset>-<model>)")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, data order and dropout (0 to 2**32-1)")
    _bool_flag(g, "deterministic", False, "deterministic kernels: bit-exact runs and resumes")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", choices=data.names(), help="dataset")
    g.add_argument("--val-split", type=float, default=None, metavar="FRACTION",
                   help="share of the training data held out for validation, by a fixed seeded split (None: the "
                   "dataset's own, 0.1 for most); fixed for a run")
    g.add_argument("--data-dir", default=str(ROOT / "data"), metavar="DIR", help="where datasets live")
    g.add_argument("--num-workers", type=int, default=-1, metavar="N",
                   help="DataLoader worker processes (-1: per device and dataset, see README)")
    g.add_argument("--pin-memory", default="auto", choices=("auto", "on", "off"), help="pinned batches (auto: on CUDA)")
    g.add_argument("--prefetch-factor", type=int, default=0, metavar="N",
                   help="batches each worker loads ahead (0: torch's default)")
    _bool_flag(g, "persistent-workers", True, "keep DataLoader workers alive between epochs")
    _bool_flag(g, "download", True, "download a missing dataset (--no-download: error instead)")
    g.add_argument("--data-mirror", default=os.environ.get("DATA_MIRROR", ""), metavar="URL",
                   help="fetch datasets from URL/<dataset>/<file> (env DATA_MIRROR)")
    g.add_argument("--download-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="a download fails when no data came for this long")
    g.add_argument("--download-deadline", type=float, default=3600.0, metavar="SECONDS",
                   help="a download fails when one file took longer than this in all (a mirror that trickles)")
    g.add_argument("--data-checksums", default=os.environ.get("DATA_CHECKSUMS", ""), metavar="FILE",
                   help="YAML/JSON {'<dataset>/<file>': md5} for a mirror with re-packed files (env DATA_CHECKSUMS)")
    g.add_argument("--synthetic-size", type=int, default=10000, metavar="N", help="synthetic: training samples")
    g.add_argument("--synthetic-shape", type=_shape, default="3,32,32", metavar="C,H,W",
                   help="synthetic: sample shape")
    g.add_argument("--synthetic-classes", type=int, default=10, metavar="K", help="synthetic: classes")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="auto", choices=("auto",) + tuple(models.names()),
                   help="model (auto: the dataset's own: cnn for images, mlp for tables, fcn for segmentation)")
    g.add_argument("--task", default="auto", choices=("auto",) + tuple(tasks.names()),
                   help="what the model learns: loss, metrics, pictures (auto: the dataset's own)")
    g.add_argument("--loss", default="auto", choices=("auto", "mse", "l1", "huber"),
                   help="regression loss (auto: mse)")
    g.add_argument("--width", type=int, default=0, metavar="N", help="hidden units / base channels (0: model's own)")
    g.add_argument("--depth", type=int, default=0, metavar="N", help="layers (0: model's own)")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout probability")
    g.add_argument("--init-from", metavar="PATH", help="start from the weights of this checkpoint (fine-tuning; its "
                   "evaluated weights: the EMA where it has one)")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=15, help="passes over the training set")
    g.add_argument("--max-steps", type=int, default=0, metavar="N", help="stop after N steps in all (0: no limit)")
    g.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="samples per optimizer step, over all processes and micro-batches")
    g.add_argument("--accum-steps", type=int, default=1, metavar="N",
                   help="gradient accumulation: each step's batch runs as N micro-batches of 1/N (memory of one)")
    g.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw"), help="optimizer")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, or Adam's beta1")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="L2 penalty (decoupled for adamw)")
    g.add_argument("--scheduler", default="cosine", choices=("constant", "cosine", "linear", "step", "multistep"),
                   help="learning-rate schedule after warmup")
    g.add_argument("--warmup-steps", type=int, default=0, metavar="N", help="linear warmup from 0")
    g.add_argument("--lr-step-size", type=int, default=1000, metavar="N", help="step schedule: decay every N steps")
    g.add_argument("--lr-milestones", type=_steps, default="", metavar="S1,S2",
                   help="multistep schedule: multiply the lr by --lr-gamma at these steps")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="step and multistep schedules: decay factor")
    g.add_argument("--grad-clip", type=float, default=0.0, metavar="NORM", help="clip gradient norm (0: off)")

    g = p.add_argument_group("recipe (regularization)")
    g.add_argument("--augment", default="auto", metavar="auto|none|NAME[:ARG],...",
                   help="training-batch augmentation on the device, e.g. crop:4,flip (auto: the dataset's standard "
                   "recipe; see README)")
    g.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS",
                   help="classification: cross-entropy against targets smoothed by EPS (0: off)")
    g.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="evaluate, pick the best and test an exponential moving average of the weights (say 0.999; "
                   "0: off)")
    g.add_argument("--early-stop", type=int, default=0, metavar="PATIENCE",
                   help="end the run after PATIENCE evaluations without --monitor improving (0: off)")
    g.add_argument("--early-stop-delta", type=float, default=0.0, metavar="DELTA",
                   help="early stopping: an improvement must exceed DELTA to count")

    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads for torch's math in each process (0: OMP_NUM_THREADS if set, else half the "
                   "process's cores, at most 4)")
    g.add_argument("--amp", default="off", choices=("off", "fp16", "bf16"), help="mixed precision on CUDA")
    _bool_flag(g, "compile", False, "torch.compile the model (torch >= 2.0)")
    _bool_flag(g, "cuda-graphs", False, "replay the model's training forward and backward from CUDA graphs (torch >= "
               "1.10; a model that cannot be captured trains without them)")
    g.add_argument("--data-on-device", default="auto", choices=("auto", "on", "off"),
                   help="hold an in-memory dataset on the GPU and make batches there (auto: when it takes under a "
                   "quarter of the free GPU memory)")
    _bool_flag(g, "channels-last", False, "channels-last memory format for 4-d inputs (convolutions on GPUs)")

    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--log-every", type=int, default=10, metavar="STEPS", help="train scalars to TensorBoard")
    g.add_argument("--eval-every", type=int, default=0, metavar="STEPS", help="evaluate (0: at each epoch's end)")
    g.add_argument("--ckpt-every", type=int, default=100, metavar="STEPS",
                   help="save latest and models/tmp (0: only at the end and on stop)")
    _bool_flag(g, "async-ckpt", True, "write checkpoints in a background thread (--no-async-ckpt: in the loop)")
    g.add_argument("--keep-last", type=int, default=3, metavar="N", help="checkpoints kept in models/tmp/<run>/")
    g.add_argument("--monitor", default="auto", metavar="METRIC:MODE",
                   help="best checkpoint by this validation metric, mode min or max (auto: the task's own, say "
                   "val/acc:max for classification, val/rmse:min for regression)")
    g.add_argument("--resume", nargs="?", const="latest", metavar="auto|PATH",
                   help="continue this run's latest checkpoint (error if none); auto: latest if any, "
                   "else start fresh; PATH: that checkpoint")
    g.add_argument("--logs-dir", default=str(ROOT / "logs"), metavar="DIR", help="TensorBoard and program logs")
    g.add_argument("--models-dir", default=str(ROOT / "models"), metavar="DIR", help="best/, latest/, tmp/")
    g.add_argument("--progress", default="auto", choices=("auto", "bar", "plain"),
                   help="progress bar on a terminal, plain lines otherwise")
    _bool_flag(g, "tensorboard", True, "write TensorBoard events (--no-tensorboard: off)")
    g.add_argument("--stop-grace", type=float, default=_env_float("STOP_GRACE", 10.0), metavar="SECONDS",
                   help="seconds a stop signal leaves before a kill (docker stop: 10; env STOP_GRACE); the first "
                   "save says whether a checkpoint fits in them")
    g.add_argument("--stop-after-step", type=int, default=0, help=argparse.SUPPRESS)  # a stop, as by a signal
    _bool_flag(g, "sync-check", False, argparse.SUPPRESS)  # tests: a host sync in a step between logging steps raises
    g.add_argument("--prepare-data", action="store_true", help="download/verify the dataset, then exit")
    g.add_argument("--evaluate", nargs="?", const="best", metavar="PATH",
                   help="evaluate a checkpoint without training (no value: this run's best), print and write the "
                   "metrics as JSON, then exit")
    g.add_argument("--split", default="test", choices=("val", "test"), help="--evaluate on this split")
    g.add_argument("--verify-resume", type=int, default=0, metavar="K",
                   help="self-test of exact resume with these flags: train K steps in one go and with a stop and a "
                   "resume half way (in a temporary folder), compare weights and scalars, print PASS or what differs")
    g.add_argument("--doctor", action="store_true",
                   help="print versions, GPUs and whether this torch build supports them, run one step, exit")
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
    if value is None:
        if action.default is None:
            return None
        raise UsageError(bad)
    kind = action.type
    if kind is _steps and isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                         for v in value):
        value = ",".join(str(v) for v in value)
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise UsageError(bad)
    if kind is int and not isinstance(value, int):
        raise UsageError(bad + " (expected an integer)")
    if kind is float and not isinstance(value, (int, float)):
        raise UsageError(bad + " (expected a number)")
    if kind in (None, _steps) and not isinstance(value, str):
        raise UsageError(bad + " (expected a string)")
    try:
        value = kind(value) if kind is not None else value
    except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
        raise UsageError("%s: %s: %s" % (where, key, err))
    if action.choices is not None and value not in action.choices:
        raise UsageError("%s (choose from %s)" % (bad, ", ".join(map(str, action.choices))))
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
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    values = {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in PER_INVOCATION:
            raise UsageError("%s: unknown key %r" % (where, key))
        values[dest] = _coerce(actions[dest], key, value, where)
    return values


def parse(argv=None):
    """(config, keys the user set in the file or on the command line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    cli = parser.parse_args(argv)
    explicit = _explicit_keys(parser, argv)
    values = vars(cli)
    user = set(explicit)
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
    for key, old in saved.items():
        if key in actions and key not in PER_INVOCATION:
            try:  # each value checked as a flag's value is (type, choices, format), also where the user overrides it
                old = _coerce(actions[key], key, old, "%s: its config" % source)
            except UsageError as err:
                raise UsageError("%s; it was not written by this project: resume another checkpoint" % err)
        if key in merged and key not in user and key not in PER_INVOCATION and key not in LOCAL:
            merged[key] = old
    for key in FIXED_ON_RESUME:
        if key in user and key in saved and saved[key] != merged[key]:
            raise UsageError("--%s cannot change on resume (this run has %s); start another run with --run-name"
                             % (key.replace("_", "-"), _short(saved[key])))
    if "epochs" in user and "max_steps" not in user and merged.get("max_steps"):
        merged["max_steps"] = 0  # --epochs given on resume is the new limit: the old step limit goes
        user = set(user) | {"max_steps"}
    changes = [(k, saved[k], merged[k]) for k in sorted(user)
               if k in saved and k not in PER_INVOCATION and k not in LOCAL and saved[k] != merged[k]]
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


def _finite(value, low=None):
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX and (low is None or value >= low)


def validate(cfg):
    """Raise UsageError naming the first invalid value."""
    def need(ok, message):
        if not ok:
            raise UsageError(message)

    need(cfg.dataset in data.names(), "--dataset %s: no such dataset (known: %s)" % (_short(cfg.dataset),
                                                                                 ", ".join(data.names())))
    if cfg.model == "auto":
        cfg.model = data.defaults(cfg.dataset)["model"]
    need(cfg.model in models.names(), "--model %s: no such model (known: %s)" % (_short(cfg.model),
                                                                             ", ".join(models.names())))
    need(cfg.task == "auto" or cfg.task in tasks.names(), "--task %s: no such task (known: %s)"
         % (_short(cfg.task), ", ".join(tasks.names())))
    if cfg.run_name is None:
        cfg.run_name = "%s-%s" % (cfg.dataset, cfg.model)
    check_run_name(cfg.run_name)
    need(0 <= cfg.seed < 2 ** 32, "--seed must be in 0 .. 2**32-1, got %s" % _short(cfg.seed))
    for name in ("lr", "momentum", "weight_decay", "lr_gamma", "grad_clip", "dropout", "stop_grace", "label_smoothing",
                 "ema", "early_stop_delta"):
        need(_finite(getattr(cfg, name)), "--%s must be a finite number within float32 range, got %s"
             % (name.replace("_", "-"), _short(getattr(cfg, name))))
    need(cfg.lr > 0, "--lr must be > 0, got %g" % cfg.lr)
    need(cfg.batch_size >= 1, "--batch-size must be >= 1, got %d" % cfg.batch_size)
    need(1 <= cfg.accum_steps <= cfg.batch_size, "--accum-steps must be in 1 .. --batch-size (%d), got %d"
         % (cfg.batch_size, cfg.accum_steps))
    need(cfg.epochs >= 1, "--epochs must be >= 1, got %d" % cfg.epochs)
    need(cfg.max_steps >= 0, "--max-steps must be >= 0, got %d" % cfg.max_steps)
    need(0 <= cfg.momentum < 1, "--momentum must be in [0, 1), got %g" % cfg.momentum)
    need(cfg.weight_decay >= 0, "--weight-decay must be >= 0, got %g" % cfg.weight_decay)
    need(cfg.warmup_steps >= 0, "--warmup-steps must be >= 0, got %d" % cfg.warmup_steps)
    need(cfg.lr_step_size >= 1, "--lr-step-size must be >= 1, got %d" % cfg.lr_step_size)
    need(0 < cfg.lr_gamma <= 1, "--lr-gamma must be in (0, 1], got %g" % cfg.lr_gamma)
    need(cfg.grad_clip >= 0, "--grad-clip must be >= 0, got %g" % cfg.grad_clip)
    need(0 <= cfg.dropout < 1, "--dropout must be in [0, 1), got %g" % cfg.dropout)
    need(0 <= cfg.label_smoothing < 1, "--label-smoothing must be in [0, 1), got %g" % cfg.label_smoothing)
    need(0 <= cfg.ema < 1, "--ema must be a decay in [0, 1) such as 0.999 (0: off), got %g" % cfg.ema)
    need(cfg.early_stop >= 0, "--early-stop must be >= 0 evaluations (0: off), got %d" % cfg.early_stop)
    need(cfg.early_stop_delta >= 0, "--early-stop-delta must be >= 0, got %g" % cfg.early_stop_delta)
    need(cfg.scheduler != "multistep" or bool(cfg.lr_milestones),
         "--scheduler multistep needs --lr-milestones S1,S2 (the steps where the lr is multiplied by --lr-gamma)")
    need(0 <= cfg.width <= 65536 and 0 <= cfg.depth <= 1000, "--width must be in 0 .. 65536 and --depth in 0 .. 1000")
    need(-1 <= cfg.num_workers <= 256, "--num-workers must be in 0 .. 256 (or -1: automatic), got %d" % cfg.num_workers)
    need(cfg.prefetch_factor >= 0, "--prefetch-factor must be >= 0, got %d" % cfg.prefetch_factor)
    need(cfg.log_every >= 1, "--log-every must be >= 1, got %d" % cfg.log_every)
    need(cfg.eval_every >= 0, "--eval-every must be >= 0, got %d" % cfg.eval_every)
    need(cfg.ckpt_every >= 0, "--ckpt-every must be >= 0, got %d" % cfg.ckpt_every)
    need(cfg.keep_last >= 1, "--keep-last must be >= 1, got %d" % cfg.keep_last)
    need(cfg.synthetic_size >= 10, "--synthetic-size must be >= 10, got %d" % cfg.synthetic_size)
    need(cfg.synthetic_classes >= 2, "--synthetic-classes must be >= 2, got %d" % cfg.synthetic_classes)
    need(cfg.stop_grace >= 0, "--stop-grace must be >= 0, got %g" % cfg.stop_grace)
    need(0 <= cfg.threads <= 1024, "--threads must be in 0 .. 1024 (0: automatic), got %d" % cfg.threads)
    need(cfg.verify_resume == 0 or 2 <= cfg.verify_resume <= 100000,
         "--verify-resume must be 2 steps or more (and at most 100000), got %d" % cfg.verify_resume)
    need(cfg.stop_after_step >= 0, "--stop-after-step must be >= 0")
    need(bool(_DEVICE.fullmatch(cfg.device)), "--device %s: use auto, cpu, cuda or cuda:N" % _short(cfg.device))
    need(_url_ok(cfg.data_mirror), "--data-mirror %s: not a URL such as http://host:8000/datasets (scheme http, "
         "https or file, a host, a numeric port)" % _short(cfg.data_mirror))
    need(cfg.download_timeout > 0 and _finite(cfg.download_timeout), "--download-timeout must be > 0 seconds")
    need(cfg.download_deadline > 0 and _finite(cfg.download_deadline), "--download-deadline must be > 0 seconds")
    need(not (cfg.resume and cfg.evaluate), "--resume and --evaluate do not go together: --evaluate [PATH] tests a "
         "checkpoint without training, --resume trains on; drop one")
    meta = data.defaults(cfg.dataset)
    if cfg.task == "auto":
        cfg.task = meta["task"]
    if cfg.model == "auto":
        cfg.model = meta["model"]
    if cfg.val_split is None:
        cfg.val_split = meta["val_split"]
    need(_finite(cfg.val_split) and 0 < cfg.val_split < 1, "--val-split must be a fraction between 0 and 1, got %s"
         % _short(cfg.val_split))
    task = tasks.get(cfg.task)
    if cfg.monitor == "auto":
        cfg.monitor = task.MONITOR
    metric, _, mode = cfg.monitor.partition(":")
    known = ["val/" + m for m in task.METRICS]
    need(metric in known and mode in ("min", "max"), "--monitor %r: use METRIC:min or METRIC:max with METRIC one of %s "
         "(the metrics of --task %s)" % (cfg.monitor, ", ".join(known), cfg.task))
    need(cfg.loss == "auto" or cfg.task == "regression", "--loss %s applies to --task regression, not %s"
         % (cfg.loss, cfg.task))
    need(not cfg.label_smoothing or cfg.task == "classification", "--label-smoothing applies to --task "
         "classification, not %s" % cfg.task)
    if cfg.augment == "auto":
        cfg.augment = meta["augment"]
    augment.parse(cfg.augment)  # unknown names fail here; arguments against the data once it is built


def monitor(cfg):
    """(metric, mode) of --monitor."""
    metric, _, mode = cfg.monitor.partition(":")
    return metric, mode


def to_yaml(cfg):
    return yaml.safe_dump(dict(sorted(vars(cfg).items())), default_flow_style=False, sort_keys=False)


def hparams(cfg):
    """The values of the hparams panel: the run's flags, without the per-invocation ones and the local folders."""
    return {k: v for k, v in vars(cfg).items()
            if k not in PER_INVOCATION and not k.endswith("_dir") and k not in ("progress", "tensorboard")}
