"""Multi-label: a sample has any number of labels (its target: one 0/1 row over the labels). Binary
cross-entropy on the logits; a label is predicted when its probability is above one half. Metrics: macro F1 (the
mean of the labels' F1 at that threshold), mean average precision (threshold-free: the area under each label's
precision-recall curve), and each label's F1 (val/f1/<label>, for up to LABELS_SHOWN labels); a picture of each
label's F1 and AP at each evaluation.

Everything is summed on the device: true/false positive and negative counts, and per label a histogram of the
scores of its positives and of its negatives over AP_BINS bins, from which the precision-recall curve is read
(scores in one bin count as tied, as equal scores do in scikit-learn's average_precision_score)."""
import torch
import torch.nn.functional as F

from . import Task, register

AP_BINS = 1000
LABELS_SHOWN = 32


@register("multilabel")
class MultiLabel(Task):
    METRICS = ("loss", "f1", "map")
    MONITOR = "val/map:max"

    def __init__(self, cfg, splits):
        super(MultiLabel, self).__init__(cfg, splits)
        self.labels = [str(c) for c in (splits.classes or range(self.num_outputs))]

    def loss(self, pred, target):
        return F.binary_cross_entropy_with_logits(pred.float(), target.float())

    def train_sums(self, pred, target):
        hit = ((pred.detach() > 0) == (target > 0.5)).all(1)
        return {"exact": hit.sum()}

    def train_values(self, sums, samples):
        return {"train/exact": float(sums["exact"]) / max(samples, 1)}

    def eval_sums(self, pred, target):
        pred, target = pred.float(), target.float()
        k = target.shape[1]
        yes, truth = pred > 0, target > 0.5
        score = torch.sigmoid(pred)
        cell = (score * AP_BINS).long().clamp(0, AP_BINS - 1) + torch.arange(k, device=pred.device) * AP_BINS
        return {"loss": F.binary_cross_entropy_with_logits(pred, target, reduction="none").mean(1).sum().double(),
                "n": torch.tensor(float(len(target)), dtype=torch.float64, device=pred.device),
                "tp": (yes & truth).sum(0), "fp": (yes & ~truth).sum(0), "fn": (~yes & truth).sum(0),
                "pos": torch.bincount(cell[truth], minlength=k * AP_BINS),
                "neg": torch.bincount(cell[~truth], minlength=k * AP_BINS)}

    def _per_label(self, sums):
        """(F1, AP) per label (NaN where a split has no positive and predicts none, or has no positive)."""
        tp, fp, fn = (sums[key].double() for key in ("tp", "fp", "fn"))
        f1 = 2 * tp / (2 * tp + fp + fn)
        k = len(tp)
        pos = sums["pos"].double().view(k, AP_BINS).flip(1).cumsum(1)  # from the highest scores down
        neg = sums["neg"].double().view(k, AP_BINS).flip(1).cumsum(1)
        new_pos = pos - torch.cat([torch.zeros_like(pos[:, :1]), pos[:, :-1]], 1)  # (torch.diff: from 1.8)
        precision = pos / (pos + neg).clamp(min=1)
        ap = (new_pos * precision).sum(1) / pos[:, -1]
        return f1, ap

    def eval_values(self, sums):
        f1, ap = self._per_label(sums)
        values = {"loss": float(sums["loss"]) / max(float(sums["n"]), 1.0),
                  "f1": _mean(f1), "map": _mean(ap)}
        if len(self.labels) <= LABELS_SHOWN:
            for name, v in zip(self.labels, f1.tolist()):
                values["f1/" + name] = v if v == v else 0.0
        return values

    def pictures(self, sums, first):
        """Per label (left to right) two bars: its F1 (green) and its AP (blue), full height = 1."""
        f1, ap = self._per_label(sums)
        height, width = 64, 8
        rows = torch.arange(height, 0, -1, dtype=torch.float64).view(height, 1) / height
        image = torch.zeros(3, height, len(f1) * 2 * width)
        for i, (a, b) in enumerate(zip(f1.tolist(), ap.tolist())):  # NaN draws no bar
            image[1, :, 2 * i * width:(2 * i + 1) * width - 1] = (rows <= a).float()
            image[2, :, (2 * i + 1) * width:(2 * i + 2) * width - 2] = (rows <= b).float()
        return {"f1_and_ap_per_label": image}


def _mean(values):
    """The mean of the defined values (a label a split never has, nor predicts, says nothing)."""
    defined = values[values == values]
    return float(defined.mean()) if len(defined) else 0.0
