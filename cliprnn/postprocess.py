"""Post-processing: dense CRF over the final proposals, and painting masks into a label map."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cliprnn.config import CaRConfig

#: ``dense_crf``'s signature: (uint8 image [H, W, 3], probabilities [C, H, W], config) -> Q.
CrfFunction = Callable[[np.ndarray, np.ndarray, Any], np.ndarray]
#: The config fields ``dense_crf`` reads.
CRF_FIELDS = ("crf_iterations", "crf_pos_xy_std", "crf_pos_w", "crf_bi_xy_std", "crf_bi_rgb_std",
              "crf_bi_w")  # fmt: skip


def crf_image(
    image: np.ndarray, faithful: bool, mean_bgr: Sequence[float] = (104.008, 116.669, 122.675)
) -> np.ndarray:
    """The uint8 image the CRF's bilateral term compares colours on.

    Faithful mode reproduces the reference: BGR, minus ``mean_bgr``, then cast to uint8 with
    truncation toward zero and wrap-around (-3.5 -> 253). Clean mode passes the RGB image.
    """
    if not faithful:
        out = np.ascontiguousarray(image, dtype=np.uint8)
        # pydensecrf needs a writable buffer; images decoded from files are read-only views
        return out if out.flags.writeable else out.copy()
    shifted = image[:, :, ::-1].astype(np.float32) - np.asarray(mean_bgr, np.float32)
    wrapped = np.trunc(shifted).astype(np.int64) % 256
    return np.ascontiguousarray(wrapped.astype(np.uint8))


def dense_crf(image_u8: np.ndarray, probs: np.ndarray, config: CaRConfig) -> np.ndarray:
    """Mean-field marginals Q [C, H, W] of a fully connected CRF over ``probs`` [C, H, W].

    The unary is -log(clip(p, 1e-5, 1)) without renormalising the C maps; the pairwise terms
    are a Gaussian and a bilateral kernel with the config's deeplab-v2 settings.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    if image_u8.shape != (h, w, 3) or image_u8.dtype != np.uint8:
        raise ValueError(
            f"CRF image must be uint8 [{h}, {w}, 3], got {image_u8.dtype} {image_u8.shape}"
        )
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=config.crf_pos_xy_std, compat=config.crf_pos_w)
    crf.addPairwiseBilateral(
        sxy=config.crf_bi_xy_std,
        srgb=config.crf_bi_rgb_std,
        rgbim=np.ascontiguousarray(image_u8),
        compat=config.crf_bi_w,
    )
    q = crf.inference(config.crf_iterations)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def background_probability(proposals: np.ndarray, bg_factor: float) -> np.ndarray:
    """(1 - max over proposals)^bg_factor, shape [1, H, W]."""
    return np.power(1.0 - proposals.max(axis=0, keepdims=True), bg_factor).astype(np.float32)


def _labels_to_masks(labels: np.ndarray, n: int, faithful: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-query masks [n, H, W] from a label map (0 = background) and which kept a channel.

    Faithful mode copies the reference's one-hot encoding without a class count: labels
    above the largest label present get no channel at all (their query is then dropped).
    """
    masks = labels[None] == np.arange(1, n + 1)[:, None, None]
    has_channel = np.arange(1, n + 1) <= int(labels.max()) if faithful else np.ones(n, bool)
    return masks, has_channel


def crf_masks(
    image: np.ndarray,
    proposals: np.ndarray,
    config: CaRConfig,
    *,
    bg_factor: float | None = None,
    crf_fn: CrfFunction | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Mutually exclusive binary masks [N, H, W] for N competing proposals, and extras.

    The background map is stacked first, the CRF (when ``config.crf``) smooths all maps
    together, and each pixel goes to the arg-max. ``extras["lost"]`` (bool [N]) marks the
    queries that lost their one-hot channel (see ``_labels_to_masks``; never in clean mode):
    their score must become 0. Other extras: ``labels``, and ``crf_image``, ``crf_q`` with
    the CRF on. ``crf_fn`` stands in for ``dense_crf`` (the same computation elsewhere, e.g. in
    a worker process).
    """
    n = proposals.shape[0]
    factor = config.bg_factor if bg_factor is None else bg_factor
    probs = np.concatenate([background_probability(proposals, factor), proposals], axis=0)
    extras: dict[str, Any] = {}
    if config.crf:
        img = crf_image(image, config.faithful, config.crf_mean_bgr)
        q = (crf_fn or dense_crf)(img, probs, config)
        extras.update(crf_image=img, crf_q=q)
    else:
        q = probs
    labels = np.argmax(q, axis=0)
    extras["labels"] = labels.astype(np.int32)
    masks, has_channel = _labels_to_masks(labels, n, config.faithful)
    extras["lost"] = ~has_channel
    return masks, extras


def crf_masks_separate(
    image: np.ndarray,
    proposals: np.ndarray,
    config: CaRConfig,
    *,
    bg_factor: float | None = None,
    crf_fn: CrfFunction | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Referring mode: one two-label CRF per proposal against its own background (1 - p).

    Masks may overlap; no query is ever ``lost`` (extras and ``crf_fn`` as in ``crf_masks``).
    """
    crf = crf_fn or dense_crf
    factor = config.bg_factor if bg_factor is None else bg_factor
    img = crf_image(image, config.faithful, config.crf_mean_bgr) if config.crf else None
    masks = np.zeros(proposals.shape, bool)
    for i, p in enumerate(proposals):
        probs = np.stack([np.power(1.0 - p, factor), p]).astype(np.float32)
        q = crf(img, probs, config) if img is not None else probs
        masks[i] = np.argmax(q, axis=0) == 1
    extras: dict[str, Any] = {"lost": np.zeros(len(proposals), bool)}
    if img is not None:
        extras["crf_image"] = img
    return masks, extras


def assign_label(masks: np.ndarray, scores: np.ndarray | Sequence[float]) -> np.ndarray:
    """Label map int32 [H, W]: 0 background, q + 1 where query q's mask wins.

    Queries are painted in ascending score order (higher scores overwrite lower), only where
    mask > 0.5 and only for scores > 0.
    """
    scores = np.asarray(scores)
    label = np.zeros(masks.shape[1:], np.int32)
    for q in np.argsort(scores):
        if scores[q] > 0:
            label[masks[q] > 0.5] = q + 1
    return label


def paint_stuff_then_things(
    masks: np.ndarray, scores: np.ndarray | Sequence[float], is_stuff: np.ndarray | Sequence[bool]
) -> np.ndarray:
    """Label map int32 [H, W] with every stuff query painted first and thing queries on top.

    Within each group queries are painted as in ``assign_label``; labels are q + 1 over the
    whole query list.
    """
    scores = np.asarray(scores, dtype=np.float64)
    stuff = np.asarray(is_stuff, bool)
    label = assign_label(masks, np.where(stuff, scores, 0.0))
    things = assign_label(masks, np.where(stuff, 0.0, scores))
    return np.where(things > 0, things, label).astype(np.int32)
