"""Edit stored results: fold edited instance masks back into the semantic mask, and rename,
merge or delete classes of a segmentation field (masks and mask_targets together)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import fiftyone as fo
import numpy as np
from PIL import Image

from cliprnn.errors import ConfigError
from cliprnn.fiftyone import labels as L
from cliprnn.fiftyone.files import write_png_atomic
from cliprnn.fiftyone.queries import assign_values

BATCH_SIZE = 64


def _frame_size(sample: fo.Sample, seg: fo.Segmentation | None) -> tuple[int, int]:
    """(height, width) of the sample's mask: the stored mask's, else the image's."""
    if seg is not None and seg.mask is not None:
        return seg.mask.shape[:2]
    if seg is not None and seg.mask_path:
        with Image.open(seg.mask_path) as im:
            return im.height, im.width
    if sample.metadata is None or not sample.metadata.width:
        sample.compute_metadata()
    return sample.metadata.height, sample.metadata.width


def _draw_order(det: fo.Detection) -> float:
    # Lower scores first so higher ones win overlaps; a detection the user drew (no score) last.
    return float("inf") if det.confidence is None else float(det.confidence)


def render_detections(
    detections: Iterable[fo.Detection], values: Mapping[str, int], hw: tuple[int, int], dtype: type
) -> np.ndarray:
    """A semantic mask from instance masks (box-only detections fill their box)."""
    h, w = hw
    full = np.zeros((h, w), dtype=dtype)
    for det in sorted(detections, key=_draw_order):
        value = values[det.label]
        if det.has_mask:
            full = det.to_segmentation(mask=full, target=value).mask
        else:
            x, y, bw, bh = det.bounding_box
            x0, y0 = round(x * w), round(y * h)
            full[y0 : round((y + bh) * h), x0 : round((x + bw) * w)] = value
    return full


def apply_mask_edits(
    sample_collection: fo.core.collections.SampleCollection,
    label_field: str = "car",
    detections_field: str | None = None,
    progress: bool | None = None,
) -> int:
    """Rebuild the ``Segmentation`` in ``label_field`` from the (edited) ``Detections`` in
    ``detections_field`` (default ``<label_field>_det``) for every sample that has them.

    New labels get new mask values in ``mask_targets``. Returns the number of samples updated.
    """
    ds = sample_collection._root_dataset
    det_field = detections_field or f"{label_field}_det"
    L.check_field_name(label_field)
    if not ds.has_field(det_field):
        raise ConfigError(f"dataset '{ds.name}' has no field '{det_field}' to take edits from")
    if ds.has_field(label_field) and not ds._is_label_field(label_field, fo.Segmentation):
        raise ConfigError(f"field '{label_field}' is not a Segmentation field")
    existing = {int(k): v for k, v in ds.mask_targets.get(label_field, {}).items()}
    view = sample_collection.exists(det_field).select_fields([det_field, label_field, "metadata"])
    names = [n for n in view.distinct(f"{det_field}.detections.label") if isinstance(n, str)]
    values = assign_values(list(existing.values()) + names, None, existing)
    targets = {v: n for n, v in values.items()}
    dtype = L.mask_dtype(max(targets, default=1))
    ds.mask_targets = {**ds.mask_targets, label_field: dict(sorted(targets.items()))}
    ds.save()
    count = 0
    for sample in view.iter_samples(autosave=True, batch_size=BATCH_SIZE, progress=progress):
        old = sample[label_field] if ds.has_field(label_field) else None
        dets = sample[det_field].detections
        mask = render_detections(dets, values, _frame_size(sample, old), dtype)
        attrs: dict[str, Any] = {}
        if old is not None:
            attrs = {k: old[k] for k in ("queries", "scores", "dropped", "steps") if k in old}
        present = {d.label for d in dets}
        attrs["kept"] = [n for n in values if n in present]
        attrs["edited"] = True
        if old is not None and old.mask_path:
            seg = fo.Segmentation(mask_path=write_png_atomic(mask, old.mask_path), **attrs)
        else:
            seg = fo.Segmentation(mask=mask, **attrs)
        sample[label_field] = seg
        count += 1
    return count


def class_mapping(
    classes: Iterable[str],
    rename: Mapping[str, str] | None = None,
    merge: Mapping[str, Iterable[str]] | None = None,
    delete: Iterable[str] = (),
) -> dict[str, str | None]:
    """Old class name -> new name (None = delete) from rename/merge/delete requests.

    ``merge={"animal": ["cat", "dog"]}`` folds cat and dog into animal. Unknown names raise.
    """
    classes = list(classes)
    out: dict[str, str | None] = {c: c for c in classes}

    def known(name: str) -> str:
        if name not in out:
            raise ConfigError(f"unknown class {name!r}; the field's classes are {classes}")
        return name

    for old, new in (rename or {}).items():
        if not isinstance(new, str) or not new.strip():
            raise ConfigError(f"rename target of {old!r} must be a non-empty name, got {new!r}")
        out[known(old)] = new.strip()
    for new, olds in (merge or {}).items():
        if not isinstance(new, str) or not new.strip():
            raise ConfigError(f"merge target must be a non-empty name, got {new!r}")
        for old in [olds] if isinstance(olds, str) else olds:
            out[known(old)] = new.strip()
    for old in [delete] if isinstance(delete, str) else delete:
        out[known(old)] = None
    return out


def remap_targets(
    targets: Mapping[int, str], mapping: Mapping[str, str | None]
) -> tuple[dict[int, str], dict[int, int]]:
    """New mask targets, and old value -> new value (0 for deleted classes). A class keeps its
    value when its name survives; a merged class takes the smallest value of its members."""
    new_targets: dict[int, str] = {}
    by_name: dict[str, int] = {}
    lut: dict[int, int] = {}
    for value in sorted(int(v) for v in targets):
        new = mapping.get(targets[value], targets[value])
        if new is None:
            lut[value] = 0
            continue
        keep = by_name.setdefault(new, value)
        new_targets[keep] = new
        lut[value] = keep
    return new_targets, lut


def edit_mask_classes(
    sample_collection: fo.core.collections.SampleCollection,
    label_field: str,
    rename: Mapping[str, str] | None = None,
    merge: Mapping[str, Iterable[str]] | None = None,
    delete: Iterable[str] = (),
    progress: bool | None = None,
) -> dict[int, str]:
    """Rename, merge or delete classes of the segmentation ``label_field`` across the whole
    dataset (mask targets are dataset-wide), updating masks, ``mask_targets`` and the
    ``<label_field>_det`` instances together. Returns the new mask targets."""
    ds = sample_collection._root_dataset
    if not ds._is_label_field(label_field, fo.Segmentation):
        raise ConfigError(f"'{label_field}' is not a Segmentation field of dataset '{ds.name}'")
    targets = {int(k): v for k, v in ds.mask_targets.get(label_field, {}).items()}
    if not targets:
        raise ConfigError(f"field '{label_field}' has no mask_targets to edit")
    mapping = class_mapping(targets.values(), rename, merge, delete)
    new_targets, lut = remap_targets(targets, mapping)
    dtype = L.mask_dtype(max(max(targets), 1))
    table = np.arange(65536, dtype=np.int64)
    for old, new in lut.items():
        table[old] = new
    det_field = f"{label_field}_det"
    has_det = ds._is_label_field(det_field, fo.Detections) if ds.has_field(det_field) else False
    fields = [label_field] + ([det_field] if has_det else [])
    view = ds.exists(label_field).select_fields(fields)
    for sample in view.iter_samples(autosave=True, batch_size=BATCH_SIZE, progress=progress):
        seg = sample[label_field]
        mask = table[seg.get_mask()].astype(dtype)
        if seg.mask_path:
            write_png_atomic(mask, seg.mask_path)
        else:
            seg.mask = mask
        for key in ("kept", "dropped"):  # "queries"/"scores" stay as the run recorded them
            if seg.has_field(key) and isinstance(seg[key], list):
                seg[key] = _rename_list(seg[key], mapping)
        if has_det and sample[det_field] is not None:
            dets = []
            for det in sample[det_field].detections:
                new = mapping.get(det.label, det.label)
                if new is not None:
                    det.label = new
                    dets.append(det)
            sample[det_field].detections = dets
    ds.mask_targets = {**ds.mask_targets, label_field: dict(sorted(new_targets.items()))}
    if has_det and det_field in ds.classes:
        ds.classes = {**ds.classes, det_field: list(dict.fromkeys(new_targets.values()))}
    ds.save()
    return new_targets


def _rename_list(names: list[str], mapping: Mapping[str, str | None]) -> list[str]:
    out = [mapping.get(n, n) for n in names]
    return list(dict.fromkeys(n for n in out if n is not None))
