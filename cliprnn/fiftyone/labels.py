"""Turn one CaRResult into FiftyOne labels: a semantic mask, instance masks, confidence maps."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import fiftyone as fo
import numpy as np

from cliprnn.fiftyone.instances import DEFAULT_INSTANCES, instances_from_mask
from cliprnn.regions import merge_small_regions
from cliprnn.result import CaRResult

OUTPUT_TYPES = ("segmentation", "detections", "heatmaps")
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Longest label field name: room for the derived names (``<name>_heat_<query>``...).
MAX_FIELD_NAME = 64
_RESERVED = {"id", "filepath", "tags", "metadata", "media_type", "created_at", "last_modified_at"}


def mask_dtype(max_value: int) -> type[np.unsignedinteger]:
    """uint8 while every value fits (the App renders it); uint16 above 255 classes."""
    if max_value <= 255:
        return np.uint8
    if max_value <= 65535:
        return np.uint16
    raise ValueError(f"at most 65535 classes fit a mask, got a value of {max_value}")


def check_field_name(name: str, what: str = "label_field") -> str:
    """Return ``name`` if it can be a new top-level field; raise ConfigError naming it if not."""
    from cliprnn.errors import ConfigError

    ok = isinstance(name, str) and _FIELD_NAME.fullmatch(name) and len(name) <= MAX_FIELD_NAME
    if not ok or name in _RESERVED:
        raise ConfigError(
            f"{what} must start with a letter, hold only letters, digits and '_', be at most "
            f"{MAX_FIELD_NAME} characters long (and not be one of {sorted(_RESERVED)}), "
            f"got {name!r}"
        )
    return name


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


@dataclass(frozen=True)
class OutputFields:
    """Names of every field a run writes, derived from ``label_field``."""

    label_field: str
    segmentation: str | None
    detections: str | None
    heatmaps: dict[str, str]  # query -> field
    error: str
    scores: str  # every query's score on each sample (Classifications)

    @property
    def primary(self) -> str:
        """The field whose presence marks a sample as done (for skip_existing)."""
        return self.segmentation or self.detections or next(iter(self.heatmaps.values()))

    def all(self) -> list[str]:
        """Every label field (not the error field)."""
        return [*self.shown(), self.scores]

    def shown(self) -> list[str]:
        """The fields the App shows when a run ends (the masks, not the score lists)."""
        names = [self.segmentation, self.detections, *self.heatmaps.values()]
        return [n for n in names if n]


def scores_field(label_field: str) -> str:
    """The field holding every query's score for the run that writes ``label_field``."""
    return f"{label_field}_scores"


def output_fields(
    label_field: str, outputs: Sequence[str], values: Mapping[str, int]
) -> OutputFields:
    """Field names: ``label_field`` for the semantic mask (or the first output asked for),
    ``<label_field>_det`` for instance masks, ``<label_field>_heat_<query>`` per heatmap,
    ``<label_field>_scores`` for the queries' scores."""
    from cliprnn.errors import ConfigError

    check_field_name(label_field)
    unknown = [o for o in outputs if o not in OUTPUT_TYPES]
    if unknown or not outputs:
        raise ConfigError(f"outputs must be a non-empty subset of {list(OUTPUT_TYPES)}: {outputs}")
    seg = label_field if "segmentation" in outputs else None
    det = None
    if "detections" in outputs:
        det = f"{label_field}_det" if seg else label_field
    heat: dict[str, str] = {}
    if "heatmaps" in outputs:
        used: set[str] = set()
        for query, value in values.items():
            name = f"{label_field}_heat_{_slug(query) or value}"
            if name in used:
                name = f"{name}_{value}"
            used.add(name)
            heat[query] = name
    return OutputFields(
        label_field, seg, det, heat, f"{label_field}_error", scores_field(label_field)
    )


def without_specks(result: CaRResult, min_pixels: int) -> CaRResult:
    """``result`` with regions under ``min_pixels`` merged into their surroundings (the labels
    FiftyOne stores; see ``CaRConfig.min_region_pixels``)."""
    if min_pixels <= 1:
        return result
    return dataclasses.replace(result, label_map=merge_small_regions(result.label_map, min_pixels))


def value_lut(result: CaRResult, values: Mapping[str, int]) -> np.ndarray:
    """Lookup table from the engine's label values (i + 1 = queries[i]) to stored values."""
    lut = np.zeros(len(result.queries) + 1, dtype=np.int64)
    for i, q in enumerate(result.queries):
        lut[i + 1] = values[q]
    return lut


def semantic_mask(result: CaRResult, values: Mapping[str, int], dtype: type) -> np.ndarray:
    """The label map with each query's stored value, in ``dtype``."""
    return value_lut(result, values)[result.label_map].astype(dtype)


def run_attributes(result: CaRResult) -> dict:
    """What a mask label records about the recurrence: the kept queries and the step count
    (short, as the App's tooltip lists every attribute; the scores go to :func:`scores_label`)."""
    return dict(kept=list(result.kept), steps=int(result.steps))


def scores_label(result: CaRResult) -> fo.Classifications:
    """Every query's final score on one sample, one ``Classification`` each (``confidence`` =
    the score, ``kept`` = whether the recurrence kept it), in query order."""
    kept = set(result.kept)
    return fo.Classifications(
        classifications=[
            fo.Classification(label=q, confidence=round(float(s), 6), kept=q in kept)
            for q, s in zip(result.queries, result.scores, strict=True)
        ]
    )


def segmentation_label(
    result: CaRResult, values: Mapping[str, int], dtype: type, mask_path: str | None = None
) -> fo.Segmentation:
    """A ``Segmentation`` (mask in the database, or ``mask_path`` when written to disk)."""
    attrs = run_attributes(result)
    if mask_path is not None:
        return fo.Segmentation(mask_path=mask_path, **attrs)
    return fo.Segmentation(mask=semantic_mask(result, values, dtype), **attrs)


def detections_label(
    result: CaRResult, values: Mapping[str, int], instances: str = DEFAULT_INSTANCES
) -> fo.Detections:
    """Instance masks of the label map (one ``Detection`` per region of a kept query, or per
    query with ``instances="class"``), confidence = the query's score."""
    targets = {int(values[q]): q for q in result.queries}
    scores = {q: float(s) for q, s in zip(result.queries, result.scores, strict=True)}
    mask = semantic_mask(result, values, mask_dtype(max(targets, default=1)))
    return instances_from_mask(mask, targets, scores, instances)


def heatmap_arrays(result: CaRResult) -> dict[str, np.ndarray]:
    """uint8 confidence map (0..255) per kept query, from the final soft masks."""
    if result.soft_masks is None:
        return {}
    out = {}
    for i, q in enumerate(result.queries):
        if q in result.kept:
            soft = np.clip(np.nan_to_num(result.soft_masks[i]), 0.0, 1.0)
            out[q] = np.round(soft * 255.0).astype(np.uint8)
    return out


def check_detections_field(ds: fo.Dataset, det_field: str) -> None:
    """ConfigError unless ``det_field`` is a Detections field of ``ds`` (edits are taken from
    its instance masks)."""
    from cliprnn.errors import ConfigError

    if not ds.has_field(det_field):
        raise ConfigError(f"dataset '{ds.name}' has no field '{det_field}' to take edits from")
    if not ds._is_label_field(det_field, fo.Detections):
        kind = type(ds.get_field(det_field)).__name__
        raise ConfigError(
            f"field '{det_field}' is not a Detections field ({kind}); edits are taken from the "
            "instance masks of a Detections field"
        )
