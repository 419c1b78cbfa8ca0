"""Per-pixel segmentation: a class per pixel (target (N, H, W) of class indices, output (N, K, H, W)),
cross-entropy over pixels, pixel accuracy and mean IoU, and at each evaluation the confusion matrix and a
strip of examples (input | true mask | predicted mask) from the first validation batch."""
import torch
import torch.nn.functional as F

from . import Task, _draw, register
from ._confusion import confusion_counts


@register("segmentation")
class Segmentation(Task):
    METRICS = ("loss", "acc", "miou")
    MONITOR = "val/miou:max"
    EXAMPLES = 4

    def loss(self, pred, target):
        return F.cross_entropy(pred.float(), target)

    def train_sums(self, pred, target):
        return {"correct": (pred.argmax(1) == target).sum().double(),
                "pixels": torch.tensor(float(target.numel()), dtype=torch.float64, device=target.device)}

    def train_values(self, sums, samples):
        return {"train/acc": float(sums["correct"]) / max(float(sums["pixels"]), 1.0)}

    def eval_sums(self, pred, target):
        k = self.num_outputs
        return {"loss": F.cross_entropy(pred.float(), target, reduction="sum").double(),
                "confusion": confusion_counts(target.reshape(-1), pred.argmax(1).reshape(-1), k)}

    def eval_values(self, sums):
        k = self.num_outputs
        confusion = sums["confusion"].double().view(k, k)
        pixels = max(float(confusion.sum()), 1.0)
        union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
        present = union > 0
        iou = confusion.diag()[present] / union[present]
        return {"loss": float(sums["loss"]) / pixels, "acc": float(confusion.diag().sum()) / pixels,
                "miou": float(iou.mean()) if len(iou) else 0.0}

    def pictures(self, sums, first):
        """The pixel confusion matrix, and up to 4 examples of the first batch: input | true mask | predicted mask,
        the masks in class colours over the input, with a colour key."""
        k = self.num_outputs
        names = _draw.names_of(self.class_names, k)
        out = {"confusion_matrix": _draw.confusion(sums["confusion"].round().long().view(k, k), names)}
        if first is not None:
            inputs, target, pred = (t[:self.EXAMPLES] for t in first)
            out["examples"] = _draw.overlays(inputs, target, pred.argmax(1), names)
        return out
