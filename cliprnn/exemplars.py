"""Exemplar queries: a class given by a few example images instead of words.

An exemplar query's embedding, per CLIP model, is the normalised mean of its exemplars'
normalised image embeddings: the mean patch token (what the CAM head compares with texts) for the
proposal CLIP, the CLS token for the classifier CLIP. Image–image cosines live on another scale
than image–text ones, so each role maps an exemplar column's cosine c to ``a·c + b`` before the
logit scale (``CaRConfig.exemplar_cam_calibration`` / ``exemplar_classifier_calibration``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cliprnn.errors import ImageError, QueryError
from cliprnn.similarity import calibrated_logits as calibrated_logits  # its former home

if TYPE_CHECKING:
    import torch

    from cliprnn.clip_backend import ClipBackend
    from cliprnn.config import CaRConfig

#: The two embeddings an exemplar query has: for the CAM head and for the classifier.
KINDS = ("patch_mean", "cls")
#: CLIP's mean colour (uint8 RGB): fills pixels outside an exemplar's mask.
CLIP_MEAN_RGB = (122, 116, 104)


@dataclass(frozen=True, eq=False)
class Exemplars:
    """A query made of example images.

    ``images``: file paths, PIL images or uint8 RGB arrays. ``boxes`` (optional, one per image,
    None for the whole image): FiftyOne's relative ``[x, y, w, h]``. ``masks`` (optional, one per
    image or None): a boolean array covering the box (FiftyOne's ``Detection.mask``) or, without
    a box, the whole image; pixels outside it are filled with CLIP's mean colour.
    """

    name: str
    images: tuple[Any, ...]
    boxes: tuple[Sequence[float] | None, ...] | None = None
    masks: tuple[np.ndarray | None, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise QueryError(f"an exemplar query needs a non-empty name, got {self.name!r}")
        object.__setattr__(self, "name", self.name.strip())
        images = self.images
        if isinstance(images, (str, Path, np.ndarray)) or not hasattr(images, "__iter__"):
            images = (images,)
        object.__setattr__(self, "images", tuple(images))
        if not self.images:
            raise QueryError(f"exemplar query {self.name!r} has no images")
        for attr in ("boxes", "masks"):
            value = getattr(self, attr)
            if value is None:
                continue
            value = tuple(value)
            if len(value) != len(self.images):
                raise QueryError(
                    f"exemplar query {self.name!r}: {len(value)} {attr} for "
                    f"{len(self.images)} images"
                )
            object.__setattr__(self, attr, value)
        object.__setattr__(self, "_crops", None)
        object.__setattr__(self, "_loaded", None)
        object.__setattr__(self, "_key", None)

    def __repr__(self) -> str:
        return f"Exemplars({self.name!r}, {len(self.images)} images)"

    def describe(self, index: int) -> str:
        """How the error messages name exemplar ``index``."""
        image = self.images[index]
        where = str(image) if isinstance(image, (str, Path)) else type(image).__name__
        return f"exemplar {index} ({where}) of {self.name!r}"

    def crops(self) -> list[np.ndarray]:
        """The exemplars as uint8 RGB crops: each box's pixels, outside its mask CLIP's mean.

        Images are read once, then kept. Raises ImageError naming the exemplar for an
        unreadable image, QueryError for a box outside its image or an empty mask.
        """
        if self._crops is None:
            crops = []
            for image, region, (x0, y0, x1, y1) in self._regions():
                crop = image[y0:y1, x0:x1]
                inside = region[y0:y1, x0:x1]
                if not inside.all():
                    crop = np.where(inside[..., None], crop, np.uint8(CLIP_MEAN_RGB))
                crops.append(np.ascontiguousarray(crop, dtype=np.uint8))
            object.__setattr__(self, "_crops", crops)
        assert self._crops is not None
        return list(self._crops)

    def regions(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per exemplar: (its whole image uint8 RGB, bool mask of the exemplar in it)."""
        return [(image, region) for image, region, _ in self._regions()]

    def _regions(self) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]]:
        if self._loaded is None:
            object.__setattr__(self, "_loaded", [self._region(i) for i in range(len(self.images))])
        assert self._loaded is not None
        return self._loaded

    def _region(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
        from cliprnn.imageio import load_image, resize_masks_nearest

        try:
            image = load_image(self.images[index])
        except ImageError as exc:
            raise ImageError(f"{self.describe(index)}: {exc}") from exc
        height, width = image.shape[:2]
        box = self.boxes[index] if self.boxes is not None else None
        mask = self.masks[index] if self.masks is not None else None
        x0, y0, x1, y1 = (
            (0, 0, width, height)
            if box is None
            else pixel_box(box, (height, width), self.describe(index))
        )
        region = np.zeros((height, width), bool)
        if mask is None:
            region[y0:y1, x0:x1] = True
        else:
            mask = np.asarray(mask).astype(bool)
            if mask.ndim != 2:
                raise QueryError(f"{self.describe(index)}: a mask is 2-D, got {mask.shape}")
            if mask.shape != (y1 - y0, x1 - x0):
                mask = resize_masks_nearest(mask[None], (y1 - y0, x1 - x0))[0]
            if not mask.any():
                raise QueryError(f"{self.describe(index)}: its mask is empty")
            region[y0:y1, x0:x1] = mask
        return image, region, (x0, y0, x1, y1)

    def key(self) -> str:
        """A digest of the crops' pixels: equal for the same exemplars, whatever their source."""
        if self._key is None:
            h = hashlib.blake2b(digest_size=20)
            for crop in self.crops():
                h.update(f"{crop.shape}".encode())
                h.update(crop.tobytes())
            object.__setattr__(self, "_key", h.hexdigest())
        return self._key

    def to_spec(self) -> dict[str, Any]:
        """A JSON-able description (file paths only; QueryError for in-memory images)."""
        paths = []
        for i, image in enumerate(self.images):
            if not isinstance(image, (str, Path)):
                raise QueryError(
                    f"{self.describe(i)} is an in-memory image; a run that other processes "
                    "resume or share needs exemplars given as file paths"
                )
            paths.append(str(image))
        masks = None
        if self.masks is not None:
            masks = [None if m is None else np.asarray(m, bool).tolist() for m in self.masks]
        boxes = None if self.boxes is None else [None if b is None else list(b) for b in self.boxes]
        return {"name": self.name, "images": paths, "boxes": boxes, "masks": masks}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Exemplars:
        """The inverse of :meth:`to_spec`."""
        masks = spec.get("masks")
        if masks is not None:
            masks = [None if m is None else np.asarray(m, bool) for m in masks]
        return cls(spec["name"], tuple(spec["images"]), spec.get("boxes"), masks)


def pixel_box(box: Sequence[float], hw: tuple[int, int], what: str) -> tuple[int, int, int, int]:
    """A relative ``[x, y, w, h]`` box as pixel bounds (x0, y0, x1, y1) inside an image of ``hw``.

    Boxes reaching at most half a pixel past the border are clipped; anything further outside,
    or covering no whole pixel, raises QueryError naming ``what``.
    """
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise QueryError(f"{what}: a box is [x, y, w, h] in [0, 1], got {box!r}") from exc
    height, width = hw
    slack = 0.5 / min(height, width)
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        raise QueryError(f"{what}: box {list(box)} has no area")
    if x < -slack or y < -slack or x + w > 1 + slack or y + h > 1 + slack:
        raise QueryError(
            f"{what}: box {list(box)} reaches outside the image (relative [x, y, w, h] in [0, 1])"
        )
    x0, y0 = max(0, round(x * width)), max(0, round(y * height))
    x1, y1 = min(width, round((x + w) * width)), min(height, round((y + h) * height))
    if x1 <= x0 or y1 <= y0:
        raise QueryError(
            f"{what}: box {list(box)} covers no whole pixel of a {width}×{height} image"
        )
    return x0, y0, x1, y1


def split_queries(queries: Sequence[Any]) -> tuple[list[str], dict[str, Exemplars]]:
    """Names of every query in order (an exemplar query by its name) and the exemplar queries.

    Raises QueryError when an exemplar query's name is also a text query or another exemplar
    query's. Anything that is not a list of queries comes back as it is, for
    ``normalize_queries`` to refuse with its message.
    """
    if queries is None or isinstance(queries, str) or not hasattr(queries, "__iter__"):
        return queries, {}  # type: ignore[return-value]  # normalize_queries explains
    if isinstance(queries, Exemplars):
        queries = [queries]
    names: list[Any] = []
    exemplars: dict[str, Exemplars] = {}
    texts = {q.strip().casefold() for q in queries if isinstance(q, str)}
    for q in queries:
        if isinstance(q, Exemplars):
            key = q.name.casefold()
            if key in texts:
                raise QueryError(
                    f"exemplar query {q.name!r} has the name of a text query; rename one of them"
                )
            if any(key == other.casefold() for other in exemplars):
                raise QueryError(f"two exemplar queries are named {q.name!r}")
            exemplars[q.name] = q
            names.append(q.name)
        else:
            names.append(q)  # normalize_queries checks the text items
    return names, exemplars


def exemplar_embedding(
    backend: ClipBackend, exemplars: Exemplars, kind: str, config: CaRConfig | None = None
) -> torch.Tensor:
    """The query's embedding [d] for one CLIP (``kind`` "patch_mean" or "cls"), cached by content.

    "patch_mean" (the CAM head's side) embeds each crop, padded to a square with CLIP's mean
    colour. "cls" (the classifier's side) embeds each exemplar as the classifier sees a
    candidate: its image with ``config``'s visual prompts drawn around the exemplar's region
    (a whole-image exemplar as it is). Each image is embedded on its own, so the result never
    depends on the other exemplars' batch.
    """
    import torch

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    prompts: tuple[str, ...] = ()
    if kind == "cls" and config is not None:
        prompts = tuple(config.visual_prompts)
    key = (exemplars.key(), kind, prompts, config.classifier_crop if config else "")
    cache = backend.exemplar_cache
    if key not in cache:
        rows = []
        if kind == "cls":
            for image in _prompted(exemplars, config):
                pixels = backend.classifier_input([image], crop=key[3] or "center")
                rows.append(backend.image_embeddings(pixels, truncated=False)[0])
        else:
            for crop in exemplars.crops():
                pixels = backend.classifier_input([crop], crop="pad")
                rows.append(backend.patch_mean_embeddings(pixels)[0])
        mean = torch.stack(rows).float().mean(dim=0)
        cache[key] = (mean / mean.norm()).cpu()
    return cache[key]


def _prompted(exemplars: Exemplars, config: CaRConfig | None) -> list[np.ndarray]:
    """Each exemplar's image with the visual prompts around its region (clean mode)."""
    from cliprnn.visual_prompts import apply_visual_prompts

    out = []
    for image, region in exemplars.regions():
        if config is None or region.all():
            out.append(image)
        else:
            out.append(
                apply_visual_prompts(
                    image, region.astype(np.float32), config.visual_prompts,
                    config.mask_threshold, faithful=False,
                )
            )  # fmt: skip
    return out


def query_columns(
    count: int,
    exemplars: Mapping[int, torch.Tensor],
    embed_texts: Callable[[list[int]], torch.Tensor],
) -> torch.Tensor:
    """[count, d]: row j is ``exemplars[j]``, or, for the other rows, ``embed_texts(rows)``'s.

    Only the text rows are embedded, so an exemplar query's name never goes through a text pass.
    """
    import torch

    text_rows = [j for j in range(count) if j not in exemplars]
    texts = embed_texts(text_rows) if text_rows else None
    like = texts if texts is not None else next(iter(exemplars.values()))
    out = torch.empty(count, like.shape[-1], dtype=like.dtype, device=like.device)
    if texts is not None:
        out[text_rows] = texts
    for j, feature in exemplars.items():
        out[j] = feature.to(out.device, out.dtype)
    return out


def calibration_rows(
    names: Sequence[str], exemplars: Mapping[str, Exemplars], ab: Sequence[float]
) -> torch.Tensor | None:
    """[len(names), 2]: ``ab`` for exemplar queries, (1, 0) for text; None with no exemplar."""
    import torch

    if not any(n in exemplars for n in names):
        return None
    rows = [tuple(ab) if n in exemplars else (1.0, 0.0) for n in names]
    return torch.tensor(rows, dtype=torch.float32)
