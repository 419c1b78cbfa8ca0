"""Classification: integer class labels, cross-entropy (label-smoothed in training with --label-smoothing; the
val and test loss are plain), accuracy, and a confusion matrix at each evaluation (up to MAX_CONFUSION classes;
the picture shows the most frequent classes, _draw.confusion)."""
import torch.nn.functional as F

from . import Task, register
from ..runtime.compat import cross_entropy
from . import _draw
from ._confusion import confusion_counts


MAX_CONFUSION = 1024  # classes up to which the evaluation sums a confusion matrix (8 MB of counts)


@register("classification")
class Classification(Task):
    METRICS = ("loss", "acc")
    MONITOR = "val/acc:max"

    def loss(self, pred, target):
        return cross_entropy(pred.float(), target, self.cfg.label_smoothing)

    def train_sums(self, pred, target):
        return {"correct": (pred.argmax(1) == target).sum()}

    def train_values(self, sums, samples):
        return {"train/acc": float(sums["correct"]) / max(samples, 1)}

    def eval_sums(self, pred, target):
        k = self.num_outputs
        loss = F.cross_entropy(pred.float(), target, reduction="sum").double()
        if k > MAX_CONFUSION:  # k*k counts would not fit (10,000 classes: 800 MB a batch): right and all only
            return {"loss": loss, "correct": (pred.argmax(1) == target).sum().double(),
                    "count": loss.new_tensor(float(len(target)))}
        return {"loss": loss, "confusion": confusion_counts(target, pred.argmax(1), k)}

    def eval_values(self, sums):
        if "confusion" not in sums:
            n = max(float(sums["count"]), 1.0)
            return {"loss": float(sums["loss"]) / n, "acc": float(sums["correct"]) / n}
        k = self.num_outputs
        confusion = sums["confusion"].round().long().view(k, k)
        n = max(int(confusion.sum()), 1)
        return {"loss": float(sums["loss"]) / n, "acc": float(confusion.diag().sum()) / n}

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
