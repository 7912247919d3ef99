"""Scoring predictions against ground truth whose label values are named by mask targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cliprnn.errors import CalibrationError


def norm_name(name: str) -> str:
    return " ".join(str(name).split()).casefold()


class TargetScorer:
    """Maps ground truth and predictions to one class index space and counts confusions.

    Classes: background (label 0) and every ground-truth target; a query with no ground-truth
    class predicts "outside" (index n), which counts against the pixel's true class.
    """

    def __init__(self, targets: Mapping[int, str], ignore_values: Sequence[int]) -> None:
        values = sorted({0, *(int(v) for v in targets)})
        self.values = values
        self.index = {v: i for i, v in enumerate(values)}
        self.by_name = {norm_name(targets[v]): self.index[v] for v in targets if v != 0}
        self.ignore = {int(v) for v in ignore_values} - set(values)
        self.n = len(values)

    def gt_indices(self, gt: np.ndarray, name: str) -> np.ndarray:
        """``gt`` as class indices, -1 where ignored; CalibrationError for unknown values."""
        gt = np.asarray(gt)
        if gt.ndim != 2 or not np.issubdtype(gt.dtype, np.integer):
            raise CalibrationError(
                f"{name}: ground truth must be a 2-D integer label map, got "
                f"{gt.dtype} {tuple(gt.shape)}"
            )
        uniq = np.unique(gt)
        unknown = [int(v) for v in uniq if int(v) not in self.index and int(v) not in self.ignore]
        if unknown:
            raise CalibrationError(
                f"{name}: ground-truth values {unknown[:10]} are not in the mask targets "
                f"(named values {self.values}, ignored {sorted(self.ignore)}); give every "
                "value a class name or list it in ignore_values"
            )
        lookup = np.full(int(uniq.max()) - int(uniq.min()) + 1, -1, np.int64)
        for v in uniq:
            lookup[int(v) - int(uniq.min())] = self.index.get(int(v), -1)
        return lookup[gt.astype(np.int64) - int(uniq.min())]

    def query_lookup(self, queries: Sequence[str]) -> np.ndarray:
        """Class index of label value 0 (background) and of each query's value i + 1."""
        return np.asarray([0, *[self.by_name.get(norm_name(q), self.n) for q in queries]])

    def confusion(self, pred: np.ndarray, gt_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(matrix [n, n], missed [n]) of one image; ``pred`` holds class indices."""
        if pred.shape != gt_idx.shape:
            import cv2

            pred = cv2.resize(
                pred.astype(np.int32), gt_idx.shape[::-1], interpolation=cv2.INTER_NEAREST
            )
        valid = gt_idx >= 0
        g, p = gt_idx[valid], pred[valid].astype(np.int64)
        inside = p < self.n
        n = self.n
        matrix = np.bincount(n * g[inside] + p[inside], minlength=n * n).reshape(n, n)
        return matrix, np.bincount(g[~inside], minlength=n)
