"""The training recipe a dataset gets where the user chose none: the flags of KEYS below (and --depth of the
dataset's own model, --augment) that are still None (or auto) after the command line, --config and a resumed
checkpoint.

- The datasets this project ships register CLASSIC, the recipe their figures were measured with (SGD 0.05,
  batch 64, 15 epochs; benchmarks/README.md).
- Any other dataset (folder:PATH, csv:PATH, a dataset of your own) gets `fit`: a recipe chosen from the data once
  it is read, by the rule below (README "Defaults that fit your data"), printed at the start of the run. A small
  data set gets enough epochs for a fixed least number of optimizer steps, not a fixed number of epochs: 15
  epochs of 261 images were 75 steps, too few for any optimizer to learn anything.

The rule (measured on benchmarks/own_data_accuracy.py's tables and folders):
  optimizer AdamW, gradient norm clipped at 1 (a table with outliers cannot blow up), cosine schedule after a
  linear warmup of 5 % of the steps;
  images: batch 32 under 1,000 training images, else 64; lr 2e-3, weight decay 0.05; at least 1,000 steps
  (15 to 300 epochs); cnn depth 2 under 16 pixels, 3 under 2,000 images, else 4; --augment crop:N, shifts of up
  to N = side / 16 pixels (none under 16 pixels; no flips: they change what text, digits or arrows mean);
  tables: batch n/32 as a power of two in 16 .. 256; lr 1e-3, weight decay 0.01; at least 1,500 steps (15 to
  500 epochs).
With --pretrained weights (a timm model) the rule fine-tunes instead: AdamW at lr 3e-4 with the classifier head
at 10 x that (--lr-groups, the head found for the user: app/build.py), weight decay 0.05, warmup 5 %, clipping at
1, at least 500 steps (10 to 100 epochs); no depth to choose. Timm's fine-tuning recipes and HF's examples start
there; the pretrained features need small steps, the fresh head large ones.
The values chosen are saved with the run like any flag: a resume continues with them whatever the rule becomes.
"""
import math

CLASSIC = dict(epochs=15, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=5e-4, warmup_steps=0, grad_clip=0.0)
KEYS = tuple(CLASSIC)
FITTED = KEYS + ("depth", "augment")  # what `fit` chooses: the recipe, and the model's depth and augmentation
IMAGES = dict(lr=2e-3, weight_decay=0.05, steps=1000, max_epochs=300)
TABLES = dict(lr=1e-3, weight_decay=0.01, steps=1500, max_epochs=500)
PRETRAINED = dict(lr=3e-4, weight_decay=0.05, steps=500, max_epochs=100, min_epochs=10)
HEAD_LR = 10.0  # the fresh classifier head's factor of --lr when fine-tuning pretrained weights


def unset(value):
    """Whether a flag's value leaves it to the data (None, or auto for the optimizer and --augment)."""
    return value is None or (isinstance(value, str) and value == "auto")


def missing(cfg, keys=KEYS):
    """The flags among keys this config leaves to the data."""
    return [k for k in keys if unset(getattr(cfg, k))]


def fill(cfg, recipe):
    """Each recipe flag still unset takes the recipe's value; the keys filled."""
    filled = missing(cfg)
    for key in filled:
        setattr(cfg, key, recipe[key])
    return filled


def _pow2_in(value, low, high):
    return int(min(high, max(low, 2 ** int(math.floor(math.log2(max(1.0, value)))))))


def fit(cfg, n, input_shape, steps_per_epoch):
    """The rule's recipe for n training samples of input_shape (steps_per_epoch(batch) -> optimizer steps of one
    epoch at that batch size), and cnn's depth where it is the model and none was given: {flag: value}."""
    images = len(input_shape) == 3
    rule = PRETRAINED if getattr(cfg, "pretrained", None) else IMAGES if images else TABLES
    batch = cfg.batch_size or max(1, min(n, (32 if n < 1000 else 64) if images else _pow2_in(n / 32.0, 16, 256)))
    per_epoch = max(1, steps_per_epoch(batch))
    epochs = cfg.epochs or int(min(rule["max_epochs"], max(rule.get("min_epochs", 15),
                                                           math.ceil(rule["steps"] / float(per_epoch)))))
    total = epochs * per_epoch
    out = dict(batch_size=batch, epochs=epochs, optimizer="adamw", lr=rule["lr"], weight_decay=rule["weight_decay"],
               warmup_steps=int(round(0.05 * total)), grad_clip=1.0)
    if images and cfg.model == "cnn" and cfg.depth is None:
        out["depth"] = 2 if min(input_shape[1:]) < 16 else 3 if n < 2000 else 4
    shift = min(input_shape[1:]) // 16 if images else 0
    out["augment"] = "crop:%d" % shift if shift else "none"
    return out


def describe(cfg, splits, filled):
    """One line: what the data is and the recipe chosen for it (the values the user gave are not repeated)."""
    shape = splits.input_shape
    n = len(splits.train)
    if len(shape) == 3:
        what = "%s train images at %dx%d" % (format(n, ","), shape[1], shape[2])
    else:
        what = "%s train rows of %d features" % (format(n, ","), shape[0] if shape else 0)
    if splits.classes:
        what = "%d classes, %s" % (len(splits.classes), what)
    chosen = []
    if "depth" in filled and cfg.depth:
        chosen.append("%s depth %d" % (cfg.model, cfg.depth))
    name = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}[cfg.optimizer]
    if "optimizer" in filled:
        chosen.append("%s %g" % (name, cfg.lr) if "lr" in filled else name)
    elif "lr" in filled:
        chosen.append("lr %g" % cfg.lr)
    if "weight_decay" in filled:
        chosen.append("weight decay %g" % cfg.weight_decay)
    if "batch_size" in filled:
        chosen.append("batch %d" % cfg.batch_size)
    if "epochs" in filled:
        chosen.append("%d epochs" % cfg.epochs)
    if "warmup_steps" in filled:
        chosen.append("warmup %d steps" % cfg.warmup_steps)
    if "grad_clip" in filled and cfg.grad_clip:
        chosen.append("gradients clipped at norm %g" % cfg.grad_clip)
    if "augment" in filled and cfg.augment:
        chosen.append("augment %s" % (cfg.augment,))
    return "%s: %s (%s; any of them can be set)" % (what, ", ".join(chosen), "the fine-tuning defaults for "
                                                    "pretrained weights" if getattr(cfg, "pretrained", None)
                                                    else "the data's defaults")
