"""Confusion matrices of classification and segmentation: counted on the device (_draw.py draws them)."""
import torch


def confusion_counts(labels, preds, num_classes):
    """Flat (label, prediction) pair counts, on the tensors' device."""
    index = labels.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes ** 2)

