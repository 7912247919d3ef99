"""Image input: any path, PIL image or array to RGB uint8; resizing to and from inference size."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cliprnn.errors import ImageError

ImageLike = str | os.PathLike | Image.Image | np.ndarray
_EXIF_ORIENTATION = 0x0112


def load_image(image: ImageLike, max_pixels: int | None = None) -> np.ndarray:
    """The image as a C-contiguous RGB uint8 array [H, W, 3].

    Accepts a file path, a PIL image (EXIF orientation applied; any mode: 1, L, LA, P, RGB,
    RGBA, CMYK, YCbCr, I;16, I, F, ...) or an array (H×W, H×W×1, H×W×3, H×W×4 — alpha is
    dropped — of uint8, uint16, bool or floats in [0, 1]). Raises ImageError naming the input
    when it is missing, empty, truncated, not an image, has no pixels, or has more than
    ``max_pixels`` pixels (checked before a file is decoded).
    """
    if isinstance(image, np.ndarray):
        _check_budget(image.shape[1] if image.ndim > 1 else 1, image.shape[0], max_pixels, "array")
        return _from_array(image, "array")
    if isinstance(image, Image.Image):
        _check_budget(image.width, image.height, max_pixels, "PIL image")
        return _from_pil(image, "PIL image")
    if isinstance(image, (str, os.PathLike)):
        return _from_path(Path(image), max_pixels)
    raise ImageError(
        f"image must be a path, a PIL image or a numpy array, got {type(image).__name__}"
    )


def _check_budget(width: int, height: int, max_pixels: int | None, name: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"image {name} is {width}×{height} = {width * height / 1e6:.1f} Mpx, over the "
            f"pixel budget of {max_pixels / 1e6:g} Mpx (CaRConfig.max_image_pixels); downscale "
            "it, or raise the budget if the machine has the memory"
        )


def _from_path(path: Path, max_pixels: int | None = None) -> np.ndarray:
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if not path.is_file():
        raise ImageError(f"image path is not a file: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"image file is empty (0 bytes): {path}")
    try:
        with Image.open(path) as im:  # reads the header only
            _check_budget(im.width, im.height, max_pixels, str(path))
            return _from_pil(im, str(path))
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image file (format not recognised): {path}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"image {path} has more pixels than Pillow's safety limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}); raise that limit if the "
            f"file is trusted: {exc}"
        ) from exc
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"could not read image {path}: {exc}") from exc


def _from_pil(im: Image.Image, name: str) -> np.ndarray:
    try:
        im.load()  # decode fully so truncated files fail here
    except (OSError, SyntaxError, ValueError) as exc:
        what = "truncated or corrupt" if "truncat" in str(exc).lower() else "unreadable"
        raise ImageError(f"image {name} is {what}: {exc}") from exc
    if im.width == 0 or im.height == 0:
        raise ImageError(f"image {name} has zero size ({im.width}×{im.height})")
    with contextlib.suppress(Exception):  # malformed EXIF must not make an image unreadable
        if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:  # else exif_transpose copies for nothing
            im = ImageOps.exif_transpose(im) or im
    mode = im.mode
    if mode.startswith("I;16"):
        arr = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
        return _gray_to_rgb(arr)
    if mode in ("I", "F"):
        return _gray_to_rgb(_rescale_to_u8(np.asarray(im), name))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    try:
        rgb = im if im.mode == "RGB" else im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(
            f"image {name} has mode {mode!r}, which cannot be turned into RGB"
        ) from exc
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _gray_to_rgb(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))


def _rescale_to_u8(arr: np.ndarray, name: str) -> np.ndarray:
    """One channel of 32-bit integers or floats to uint8.

    Floats in [0, 1] scale by 255; values already in [0, 255] are kept; 16-bit integer data
    shifts right by 8; anything else is stretched from its min to its max.
    """
    a = arr.astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageError(f"image {name} holds NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0 and hi <= 1:
        return np.rint(a * 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return np.rint(a).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) and lo >= 0 and hi <= 65535:
        return (arr.astype(np.uint32) >> 8).astype(np.uint8)
    span = hi - lo if hi > lo else 1.0
    return np.rint((a - lo) / span * 255).astype(np.uint8)


def _from_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise ImageError(f"{name} must be H×W, H×W×1, H×W×3 or H×W×4, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{name} has zero size (shape {tuple(arr.shape)})")
    if arr.ndim == 3:
        arr = arr[:, :, :1] if arr.shape[2] == 2 else arr[:, :, :3]
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        out = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float64)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ImageError(f"float {name} must hold values in [0, 1]")
        out = np.rint(a * 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ImageError(f"integer {name} of dtype {arr.dtype} must hold values in [0, 255]")
        out = arr.astype(np.uint8)
    else:
        raise ImageError(f"{name} has unsupported dtype {arr.dtype}")
    if out.ndim == 2 or out.shape[2] == 1:
        out = _gray_to_rgb(out.reshape(out.shape[0], out.shape[1]))
    return np.ascontiguousarray(out)


def inference_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """(h', w') with the aspect ratio kept and the longer side at most ``max_side``.

    ``None`` or an image already small enough leaves the size unchanged.
    """
    if max_side is None or max(h, w) <= max_side:
        return h, w
    if h >= w:
        return max_side, max(1, round(w * max_side / h))
    return max(1, round(h * max_side / w)), max_side


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """RGB uint8 image resized to ``hw`` = (h, w) with PIL bicubic."""
    h, w = hw
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))


def resize_masks_nearest(masks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Masks [N, H, W] (or one [H, W]) resized to ``hw`` by nearest neighbour, dtype kept."""
    if masks.ndim == 2:
        return resize_masks_nearest(masks[None], hw)[0]
    h, w = hw
    out = np.zeros((masks.shape[0], h, w), masks.dtype)
    for i, m in enumerate(masks):
        if not m.any():
            continue  # leave the zero pages untouched: dropped queries cost no memory
        if m.dtype == np.bool_:  # OpenCV has no bool type; write 0/1 bytes into the bool array
            dst = out[i].view(np.uint8)
            src = np.ascontiguousarray(m).view(np.uint8)
            cv2.resize(src, (w, h), dst=dst, interpolation=cv2.INTER_NEAREST)
        else:
            out[i] = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    return out


def resize_soft(probs: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Soft maps [N, H, W] (or one [H, W]) resized to ``hw`` bilinearly, as float32."""
    if probs.ndim == 2:
        return resize_soft(probs[None], hw)[0]
    h, w = hw
    out = np.zeros((probs.shape[0], h, w), np.float32)
    for i, p in enumerate(probs):
        if not p.any():
            continue  # as in resize_masks_nearest
        src = np.ascontiguousarray(p, dtype=np.float32)
        cv2.resize(src, (w, h), dst=out[i], interpolation=cv2.INTER_LINEAR)
    return out
