"""Confusion matrices of classification and segmentation: counted on the device, drawn for TensorBoard."""
import torch


def confusion_counts(labels, preds, num_classes):
    """Flat (label, prediction) pair counts, on the tensors' device."""
    index = labels.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes ** 2)


def confusion_image(matrix, cell=16):
    """A confusion matrix as a CHW float image in [0, 1]: row-normalised counts, one cell per pair."""
    rows = matrix.double().sum(1, keepdim=True).clamp(min=1)
    norm = (matrix.double() / rows).float()
    img = norm.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    # blue for errors, green on the diagonal
    diag = torch.eye(matrix.shape[0]).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return torch.stack([img * (1 - diag) * 0.2, img * diag, img * (1 - diag)])
