"""Image loading (every PIL mode and array layout, every error) and inference-size helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliprnn.errors import ImageError
from cliprnn.imageio import (
    inference_size,
    load_image,
    resize_image,
    resize_masks_nearest,
    resize_soft,
)


def _rgb(h: int = 6, w: int = 8) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _check(out: np.ndarray, h: int, w: int) -> None:
    assert out.dtype == np.uint8 and out.shape == (h, w, 3) and out.flags["C_CONTIGUOUS"]


# ---------------------------------------------------------------------------------------------
# Paths and PIL modes


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    arr = _rgb()
    p = tmp_path / "x.png"
    Image.fromarray(arr).save(p)
    for src in (p, str(p), Image.open(p)):
        out = load_image(src)
        _check(out, 6, 8)
        np.testing.assert_array_equal(out, arr)


def test_gray_l(tmp_path: Path) -> None:
    g = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    p = tmp_path / "l.png"
    Image.fromarray(g, "L").save(p)
    out = load_image(p)
    _check(out, 6, 8)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_la_and_rgba_drop_alpha(tmp_path: Path) -> None:
    arr = _rgb()
    rgba = np.dstack([arr, np.full((6, 8), 7, np.uint8)])
    p = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(p)
    np.testing.assert_array_equal(load_image(p), arr)
    la = np.dstack([arr[..., 0], np.zeros((6, 8), np.uint8)])
    p2 = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(p2)
    out = load_image(p2)
    np.testing.assert_array_equal(out[..., 1], arr[..., 0])


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    expected = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 255, 0]]], np.uint8)
    for transparency in (None, 1):
        im = Image.fromarray(idx, "P")
        im.putpalette(palette)
        p = tmp_path / f"p{transparency}.png"
        if transparency is None:
            im.save(p)
        else:
            im.save(p, transparency=transparency)
        with Image.open(p) as check:
            assert check.mode == "P"
            assert ("transparency" in check.info) == (transparency is not None)
        np.testing.assert_array_equal(load_image(p), expected)


def test_sixteen_bit_scaled(tmp_path: Path) -> None:
    g16 = np.array([[0, 255, 256, 65535]], np.uint16)
    expected = np.array([[0, 0, 1, 255]], np.uint8)
    im = Image.fromarray(g16)  # mode I;16
    assert im.mode.startswith("I;16")
    np.testing.assert_array_equal(load_image(im)[..., 0], expected)
    p = tmp_path / "g16.png"
    im.save(p)
    with Image.open(p) as check:
        assert check.mode in ("I", "I;16")
    np.testing.assert_array_equal(load_image(p)[..., 2], expected)


def test_mode_i_small_values_kept() -> None:
    im = Image.fromarray(np.array([[0, 10, 255]], np.int32), "I")
    np.testing.assert_array_equal(load_image(im)[0, :, 0], [0, 10, 255])


def test_mode_f(tmp_path: Path) -> None:
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    p = tmp_path / "f.tif"
    Image.fromarray(f, "F").save(p)
    np.testing.assert_array_equal(load_image(p)[0, :, 1], [0, 128, 255])
    big = Image.fromarray(np.array([[-10.0, 0.0, 10.0]], np.float32), "F")
    np.testing.assert_array_equal(load_image(big)[0, :, 0], [0, 128, 255])


def test_cmyk(tmp_path: Path) -> None:
    cmyk = np.zeros((2, 2, 4), np.uint8)
    cmyk[0, 0] = (255, 0, 0, 0)  # cyan
    cmyk[1, 1] = (0, 0, 0, 255)  # black
    p = tmp_path / "c.tif"
    Image.fromarray(cmyk, "CMYK").save(p)
    out = load_image(p)
    np.testing.assert_array_equal(out[0, 0], [0, 255, 255])
    np.testing.assert_array_equal(out[1, 1], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])


def test_mode_1(tmp_path: Path) -> None:
    im = Image.new("1", (2, 1))
    im.putpixel((0, 0), 1)
    p = tmp_path / "b.png"
    im.save(p)
    np.testing.assert_array_equal(load_image(p)[0], [[255, 255, 255], [0, 0, 0]])


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)  # top-left red in the stored pixels
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # stored image must be rotated 90° clockwise for display
    p = tmp_path / "exif.png"
    im.save(p, exif=exif.tobytes())
    out = load_image(p)
    assert out.shape == (3, 2, 3)
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])  # now top-right
    assert (out.sum(axis=2) > 0).sum() == 1


# ---------------------------------------------------------------------------------------------
# Arrays


def test_array_layouts() -> None:
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for arr in (g, g[:, :, None]):
        out = load_image(arr)
        _check(out, 3, 4)
        np.testing.assert_array_equal(out[..., 2], g)
    rgb = _rgb(3, 4)
    np.testing.assert_array_equal(load_image(rgb), rgb)
    rgba = np.dstack([rgb, np.zeros((3, 4), np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), rgb)
    np.testing.assert_array_equal(load_image(rgb[:, ::-1]), rgb[:, ::-1])  # non-contiguous


def test_array_dtypes() -> None:
    u16 = np.array([[0, 512, 65535]], np.uint16)
    np.testing.assert_array_equal(load_image(u16)[0, :, 0], [0, 2, 255])
    f = np.array([[0.0, 0.2, 1.0]], np.float32)
    np.testing.assert_array_equal(load_image(f)[0, :, 0], [0, 51, 255])
    b = np.array([[True, False]])
    np.testing.assert_array_equal(load_image(b)[0, :, 0], [255, 0])
    i = np.array([[0, 7, 255]], np.int64)
    np.testing.assert_array_equal(load_image(i)[0, :, 1], [0, 7, 255])


def test_array_errors() -> None:
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(np.array([[0.0, 1.5]], np.float32))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(np.array([[np.nan]], np.float32))
    with pytest.raises(ImageError, match=r"\[0, 255\]"):
        load_image(np.array([[300]], np.int32))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4,), np.uint8))
    with pytest.raises(ImageError, match="zero size"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="must be a path"):
        load_image(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# File errors


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=r"not found.*nope\.png"):
        load_image(p)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty.*empty\.png"):
        load_image(p)


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("hello, I am text")
    with pytest.raises(ImageError, match=r"not an image.*notes\.jpg"):
        load_image(p)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    p = tmp_path / f"full.{fmt}"
    Image.fromarray(arr).save(p, format=fmt.upper())
    data = p.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"cut.{fmt}"):
        load_image(cut)


def test_zero_size_pil_image() -> None:
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 3)))


# ---------------------------------------------------------------------------------------------
# Sizes


def test_inference_size() -> None:
    assert inference_size(600, 800, None) == (600, 800)
    assert inference_size(600, 800, 1024) == (600, 800)
    assert inference_size(600, 800, 800) == (600, 800)
    assert inference_size(600, 800, 400) == (300, 400)
    assert inference_size(2000, 1000, 512) == (512, 256)
    assert inference_size(1000, 333, 500) == (500, 166)  # 166.5 -> banker's 166
    assert inference_size(5000, 3, 100) == (100, 1)


def test_resize_helpers() -> None:
    img = _rgb(4, 6)
    assert resize_image(img, (4, 6)) is img
    small = resize_image(img, (2, 3))
    assert small.shape == (2, 3, 3) and small.dtype == np.uint8
    masks = np.zeros((2, 2, 3), bool)
    masks[0, 0, 0] = True
    masks[1, 1, 2] = True
    big = resize_masks_nearest(masks, (4, 6))
    assert big.dtype == bool and big.shape == (2, 4, 6)
    assert big[0, :2, :2].all() and big[0].sum() == 4
    assert big[1, 2:, 4:].all() and big[1].sum() == 4
    labels = np.array([[0, 3], [7, 1]], np.int32)
    np.testing.assert_array_equal(
        resize_masks_nearest(labels, (4, 4)), np.kron(labels, np.ones((2, 2), np.int32))
    )
    soft = np.array([[[0.0, 1.0]]], np.float32)  # 1×2 -> 1×4, half-pixel centres
    np.testing.assert_allclose(resize_soft(soft, (1, 4))[0, 0], [0.0, 0.25, 0.75, 1.0])
    assert resize_soft(soft[0], (2, 4)).shape == (2, 4)
    assert resize_masks_nearest(np.zeros((0, 2, 2), bool), (4, 4)).shape == (0, 4, 4)
