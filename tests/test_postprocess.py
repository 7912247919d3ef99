"""CRF input image, CRF masks, the one-hot quirk and label painting, checked by hand."""

from __future__ import annotations

import numpy as np

from cliprnn.config import CaRConfig
from cliprnn.postprocess import (
    assign_label,
    background_probability,
    crf_image,
    crf_masks,
    crf_masks_separate,
    dense_crf,
    paint_stuff_then_things,
)

MEAN = (104.008, 116.669, 122.675)


def test_crf_image_faithful_wraps_negative_values() -> None:
    img = np.array([[[122, 116, 100], [104, 0, 255]]], np.uint8)  # RGB
    out = crf_image(img, True, MEAN)
    # pixel 0: BGR (100, 116, 122) - mean = (-4.008, -0.669, -0.675) -> trunc (-4, 0, 0)
    # pixel 1: BGR (255, 0, 104) - mean = (150.992, -116.669, -18.675) -> (150, -116, -18)
    np.testing.assert_array_equal(out, [[[252, 0, 0], [150, 140, 238]]])
    assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]


def test_crf_image_clean_is_the_rgb_image() -> None:
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)[:, ::-1]
    out = crf_image(img, False, MEAN)
    np.testing.assert_array_equal(out, img)
    assert out.flags["C_CONTIGUOUS"]


def test_background_probability() -> None:
    p = np.array([[[0.2, 0.9]], [[0.5, 0.1]]], np.float32)
    np.testing.assert_allclose(background_probability(p, 1.0), [[[0.5, 0.1]]], atol=1e-6)
    np.testing.assert_allclose(background_probability(p, 2.0), [[[0.25, 0.01]]], atol=1e-6)


def _halves(h: int = 16, w: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    props = np.full((2, h, w), 0.01, np.float32)
    props[0, :, : w // 2] = 0.99
    props[1, :, w // 2 :] = 0.99
    return img, props


def test_dense_crf_peaked_unary_keeps_argmax() -> None:
    img, props = _halves()
    probs = np.concatenate([background_probability(props, 1.0), props])
    q = dense_crf(crf_image(img, True, MEAN), probs, CaRConfig())
    assert q.shape == (3, 16, 16) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(q.argmax(axis=0), probs.argmax(axis=0))


def test_crf_masks_halves() -> None:
    img, props = _halves()
    for faithful in (True, False):
        masks, extras = crf_masks(img, props, CaRConfig(faithful=faithful))
        assert masks.dtype == bool and masks.shape == (2, 16, 16)
        assert masks[0, :, :8].all() and not masks[0, :, 8:].any()
        assert masks[1, :, 8:].all() and not masks[1, :, :8].any()
        assert extras["lost"].tolist() == [False, False]
        assert extras["crf_q"].shape == (3, 16, 16)


def _no_crf_case() -> tuple[np.ndarray, np.ndarray]:
    # 1×4 image; query 0 wins pixel 1, query 1 wins nothing, query 2 wins pixel 2,
    # query 3 wins nothing; pixels 0 and 3 stay background.
    img = np.zeros((1, 4, 3), np.uint8)
    props = np.array(
        [
            [[0.1, 0.9, 0.2, 0.0]],
            [[0.1, 0.3, 0.3, 0.0]],
            [[0.2, 0.1, 0.8, 0.1]],
            [[0.0, 0.2, 0.1, 0.0]],
        ],
        np.float32,
    )
    return img, props


def test_crf_off_is_plain_argmax() -> None:
    img, props = _no_crf_case()
    masks, extras = crf_masks(img, props, CaRConfig(crf=False))
    # bg = 1 - max = [0.8, 0.1, 0.2, 0.9]
    np.testing.assert_array_equal(extras["labels"], [[0, 1, 3, 0]])
    assert "crf_q" not in extras
    expected = np.zeros((4, 1, 4), bool)
    expected[0, 0, 1] = expected[2, 0, 2] = True
    np.testing.assert_array_equal(masks, expected)


def test_one_hot_quirk_drops_only_trailing_labels() -> None:
    img, props = _no_crf_case()
    _, extras = crf_masks(img, props, CaRConfig(crf=False, faithful=True))
    # Largest label present is 3 (query 2): query 3 has no channel; query 1 keeps its
    # (empty) channel because a later label exists.
    assert extras["lost"].tolist() == [False, False, False, True]
    _, extras = crf_masks(img, props, CaRConfig(crf=False, faithful=False))
    assert extras["lost"].tolist() == [False, False, False, False]


def test_one_hot_quirk_all_background() -> None:
    img = np.zeros((2, 2, 3), np.uint8)
    props = np.full((2, 2, 2), 0.1, np.float32)
    masks, extras = crf_masks(img, props, CaRConfig(crf=False))
    assert not masks.any() and extras["lost"].tolist() == [True, True]


def test_bg_factor_override() -> None:
    img = np.zeros((1, 1, 3), np.uint8)
    props = np.array([[[0.45]]], np.float32)  # bg 0.55 -> 0.3025 with factor 2
    masks, _ = crf_masks(img, props, CaRConfig(crf=False))
    assert not masks.any()
    masks, _ = crf_masks(img, props, CaRConfig(crf=False), bg_factor=2.0)
    assert masks.all()


def test_crf_masks_separate_allows_overlap() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    props = np.full((2, 8, 8), 0.02, np.float32)
    props[0, :, :6] = 0.98
    props[1, :, 2:] = 0.98
    masks, extras = crf_masks_separate(img, props, CaRConfig())
    assert extras["lost"].tolist() == [False, False]
    assert extras["crf_image"].shape == (8, 8, 3)
    assert masks[0, :, :6].all() and not masks[0, :, 6:].any()
    assert masks[1, :, 2:].all() and not masks[1, :, :2].any()
    masks_nocrf, extras = crf_masks_separate(img, props, CaRConfig(crf=False))
    np.testing.assert_array_equal(masks_nocrf, masks)
    assert set(extras) == {"lost"}


def test_assign_label_paints_by_ascending_score() -> None:
    masks = np.zeros((3, 1, 5), np.float32)
    masks[0, 0, 0:3] = 1  # score 0.5
    masks[1, 0, 1:4] = 1  # score 0.9 -> painted last
    masks[2, 0, 2:5] = 1  # score 0.7
    label = assign_label(masks, np.array([0.5, 0.9, 0.7]))
    np.testing.assert_array_equal(label, [[1, 2, 2, 2, 3]])
    assert label.dtype == np.int32
    # A zero score paints nothing; mask values must exceed 0.5.
    masks[1] *= 0.5
    label = assign_label(masks, np.array([0.5, 0.9, 0.0]))
    np.testing.assert_array_equal(label, [[1, 1, 1, 0, 0]])


def test_paint_stuff_then_things() -> None:
    masks = np.zeros((3, 1, 4), bool)
    masks[0, 0, :] = True  # stuff, high score
    masks[1, 0, 1:3] = True  # thing, low score: still on top of stuff
    masks[2, 0, 2:] = True  # thing, higher score
    label = paint_stuff_then_things(masks, [0.9, 0.2, 0.3], [True, False, False])
    np.testing.assert_array_equal(label, [[1, 2, 3, 3]])


def test_merge_small_regions_leaves_no_region_under_the_minimum():
    from cliprnn.regions import merge_small_regions

    rng = np.random.default_rng(0)
    label_map = rng.integers(0, 4, (40, 50)).astype(np.uint8)  # mostly specks
    label_map[5:25, 5:30] = 1  # one large object
    out = merge_small_regions(label_map, 12)
    import cv2

    for value in np.unique(out):
        if value:
            _, _, stats, _ = cv2.connectedComponentsWithStats(
                (out == value).astype(np.uint8), connectivity=8
            )
            assert stats[1:, 4].min() >= 12, value
    assert (out[5:25, 5:30] == 1).all()
    assert np.array_equal(merge_small_regions(label_map, 0), label_map)
