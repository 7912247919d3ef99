"""Semantic-segmentation scores: confusion matrices, mIoU and bootstrap intervals over images."""

from __future__ import annotations

import numpy as np

#: Bootstrap resamples of the 95 % intervals.
BOOTSTRAP = 1000


def confusion(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """One image's (confusion matrix [n, n], missed [n]); see ConfusionMatrix."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.size} pixels, ground truth {gt.size}")
    n = num_classes
    valid = (gt != ignore_index) & (gt >= 0) & (gt < n)
    gt, pred = gt[valid], pred[valid]
    inside = (pred >= 0) & (pred < n)
    matrix = np.bincount(n * gt[inside] + pred[inside], minlength=n * n).reshape(n, n)
    return matrix, np.bincount(gt[~inside], minlength=n)


def miou_of(matrix: np.ndarray, missed: np.ndarray) -> float:
    """Mean IoU (a fraction) over the classes with ground-truth pixels; NaN when none has."""
    m = matrix.astype(np.float64)
    tp = np.diag(m)
    gt = m.sum(axis=1) + missed
    union = gt + m.sum(axis=0) - tp
    valid = gt > 0
    if not valid.any():
        return float("nan")
    return float(np.mean(tp[valid] / union[valid]))


def bootstrap_interval(
    matrices: np.ndarray,
    missed: np.ndarray,
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile interval (in %) of the split's mIoU, images resampled with replacement.

    ``matrices`` [N, C, C] and ``missed`` [N, C] are per image.
    """
    n = len(matrices)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    flat = matrices.reshape(n, -1).astype(np.float64)
    values = []
    for _ in range(resamples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        m = (counts @ flat).reshape(matrices.shape[1:])
        values.append(miou_of(m, counts @ missed))
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return 100.0 * float(lo), 100.0 * float(hi)


def paired_gain_interval(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % interval (in points) of mIoU(a) - mIoU(b), the same images resampled for both."""
    n = len(a[0])
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    fa, fb = (x[0].reshape(n, -1).astype(np.float64) for x in (a, b))
    shape = a[0].shape[1:]
    values = []
    for _ in range(resamples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        ma = miou_of((counts @ fa).reshape(shape), counts @ a[1])
        mb = miou_of((counts @ fb).reshape(shape), counts @ b[1])
        values.append(ma - mb)
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return 100.0 * float(lo), 100.0 * float(hi)
