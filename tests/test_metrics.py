"""Confusion matrix, IoU and mIoU on a case computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cliprnn.dev.metrics import ConfusionMatrix


def test_hand_computed_miou() -> None:
    gt = np.array([[0, 0, 1, 1], [1, 2, 255, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 1]])
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    # kept pairs (gt, pred): (0,0) (0,1) (1,1) (1,1) (1,0) (2,2) (2,1); the 255 pixel is ignored
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 0] = expected[2, 2] = expected[2, 1] = 1
    expected[1, 1] = 2
    np.testing.assert_array_equal(cm.matrix, expected)
    # class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (3 + 4 - 2) = 2/5; class 2: 1 / (2 + 1 - 1)
    iou = cm.iou()
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 5, 1 / 2])
    assert math.isnan(iou[3])  # never in gt nor predicted
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 5 + 1 / 2) / 3)


def test_predicted_only_class_is_not_averaged() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 2, 2]), np.array([0, 0, 0]))
    # class 2 has no gt pixels: IoU 0 but excluded from the mean
    np.testing.assert_allclose(cm.iou(), [1 / 3, np.nan, 0.0])
    assert cm.miou() == pytest.approx(1 / 3)


def test_accumulates_over_images_and_ignores_out_of_range_gt() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([1, 1]), np.array([1, 5]))
    cm.update(np.array([[0]]), np.array([[1]]))
    np.testing.assert_array_equal(cm.matrix, [[0, 0], [1, 1]])
    assert cm.miou() == pytest.approx(0.5)
    cm.update(np.array([9]), np.array([0]))  # prediction outside the classes: a miss
    np.testing.assert_allclose(cm.iou(), [0.0, 0.5])


def test_custom_ignore_index_and_errors() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 0]), ignore_index=0)
    assert cm.matrix.sum() == 0 and math.isnan(cm.miou())
    with pytest.raises(ValueError, match="pixels"):
        cm.update(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError):
        ConfusionMatrix(0)
