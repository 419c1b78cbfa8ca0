"""Classification: integer class labels, cross-entropy (label-smoothed in training with --label-smoothing; the
val and test loss are plain), accuracy, and a confusion matrix at each evaluation."""
import torch.nn.functional as F

from . import Task, register
from ..runtime.compat import cross_entropy
from ._confusion import confusion_counts, confusion_image


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
        return {"loss": F.cross_entropy(pred.float(), target, reduction="sum").double(),
                "confusion": confusion_counts(target, pred.argmax(1), k)}

    def eval_values(self, sums):
        k = self.num_outputs
        confusion = sums["confusion"].round().long().view(k, k)
        n = max(int(confusion.sum()), 1)
        return {"loss": float(sums["loss"]) / n, "acc": float(confusion.diag().sum()) / n}

    def pictures(self, sums, first):
        k = self.num_outputs
        return {"confusion_matrix": confusion_image(sums["confusion"].round().long().view(k, k))}
