"""Semantic masks and instance masks, both ways: the editable ``Detections`` a run writes beside
its ``Segmentation``, and the semantic mask rebuilt from (edited) instances."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import fiftyone as fo
import numpy as np

#: How a class's pixels become Detections: one per connected region, or one per class.
INSTANCE_MODES = ("region", "class")
DEFAULT_INSTANCES = "region"


def instances_from_mask(
    mask: np.ndarray,
    mask_targets: Mapping[int, str],
    scores: Mapping[str, float] | None = None,
    instances: str = DEFAULT_INSTANCES,
) -> fo.Detections:
    """Detections covering every labelled pixel of a semantic ``mask`` exactly once.

    ``instances="region"`` gives one Detection per 8-connected region of a class (two dogs are
    two objects), ``"class"`` one per class. Each carries its class's mask value (``value``)
    and, when ``scores`` has the class, the run's score as ``confidence``.
    """
    from cliprnn.errors import ConfigError

    if instances not in INSTANCE_MODES:
        raise ConfigError(f"instances must be one of {list(INSTANCE_MODES)}, got {instances!r}")
    h, w = mask.shape[:2]
    if h < 2 or w < 2:  # FiftyOne's conversion squeezes a 1-pixel side away: pad, then rescale
        padded = np.zeros((max(h, 2), max(w, 2)), mask.dtype)
        padded[:h, :w] = mask
        dets = instances_from_mask(padded, mask_targets, scores, instances)
        sx, sy = padded.shape[1] / w, padded.shape[0] / h
        for det in dets.detections:
            x, y, bw, bh = det.bounding_box
            det.bounding_box = [x * sx, y * sy, bw * sx, bh * sy]
        return dets
    kind = "thing" if instances == "region" else "stuff"
    targets = {int(v): n for v, n in mask_targets.items() if int(v) != 0}
    dets = fo.Segmentation(mask=mask).to_detections(mask_targets=targets, mask_types=kind)
    by_name = {n: v for v, n in targets.items()}
    for det in dets.detections:
        det["value"] = int(by_name[det.label])
        if scores and det.label in scores:
            det.confidence = float(scores[det.label])
    return dets


def _columns(x: float, w: float, mw: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Image columns whose pixel centres fall inside [x, x + w), and the mask column each
    samples (the same rule serves rows)."""
    centres = (np.arange(width) + 0.5) / width
    inside = np.nonzero((centres >= x) & (centres < x + w))[0]
    src = np.floor((centres[inside] - x) / w * mw).astype(np.int64) if w > 0 else inside * 0
    return inside, np.clip(src, 0, mw - 1)


def instance_pixels(det: fo.Detection, hw: tuple[int, int]) -> np.ndarray:
    """The image pixels a Detection covers, as a boolean H×W array.

    The instance mask is sampled at image pixel centres, so a mask the App saved at another
    resolution, with a box off the pixel grid, covers exactly the pixels painted over and no
    fringe around them (``Detection.to_segmentation`` rounds the box and resizes instead).
    A detection without a mask covers its box.
    """
    h, w = hw
    out = np.zeros((h, w), dtype=bool)
    x, y, bw, bh = (float(v) for v in det.bounding_box)
    mask = det.get_mask() if det.has_mask else None
    mh, mw = mask.shape[:2] if mask is not None else (1, 1)
    cols, src_c = _columns(x, bw, mw, w)
    rows, src_r = _columns(y, bh, mh, h)
    if not len(cols) or not len(rows):
        return out
    if mask is None:
        out[np.ix_(rows, cols)] = True
    else:
        out[np.ix_(rows, cols)] = np.asarray(mask)[np.ix_(src_r, src_c)].astype(bool)
    return out


@dataclass
class Rendered:
    """A semantic mask rebuilt from instances, and which instance owns each pixel."""

    mask: np.ndarray
    owner: np.ndarray  # index into the detections list, -1 = background
    claims: list[np.ndarray]  # each detection's own pixels before overlaps were settled


def render_instances(
    detections: Sequence[fo.Detection],
    values: Mapping[str, int],
    hw: tuple[int, int],
    dtype: type,
    previous: np.ndarray | None = None,
) -> Rendered:
    """Paint ``detections`` into a semantic mask of size ``hw``.

    Where instances overlap, an edited one wins over an unedited one: an instance is edited
    when it claims pixels that ``previous`` (the semantic mask before the edits) does not give
    its class, or when it has no score (the user drew it). Among equals the higher score wins.
    """
    claims = [instance_pixels(d, hw) for d in detections]

    def rank(i: int) -> tuple[int, float]:
        det = detections[i]
        if det.confidence is None:
            return (2, 0.0)
        edited = previous is None or bool((claims[i] & (previous != values[det.label])).any())
        return (int(edited), float(det.confidence))

    owner = np.full(hw, -1, dtype=np.int64)
    for i in sorted(range(len(detections)), key=rank):
        owner[claims[i]] = i
    lut = np.array([values[d.label] for d in detections] + [0], dtype=np.int64)
    return Rendered(lut[owner].astype(dtype), owner, claims)


def settle_instances(
    detections: Sequence[fo.Detection], rendered: Rendered
) -> tuple[list[fo.Detection], int]:
    """The detections trimmed to the pixels they won, so the instance field and the semantic
    mask agree (and folding them back again changes nothing). An instance that lost every
    pixel is dropped. Returns the detections and how many were changed or dropped."""
    out: list[fo.Detection] = []
    changed = 0
    for i, det in enumerate(detections):
        won = rendered.owner == i
        if np.array_equal(won, rendered.claims[i]):
            out.append(det)
            continue
        changed += 1
        if not won.any():
            continue
        trimmed = fo.Detection.from_mask(won, label=det.label)
        det.bounding_box = trimmed.bounding_box
        det.mask = trimmed.mask
        det.mask_path = None
        out.append(det)
    return out, changed


def labels_of(detections: Iterable[fo.Detection]) -> list[str]:
    """The distinct class labels of ``detections``, first-seen order."""
    return list(dict.fromkeys(d.label for d in detections if isinstance(d.label, str)))
