"""Classification: integer class labels, cross-entropy (label-smoothed in training with --label-smoothing, each
class weighted by --class-weights; the val and test loss are plain), and what a researcher reports of it: accuracy,
balanced accuracy (the mean of the classes' recalls), macro F1, each class's precision, recall and F1
(val/f1/<class>, for up to CLASSES_SHOWN classes), and ROC AUC where there are two classes. All of them come from
sums kept on the device: a confusion matrix (up to MAX_CONFUSION classes; the picture shows the most frequent
classes, _draw.confusion) and, for two classes, histograms of the positive and negative samples' score margins
(AUC_BINS bins: scores in one bin count as tied, as equal scores do in scikit-learn's roc_auc_score)."""
import torch
import torch.nn.functional as F

from . import Task, register
from ..runtime.compat import cross_entropy
from ..runtime.errors import UsageError
from . import _draw
from ._confusion import confusion_counts


MAX_CONFUSION = 1024  # classes up to which the evaluation sums a confusion matrix (8 MB of counts)
CLASSES_SHOWN = 32  # classes up to which each one's precision, recall and F1 are reported
AUC_BINS = 4096  # bins of sigmoid(margin / 8): about 0.01 logits apart near a margin of 10


@register("classification")
class Classification(Task):
    METRICS = ("loss", "acc", "balanced_acc", "f1", "auc")
    MONITOR = "val/acc:max"

    def __init__(self, cfg, splits):
        super(Classification, self).__init__(cfg, splits)
        from .. import data
        k = self.num_outputs
        self.weight = None
        counts = data.class_counts(getattr(splits, "train", None), k) if k else None
        if getattr(cfg, "class_weights", "none") == "balanced":
            if counts is None:
                raise UsageError("--class-weights balanced needs the training labels at hand (an in-memory dataset "
                                 "or a folder); drop it for this dataset")
            total = float(sum(counts))
            self.weight = torch.tensor([total / (k * c) if c else 0.0 for c in counts])
        val = data.class_counts(getattr(splits, "val", None), k) if k else None
        self.majority = (max(val) / float(sum(val)), val.index(max(val))) if val and sum(val) else None
        metric = str(getattr(cfg, "monitor", "")).partition(":")[0]
        if metric == "val/auc" and k != 2:
            raise UsageError("--monitor val/auc needs two classes (this data has %d); use val/f1 or "
                             "val/balanced_acc" % k)
        if metric in ("val/f1", "val/balanced_acc", "val/auc") and k > MAX_CONFUSION:
            raise UsageError("--monitor %s: with over %d classes only val/acc and val/loss are computed"
                             % (metric, MAX_CONFUSION))

    def loss(self, pred, target):
        weight = self.weight
        if weight is not None and weight.device != pred.device:
            weight = self.weight = weight.to(pred.device)
        return cross_entropy(pred.float(), target, self.cfg.label_smoothing, weight)

    def train_sums(self, pred, target):
        return {"correct": (pred.argmax(1) == target).sum()}

    def train_values(self, sums, samples):
        return {"train/acc": float(sums["correct"]) / max(samples, 1)}

    def eval_sums(self, pred, target):
        k = self.num_outputs
        pred = pred.float()
        loss = F.cross_entropy(pred, target, reduction="sum").double()
        if k > MAX_CONFUSION:  # k*k counts would not fit (10,000 classes: 800 MB a batch): right and all only
            return {"loss": loss, "correct": (pred.argmax(1) == target).sum().double(),
                    "count": loss.new_tensor(float(len(target)))}
        sums = {"loss": loss, "confusion": confusion_counts(target, pred.argmax(1), k)}
        if k == 2:
            score = torch.sigmoid((pred[:, 1] - pred[:, 0]) / 8.0)
            cell = (score * AUC_BINS).long().clamp(0, AUC_BINS - 1)
            sums["pos"] = torch.bincount(cell[target == 1], minlength=AUC_BINS)
            sums["neg"] = torch.bincount(cell[target != 1], minlength=AUC_BINS)
        return sums

    def eval_values(self, sums):
        if "confusion" not in sums:
            n = max(float(sums["count"]), 1.0)
            return {"loss": float(sums["loss"]) / n, "acc": float(sums["correct"]) / n}
        k = self.num_outputs
        confusion = sums["confusion"].round().double().view(k, k)
        n = max(float(confusion.sum()), 1.0)
        values = {"loss": float(sums["loss"]) / n, "acc": float(confusion.diag().sum()) / n}
        values.update(rates(confusion, _draw.names_of(self.class_names, k) if k <= CLASSES_SHOWN else None))
        if "pos" in sums:
            values["auc"] = auc(sums["pos"].double(), sums["neg"].double())
        return values

    def learned_nothing(self, values):
        """A line when val/acc is no better than always answering the most frequent class of val."""
        if self.majority is None or "acc" not in values or values["acc"] > self.majority[0] + 1e-9:
            return None
        share, k = self.majority
        name = _draw.names_of(self.class_names, self.num_outputs)[k]
        return ("val/acc %.1f %% is no better than always answering the most frequent class (%s, %.1f %% of val): "
                "the model has learned nothing usable yet. Likely too few steps or too high a learning rate for "
                "this data, or inputs that do not tell the classes apart; try more --epochs, a lower --lr, or "
                "look at a few samples of each class" % (100 * values["acc"], name, 100 * share))

    EXAMPLES = 8

    def pictures(self, sums, first):
        """The confusion matrix (class names, counts) and up to 8 misclassified validation images of the first batch
        with their true and predicted classes."""
        k = self.num_outputs
        names = _draw.names_of(self.class_names, k)
        out = {}
        if "confusion" in sums:
            out["confusion_matrix"] = _draw.confusion(sums["confusion"].round().long().view(k, k), names)
        if first is not None and first[0].dim() in (3, 4):  # images (N, C, H, W) or (N, H, W)
            inputs, target, pred = first
            guess = pred.argmax(1)
            wrong = (guess != target).nonzero().view(-1)[:self.EXAMPLES].tolist()
            if wrong:
                captions = [[("true: " + _draw.short(names[int(target[i])]), _draw.BLACK),
                             ("pred: " + _draw.short(names[int(guess[i])]), (200, 30, 30))] for i in wrong]
                out["misclassified"] = _draw.examples([inputs[i] for i in wrong], captions)
        return out


def rates(confusion, names):
    """balanced_acc and f1 (macro) of a confusion matrix (rows: true classes), over the classes the split holds
    (scikit-learn's balanced_accuracy_score; a class neither present nor predicted adds nothing to the F1 mean),
    and each class's precision/recall/f1 where names are given (0 where undefined, as scikit-learn's
    zero_division=0)."""
    tp = confusion.diag()
    support, predicted = confusion.sum(1), confusion.sum(0)
    present = support > 0
    recall = torch.where(present, tp / support.clamp(min=1), torch.zeros_like(tp))
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    denominator = support + predicted
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp))
    seen = present | (predicted > 0)
    values = {"balanced_acc": float(recall[present].mean()) if bool(present.any()) else 0.0,
              "f1": float(f1[seen].mean()) if bool(seen.any()) else 0.0}
    for i, name in enumerate(names or ()):
        values["precision/%s" % name] = float(precision[i])
        values["recall/%s" % name] = float(recall[i])
        values["f1/%s" % name] = float(f1[i])
    return values


def auc(pos, neg):
    """ROC AUC from histograms of the positives' and negatives' scores (bins from low to high): the chance that a
    positive scores above a negative, ties counted half; 0.5 where a class is missing."""
    p, n = float(pos.sum()), float(neg.sum())
    if not p or not n:
        return 0.5
    below = torch.cumsum(neg, 0) - neg  # negatives in lower bins
    return float((pos * (below + 0.5 * neg)).sum()) / (p * n)
