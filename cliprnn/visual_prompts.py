"""Visual prompts: mark a proposal's region on a copy of the image for the mask classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes

from cliprnn.config import VISUAL_PROMPTS
from cliprnn.errors import ConfigError

#: Colour of the drawn prompts (red in RGB) and their line thickness, as in the reference.
PROMPT_COLOR: tuple[int, int, int] = (255, 0, 0)
PROMPT_THICKNESS = 1
BLUR_KERNEL: tuple[int, int] = (15, 15)

PromptFn = Callable[..., np.ndarray]


def _keep_inside(image: np.ndarray, outside: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` where ``mask`` is set, ``outside`` elsewhere (both uint8 [H, W, 3])."""
    mask_u8 = mask.astype(np.uint8)
    sharp = cv2.bitwise_and(image, image, mask=mask_u8)
    rest = (outside * (1 - mask_u8)[:, :, None]).astype(np.uint8)
    return cv2.add(sharp, rest)


def blur(image: np.ndarray, mask: np.ndarray, *, faithful: bool = True) -> np.ndarray:
    """Gaussian-blur (15×15, σ derived by OpenCV = 2.6) everything outside ``mask``."""
    blurred = cv2.GaussianBlur(image, BLUR_KERNEL, 0)
    return _keep_inside(image, blurred, mask)


def gray(image: np.ndarray, mask: np.ndarray, *, faithful: bool = True) -> np.ndarray:
    """Grey out everything outside ``mask``.

    Faithful mode converts with OpenCV's BGR weights on the RGB array (R and B weights swapped,
    as the reference does); clean mode uses the RGB weights.
    """
    code = cv2.COLOR_BGR2GRAY if faithful else cv2.COLOR_RGB2GRAY
    grey = cv2.cvtColor(image, code)
    return _keep_inside(image, np.repeat(grey[:, :, None], 3, axis=2), mask)


def black(image: np.ndarray, mask: np.ndarray, *, faithful: bool = True) -> np.ndarray:
    """Set everything outside ``mask`` to 0."""
    return np.where(mask[:, :, None], image, 0).astype(np.uint8)


def _centre_and_half_axes(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(centroid x, y) and half the bounding box's (width, height) of ``mask``; None when empty.

    Width and height count pixels (max - min + 1); halves round down.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    centre = (int(cols.mean()), int(rows.mean()))
    half = (int(cols.max() - cols.min() + 1) // 2, int(rows.max() - rows.min() + 1) // 2)
    return centre, half


def circle(image: np.ndarray, mask: np.ndarray, *, faithful: bool = True) -> np.ndarray:
    """Draw a red ellipse around ``mask`` (centred on its centroid, axes from its bounding box)."""
    out = np.ascontiguousarray(image).copy()
    geometry = _centre_and_half_axes(mask)
    if geometry is not None:
        centre, axes = geometry
        cv2.ellipse(out, centre, axes, 0, 0, 360, PROMPT_COLOR, PROMPT_THICKNESS)
    return out


def rectangle(image: np.ndarray, mask: np.ndarray, *, faithful: bool = True) -> np.ndarray:
    """Draw a red box of the mask's bounding-box size centred on its centroid."""
    out = np.ascontiguousarray(image).copy()
    geometry = _centre_and_half_axes(mask)
    if geometry is not None:
        (cx, cy), (ax, ay) = geometry
        cv2.rectangle(out, (cx - ax, cy - ay), (cx + ax, cy + ay), PROMPT_COLOR, PROMPT_THICKNESS)
    return out


def contour(image: np.ndarray, mask: np.ndarray, *, faithful: bool = True) -> np.ndarray:
    """Draw the red outline of ``mask`` with its holes filled."""
    out = np.ascontiguousarray(image).copy()
    filled = binary_fill_holes(mask).astype(np.uint8)
    contours, _ = cv2.findContours(filled, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, PROMPT_COLOR, PROMPT_THICKNESS)
    return out


#: Every visual prompt by name; each maps (RGB uint8 image, bool mask) to a new image.
PROMPTS: dict[str, PromptFn] = {
    "blur": blur,
    "gray": gray,
    "black": black,
    "circle": circle,
    "rectangle": rectangle,
    "contour": contour,
}
assert tuple(PROMPTS) == VISUAL_PROMPTS


def check_prompts(prompts: Sequence[str]) -> None:
    """Raise ConfigError naming every prompt that is not in the registry."""
    if isinstance(prompts, str):
        raise ConfigError(f"visual prompts must be a list of names, not the string {prompts!r}")
    unknown = [p for p in prompts if p not in PROMPTS]
    if unknown:
        raise ConfigError(f"unknown visual prompt(s) {unknown}; choose from {list(PROMPTS)}")


def apply_visual_prompts(
    image: np.ndarray,
    proposal: np.ndarray,
    prompts: Sequence[str],
    threshold: float,
    *,
    faithful: bool = True,
) -> np.ndarray:
    """The classifier's view of one proposal: ``image`` with ``prompts`` drawn for it.

    ``proposal`` is a soft mask [H, W] at image resolution; it is binarised at ``threshold``
    (η). A proposal whose sum is at most 1 leaves the image unprompted. The prompts are
    composed on one image in the fixed order of ``VISUAL_PROMPTS``, whatever the order given.
    """
    check_prompts(prompts)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if proposal.shape != image.shape[:2]:
        raise ValueError(f"proposal shape {proposal.shape} != image shape {image.shape[:2]}")
    out = np.ascontiguousarray(image).copy()
    if float(proposal.sum()) <= 1:
        return out
    mask = proposal > threshold
    wanted = set(prompts)
    for name in VISUAL_PROMPTS:
        if name in wanted:
            out = PROMPTS[name](out, mask, faithful=faithful)
    return out
