"""Semantic-segmentation scoring: one confusion matrix over a split, per-class IoU and mIoU."""

from __future__ import annotations

import numpy as np

from cliprnn.scoring import confusion, miou_of

__all__ = ["ConfusionMatrix", "confusion", "miou_of"]


class ConfusionMatrix:
    """Pixel counts [num_classes, num_classes]: rows are ground truth, columns predictions.

    ``missed`` counts, per ground-truth class, pixels predicted as a label outside the
    classes; they count against that class's IoU.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)
        self.missed = np.zeros(num_classes, np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray, ignore_index: int = 255) -> None:
        """Add one image's prediction and ground truth (same shape).

        Pixels whose ground truth is ``ignore_index``, negative, or not below ``num_classes``
        are ignored.
        """
        matrix, missed = confusion(pred, gt, self.num_classes, ignore_index)
        self.matrix += matrix
        self.missed += missed

    def iou(self) -> np.ndarray:
        """Per-class IoU = diag / (row + column - diag); NaN for a class never seen."""
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        union = m.sum(axis=1) + self.missed + m.sum(axis=0) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that have ground-truth pixels (NaN when none has)."""
        return miou_of(self.matrix, self.missed)
