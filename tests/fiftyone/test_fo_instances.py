"""Instances from a semantic mask and back: regions, pixel-centre sampling of masks the App
saved at another resolution, which instance wins an overlap, and trimming the losers."""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest

from cliprnn.errors import ConfigError
from cliprnn.fiftyone.instances import (
    instance_pixels,
    instances_from_mask,
    render_instances,
    settle_instances,
)

pytestmark = pytest.mark.fiftyone

TARGETS = {1: "dog", 2: "sky"}
VALUES = {"dog": 1, "sky": 2}


def _two_dogs() -> np.ndarray:
    mask = np.zeros((10, 16), dtype=np.uint8)
    mask[:3, :] = 2  # sky across the top
    mask[5:9, 1:5] = 1  # one dog
    mask[4:8, 10:15] = 1  # another dog
    return mask


def test_one_instance_per_region_or_per_class() -> None:
    mask = _two_dogs()
    regions = instances_from_mask(mask, TARGETS, {"dog": 0.8, "sky": 0.4}).detections
    assert sorted(d.label for d in regions) == ["dog", "dog", "sky"]
    assert {d.label: d.confidence for d in regions} == {"dog": 0.8, "sky": 0.4}
    assert all(d.value == VALUES[d.label] for d in regions)
    per_class = instances_from_mask(mask, TARGETS, instances="class").detections
    assert sorted(d.label for d in per_class) == ["dog", "sky"]
    assert all(d.confidence is None for d in per_class)
    for dets in (regions, per_class):
        back = render_instances(dets, VALUES, mask.shape, np.uint8).mask
        np.testing.assert_array_equal(back, mask)
    with pytest.raises(ConfigError, match="instances"):
        instances_from_mask(mask, TARGETS, instances="blob")


def test_a_mask_saved_at_another_resolution_is_read_at_pixel_centres() -> None:
    # the App stores an edited mask at 6.25x the image with a box off the pixel grid
    h, w, scale = 40, 64, 6.25
    truth = np.zeros((h, w), dtype=bool)
    truth[10:22, 20:37] = True
    truth[15:18, 37:45] = True  # a brush stroke to the right
    x0, y0, x1, y1 = 19.7, 9.8, 45.3, 22.2  # the box, in image pixels, not on the grid
    mh, mw = round((y1 - y0) * scale), round((x1 - x0) * scale)
    # the App's mask: each of its cells is set when the image pixel it lies over is painted
    ys = np.clip(np.floor(y0 + (np.arange(mh) + 0.5) / scale).astype(int), 0, h - 1)
    xs = np.clip(np.floor(x0 + (np.arange(mw) + 0.5) / scale).astype(int), 0, w - 1)
    hi_res = truth[np.ix_(ys, xs)]
    det = fo.Detection(
        label="dog", bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h], mask=hi_res
    )
    got = instance_pixels(det, (h, w))
    np.testing.assert_array_equal(got, truth)
    # FiftyOne's own renderer rounds the box and resizes: a fringe of changed pixels
    fo_mask = det.to_segmentation(frame_size=(w, h), target=1).mask.astype(bool)
    assert np.count_nonzero(fo_mask != truth) > 0


def test_box_only_and_empty_detections() -> None:
    box = fo.Detection(label="dog", bounding_box=[0.25, 0.5, 0.5, 0.5])
    got = instance_pixels(box, (4, 8))
    assert got[2:, 2:6].all() and got.sum() == 8
    tiny = fo.Detection(label="dog", bounding_box=[0.0, 0.0, 0.01, 0.01])
    assert not instance_pixels(tiny, (4, 8)).any()


def test_an_edited_instance_wins_and_the_loser_is_trimmed() -> None:
    mask = _two_dogs()
    dets = list(instances_from_mask(mask, TARGETS, {"dog": 0.3, "sky": 0.9}).detections)
    sky = next(d for d in dets if d.label == "sky")
    dog = next(d for d in dets if d.label == "dog" and d.bounding_box[0] < 0.5)
    # the user paints the left dog up into the sky (rows 1..4, cols 1..4)
    painted = instance_pixels(dog, mask.shape)
    painted[1:5, 1:5] = True
    dog.mask = painted[1:9, 1:5]
    dog.bounding_box = [1 / 16, 1 / 10, 4 / 16, 8 / 10]
    rendered = render_instances(dets, VALUES, mask.shape, np.uint8, previous=mask)
    expected = mask.copy()
    expected[1:5, 1:5] = 1
    np.testing.assert_array_equal(rendered.mask, expected)  # the lower score won: it was edited
    settled, changed = settle_instances(dets, rendered)
    assert changed == 1 and len(settled) == 3
    assert not instance_pixels(sky, mask.shape)[1:3, 1:5].any()
    # folding the settled instances again changes nothing
    again = render_instances(settled, VALUES, mask.shape, np.uint8, previous=rendered.mask)
    np.testing.assert_array_equal(again.mask, rendered.mask)
    assert settle_instances(settled, again)[1] == 0


def test_a_drawn_instance_wins_and_a_fully_covered_one_is_dropped() -> None:
    mask = _two_dogs()
    dets = list(instances_from_mask(mask, TARGETS, {"dog": 0.9, "sky": 0.9}).detections)
    drawn = fo.Detection(label="sky", bounding_box=[0.5, 0.3, 0.5, 0.6])  # no score: drawn
    dets.append(drawn)
    rendered = render_instances(dets, VALUES, mask.shape, np.uint8, previous=mask)
    assert (rendered.mask[3:9, 8:16] == 2).all()
    settled, changed = settle_instances(dets, rendered)
    assert changed == 1 and len(settled) == 3  # the right dog lost every pixel
    assert drawn in settled
