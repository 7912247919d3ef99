"""Visual prompts, pixel by pixel on tiny images, against expectations built by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cliprnn.errors import ConfigError
from cliprnn.visual_prompts import PROMPTS, apply_visual_prompts

RED = np.array([255, 0, 0], np.uint8)


def _image(h: int = 8, w: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img[..., 0] = np.minimum(img[..., 0], 200)  # no pure red pixel by chance
    return img


def _box_mask(h: int, w: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


def _red_pixels(img: np.ndarray) -> set[tuple[int, int]]:
    ys, xs = np.nonzero((img == RED).all(axis=2))
    return {(int(x), int(y)) for x, y in zip(xs, ys, strict=True)}


def _numpy_gaussian_blur(img: np.ndarray, size: int = 15) -> np.ndarray:
    """Separable Gaussian with OpenCV's σ rule for sigma=0 and reflect-101 borders."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    assert math.isclose(sigma, 2.6)
    r = size // 2
    k = np.exp(-((np.arange(size) - r) ** 2) / (2 * sigma**2))
    k /= k.sum()
    x = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
    x = sum(k[i] * x[i : i + img.shape[0]] for i in range(size))
    x = sum(k[i] * x[:, i : i + img.shape[1]] for i in range(size))
    return np.clip(np.rint(x), 0, 255)


def test_registry_names_and_order() -> None:
    assert list(PROMPTS) == ["blur", "gray", "black", "circle", "rectangle", "contour"]


def test_blur_outside_mask_matches_numpy_gaussian() -> None:
    img = _image()
    mask = _box_mask(8, 10, (2, 5), (3, 7))
    out = PROMPTS["blur"](img, mask)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[mask], img[mask])
    ref = _numpy_gaussian_blur(img)
    diff = np.abs(out.astype(int) - ref.astype(int))[~mask]
    assert diff.max() <= 1
    assert not np.array_equal(out[~mask], img[~mask])


def test_gray_faithful_swaps_red_and_blue_weights() -> None:
    img = _image()
    mask = _box_mask(8, 10, (0, 3), (0, 4))
    r, g, b = (img[..., i].astype(float) for i in range(3))
    swapped = np.rint(0.114 * r + 0.587 * g + 0.299 * b)
    proper = np.rint(0.299 * r + 0.587 * g + 0.114 * b)
    for faithful, grey in ((True, swapped), (False, proper)):
        out = PROMPTS["gray"](img, mask, faithful=faithful)
        np.testing.assert_array_equal(out[mask], img[mask])
        for c in range(3):
            d = np.abs(out[..., c].astype(int) - grey.astype(int))[~mask]
            assert d.max() <= 1
    # A pure-red and a pure-blue pixel outside the mask show which weights were used.
    img2 = np.zeros((2, 2, 3), np.uint8)
    img2[0, 0] = (255, 0, 0)
    img2[0, 1] = (0, 0, 255)
    none = np.zeros((2, 2), bool)
    out = PROMPTS["gray"](img2, none, faithful=True)
    assert out[0, 0, 0] == 29 and out[0, 1, 0] == 76  # 0.114*255, 0.299*255
    out = PROMPTS["gray"](img2, none, faithful=False)
    assert out[0, 0, 0] == 76 and out[0, 1, 0] == 29


def test_black_zeroes_outside() -> None:
    img = _image()
    mask = _box_mask(8, 10, (1, 2), (1, 8))
    out = PROMPTS["black"](img, mask)
    np.testing.assert_array_equal(out[mask], img[mask])
    assert (out[~mask] == 0).all()


def test_circle_small_is_the_four_point_diamond() -> None:
    # Mask rows 2..5, cols 3..7: centroid (x=5, y=int(3.5)=3), bbox 5×4 -> axes (2, 2).
    # OpenCV approximates an ellipse this small by 4 vertices (90° steps): (7,3) (5,5) (3,3)
    # (5,1), joined with 8-connected lines.
    img = _image()
    mask = _box_mask(8, 10, (2, 5), (3, 7))
    out = PROMPTS["circle"](img, mask)
    expected = {(7, 3), (6, 4), (5, 5), (4, 4), (3, 3), (4, 2), (5, 1), (6, 2)}
    assert _red_pixels(out) == expected
    untouched = np.ones((8, 10), bool)
    for x, y in expected:
        untouched[y, x] = False
    np.testing.assert_array_equal(out[untouched], img[untouched])


def test_rectangle_is_bbox_sized_around_centroid() -> None:
    img = _image()
    mask = _box_mask(8, 10, (2, 5), (3, 7))
    out = PROMPTS["rectangle"](img, mask)
    # corners (5-2, 3-2) = (3, 1) and (5+2, 3+2) = (7, 5)
    expected = {(x, y) for x in range(3, 8) for y in (1, 5)}
    expected |= {(x, y) for y in range(1, 6) for x in (3, 7)}
    assert _red_pixels(out) == expected


def test_contour_fills_holes_before_tracing() -> None:
    img = _image()
    mask = _box_mask(8, 10, (1, 6), (2, 7))
    mask[3:5, 4:6] = False  # a hole
    out = PROMPTS["contour"](img, mask)
    expected = {(x, y) for x in range(2, 8) for y in (1, 6)}
    expected |= {(x, y) for y in range(1, 7) for x in (2, 7)}
    assert _red_pixels(out) == expected


def test_apply_composes_in_fixed_order() -> None:
    img = _image(16, 20, seed=3)
    proposal = np.zeros((16, 20), np.float32)
    proposal[4:12, 5:15] = 0.9
    mask = proposal > 0.4
    expected = PROMPTS["circle"](PROMPTS["blur"](img, mask), mask)
    for order in (["circle", "blur"], ["blur", "circle"]):
        out = apply_visual_prompts(img, proposal, order, 0.4)
        np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(expected, PROMPTS["blur"](PROMPTS["circle"](img, mask), mask))


def test_apply_threshold_is_strict() -> None:
    img = _image()
    proposal = np.full((8, 10), 0.4, np.float32)
    proposal[0, 0] = 0.5
    out = apply_visual_prompts(img, proposal, ["black"], 0.4)
    assert (out[0, 0] == img[0, 0]).all()
    assert (out.reshape(-1, 3)[1:] == 0).all()


def test_apply_small_proposal_leaves_image_unchanged() -> None:
    img = _image()
    proposal = np.zeros((8, 10), np.float32)
    proposal[3, 3] = 1.0  # sum == 1
    out = apply_visual_prompts(img, proposal, ["black", "circle"], 0.4)
    np.testing.assert_array_equal(out, img)
    assert out is not img
    proposal[3, 4] = 0.01
    assert not np.array_equal(apply_visual_prompts(img, proposal, ["black"], 0.4), img)


def test_apply_does_not_modify_input() -> None:
    img = _image()
    before = img.copy()
    proposal = np.zeros((8, 10), np.float32)
    proposal[2:6, 3:8] = 1.0
    apply_visual_prompts(img, proposal, list(PROMPTS), 0.4)
    np.testing.assert_array_equal(img, before)


def test_apply_empty_binary_mask_draws_no_shape() -> None:
    img = _image()
    proposal = np.full((8, 10), 0.3, np.float32)  # sum > 1 but nothing above η
    out = apply_visual_prompts(img, proposal, ["circle", "rectangle", "contour"], 0.4)
    np.testing.assert_array_equal(out, img)


def test_unknown_prompt_names_raise_config_error() -> None:
    img = _image()
    proposal = np.ones((8, 10), np.float32)
    with pytest.raises(ConfigError, match=r"sparkle.*glow"):
        apply_visual_prompts(img, proposal, ["blur", "sparkle", "glow"], 0.4)
    with pytest.raises(ConfigError, match="list"):
        apply_visual_prompts(img, proposal, "blur", 0.4)
