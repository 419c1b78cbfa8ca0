"""Regression: float targets, MSE (or --loss l1 / huber), MAE, RMSE and R², and a predicted-vs-true picture.

Targets are standardized with the training split's mean and standard deviation (kept in the checkpoint, see
`state_dict`): the model learns outputs of unit scale whatever the target's units, while every metric is
reported in the target's own units. A model may output (N,) or (N, 1) for one target, or (N, D) for D.
"""
import torch
import torch.nn.functional as F

from . import Task, _draw, register

BINS = 48  # the predicted-vs-true picture: a BINS x BINS histogram over mean +- 3 standard deviations


def _target_scale(dataset):
    y = getattr(dataset, "y", None)
    if not isinstance(y, torch.Tensor) or not y.is_floating_point() or len(y) < 2:
        return 0.0, 1.0
    y = y.double()
    return float(y.mean()), float(y.std()) or 1.0


@register("regression")
class Regression(Task):
    METRICS = ("loss", "mae", "rmse", "r2")
    MONITOR = "val/rmse:min"
    LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.smooth_l1_loss}

    def __init__(self, cfg, splits):
        super(Regression, self).__init__(cfg, splits)
        self.mean, self.std = _target_scale(splits.train)
        self.criterion = self.LOSSES["mse" if cfg.loss == "auto" else cfg.loss]

    def _pair(self, pred, target):
        """(standardized prediction, target in its units), the prediction shaped like the target."""
        return pred.float().reshape(target.shape), target.float()

    def loss(self, pred, target):
        pred, target = self._pair(pred, target)
        return self.criterion(pred, (target - self.mean) / self.std)

    def train_sums(self, pred, target):
        pred, target = self._pair(pred, target)
        return {"abs_err": (pred.detach() * self.std + self.mean - target).abs().sum().double()}

    def train_values(self, sums, samples):
        return {"train/mae": float(sums["abs_err"]) / max(samples, 1)}

    def eval_sums(self, pred, target):
        pred, target = self._pair(pred, target)
        value = pred * self.std + self.mean
        err = (value - target).double()
        lo, hi = self.mean - 3 * self.std, self.mean + 3 * self.std
        cell = lambda v: ((v.double() - lo) / (hi - lo) * BINS).long().clamp(0, BINS - 1)  # noqa: E731
        picture = torch.bincount((cell(target) * BINS + cell(value)).view(-1), minlength=BINS * BINS)
        return {"loss": self.criterion(pred, (target - self.mean) / self.std, reduction="sum").double(),
                "abs_err": err.abs().sum(), "sq_err": (err * err).sum(), "y": target.double().sum(),
                "y2": (target.double() ** 2).sum(), "n": torch.tensor(float(target.numel()), dtype=torch.float64,
                                                                       device=target.device),
                "picture": picture}

    def eval_values(self, sums):
        n = max(float(sums["n"]), 1.0)
        total = float(sums["y2"]) - float(sums["y"]) ** 2 / n
        return {"loss": float(sums["loss"]) / n, "mae": float(sums["abs_err"]) / n,
                "rmse": (float(sums["sq_err"]) / n) ** 0.5,
                "r2": 1.0 - float(sums["sq_err"]) / total if total > 0 else 0.0}

    def learned_nothing(self, values):
        """A line when val/r2 <= 0: no better than always predicting the train mean."""
        if "r2" not in values or values["r2"] > 0:
            return None
        return ("val/r2 %.3f: no better than always predicting the mean target; the model has learned nothing "
                "usable yet. Likely too few steps or too high a learning rate for this data, or features that do not "
                "predict the target; try more --epochs, a lower --lr, or --loss huber for a target with outliers"
                % values["r2"])

    def pictures(self, sums, first):
        """Predicted vs true over the mean +- 3 standard deviations of the training targets: a dot per occupied cell
        of the histogram, axes in the target's units, the identity line."""
        counts = sums["picture"].double().view(BINS, BINS)  # [true cell, predicted cell]
        return {"pred_vs_true": _draw.pred_vs_true(counts, self.mean - 3 * self.std, self.mean + 3 * self.std)}

    def state_dict(self):
        return {"target_mean": self.mean, "target_std": self.std}
