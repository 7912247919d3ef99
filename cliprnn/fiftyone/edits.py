"""Edit stored results: fold edited instance masks back into the semantic mask, and rename,
merge or delete classes of a segmentation field (masks and mask_targets together)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from cliprnn.errors import ConfigError
from cliprnn.fiftyone import labels as L
from cliprnn.fiftyone.files import write_png_atomic
from cliprnn.fiftyone.instances import (
    DEFAULT_INSTANCES,
    instances_from_mask,
    labels_of,
    render_instances,
    settle_instances,
)
from cliprnn.fiftyone.queries import assign_values

BATCH_SIZE = 64


def _frame_size(sample: fo.Sample, seg: fo.Segmentation | None) -> tuple[int, int]:
    """(height, width) of the sample's mask: the stored mask's, else the image's."""
    if seg is not None and (seg.mask is not None or seg.mask_path):
        return seg.get_mask().shape[:2]
    if sample.metadata is None or not sample.metadata.width:
        sample.compute_metadata()
    return sample.metadata.height, sample.metadata.width


@dataclass
class FoldBack:
    """What ``apply_mask_edits`` did."""

    updated: int = 0  # samples whose semantic mask (or instances) changed
    unchanged: int = 0  # samples already in agreement
    skipped: list[str] = field(default_factory=list)  # ids without a Detections label
    trimmed: int = 0  # instances cut back to the pixels they won (or dropped)
    new_classes: list[str] = field(default_factory=list)

    def message(self, label_field: str) -> str:
        """One line for the App's notification."""
        parts = [f"Folded edits into '{label_field}': {self.updated} sample(s) updated"]
        if self.unchanged:
            parts.append(f"{self.unchanged} unchanged")
        if self.skipped:
            parts.append(f"{len(self.skipped)} without instances skipped")
        if self.new_classes:
            parts.append(f"new classes {self.new_classes}")
        return ", ".join(parts)


def _check_detections_field(ds: fo.Dataset, det_field: str) -> None:
    if not ds.has_field(det_field):
        raise ConfigError(f"dataset '{ds.name}' has no field '{det_field}' to take edits from")
    if not ds._is_label_field(det_field, fo.Detections):
        kind = type(ds.get_field(det_field)).__name__
        raise ConfigError(
            f"field '{det_field}' is not a Detections field ({kind}); edits are taken from the "
            "instance masks of a Detections field"
        )


def _unknown_classes(
    view: fo.core.collections.SampleCollection, det_field: str, names: list[str], known: set[str]
) -> None:
    unknown = [n for n in names if n not in known]
    if not unknown:
        return
    ids = view.filter_labels(det_field, F("label").is_in(unknown)).values("id")[:5]
    raise ConfigError(
        f"'{det_field}' has classes the segmentation field does not know: {unknown} (e.g. on "
        f"samples {ids}). They are neither mask targets nor label-schema classes; pass "
        "allow_new_classes=True to add them as new classes, or relabel them. Nothing was written"
    )


def apply_mask_edits(
    sample_collection: fo.core.collections.SampleCollection,
    label_field: str = "car",
    detections_field: str | None = None,
    allow_new_classes: bool = False,
    progress: bool | None = None,
) -> FoldBack:
    """Rebuild the ``Segmentation`` in ``label_field`` from the (edited) ``Detections`` in
    ``detections_field`` (default ``<label_field>_det``) for the samples of the collection.

    Instance masks are read at image pixel centres, edited inline or still in files. Where
    instances overlap, the edited one (or one the user drew, without a score) wins, and the
    losing instances are trimmed so both fields agree; a deleted instance's pixels become
    background unless another covers them. A relabelled or added instance of a class the
    field lacks gets a new mask value, if that class is in the instance field's label schema
    (or ``allow_new_classes``); any other unknown class is refused before anything is written.
    Samples whose masks already agree are not rewritten, so a second call changes nothing.
    """
    from cliprnn.fiftyone.annotation import match_colors, schema_classes, set_schema_classes
    from cliprnn.fiftyone.runs import note_mask_edits

    ds = sample_collection._root_dataset
    det_field = detections_field or f"{label_field}_det"
    L.check_field_name(label_field)
    _check_detections_field(ds, det_field)
    has_seg = ds.has_field(label_field)
    if has_seg and not ds._is_label_field(label_field, fo.Segmentation):
        raise ConfigError(f"field '{label_field}' is not a Segmentation field")
    if not sample_collection.count():
        raise ConfigError("the collection has no samples to apply edits to")
    existing = {int(k): v for k, v in ds.mask_targets.get(label_field, {}).items()}
    fields = [det_field, "metadata"] + ([label_field] if has_seg else [])
    present = F(det_field) != None  # noqa: E711 (a query expression)
    if has_seg:
        present = present | (F(label_field) != None)  # noqa: E711
    view = sample_collection.match(present).select_fields(fields)
    names = [n for n in view.distinct(f"{det_field}.detections.label") if isinstance(n, str)]
    allowed = set(existing.values()) | set(schema_classes(ds, det_field))
    if not allow_new_classes:
        _unknown_classes(view, det_field, names, allowed)
    values = assign_values(list(existing.values()) + names, None, existing)
    targets = {v: n for n, v in values.items()}
    dtype = L.mask_dtype(max(targets, default=1))
    out = FoldBack(new_classes=[n for n in names if n not in existing.values()])
    if out.new_classes:
        ds.mask_targets = {**ds.mask_targets, label_field: dict(sorted(targets.items()))}
        ds.save()
    for sample in view.iter_samples(autosave=True, batch_size=BATCH_SIZE, progress=progress):
        labels = sample[det_field]
        if labels is None:
            out.skipped.append(sample.id)
            continue
        old = sample[label_field] if has_seg else None
        previous = old.get_mask() if old is not None else None
        dets = list(labels.detections)
        rendered = render_instances(dets, values, _frame_size(sample, old), dtype, previous)
        settled, trimmed = settle_instances(dets, rendered)
        if previous is not None and not trimmed and np.array_equal(rendered.mask, previous):
            out.unchanged += 1
            continue
        out.trimmed += trimmed
        if trimmed:
            labels.detections = settled
        sample[label_field] = _edited_segmentation(old, rendered.mask, labels_of(settled), values)
        out.updated += 1
    if out.new_classes:
        set_schema_classes(ds, det_field, [*schema_classes(ds, det_field), *out.new_classes])
    match_colors(ds, targets, label_field, det_field)
    note_mask_edits(ds, label_field, det_field, out.updated, out.new_classes)
    return out


def _edited_segmentation(
    old: fo.Segmentation | None, mask: np.ndarray, present: list[str], values: Mapping[str, int]
) -> fo.Segmentation:
    attrs: dict[str, Any] = {}
    if old is not None:
        attrs = {k: old[k] for k in ("steps",) if old.has_field(k)}
    attrs["kept"] = [n for n in values if n in present]
    attrs["edited"] = True
    if old is not None and old.mask_path:
        return fo.Segmentation(mask_path=write_png_atomic(mask, old.mask_path), **attrs)
    return fo.Segmentation(mask=mask, **attrs)


def rebuild_instances(
    sample_collection: fo.core.collections.SampleCollection,
    label_field: str = "car",
    detections_field: str | None = None,
    instances: str = DEFAULT_INSTANCES,
    progress: bool | None = None,
) -> int:
    """The reverse direction: rewrite ``detections_field`` (default ``<label_field>_det``)
    from the semantic masks of ``label_field``, one instance per region (or per class), with
    the run's scores. Returns the number of samples written."""
    from cliprnn.fiftyone.annotation import make_editable, match_colors

    ds = sample_collection._root_dataset
    det_field = detections_field or f"{label_field}_det"
    L.check_field_name(det_field, "detections_field")
    if not ds._is_label_field(label_field, fo.Segmentation):
        raise ConfigError(f"'{label_field}' is not a Segmentation field of dataset '{ds.name}'")
    if ds.has_field(det_field):
        _check_detections_field(ds, det_field)
    else:
        ds.add_sample_field(det_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    targets = {int(k): v for k, v in ds.mask_targets.get(label_field, {}).items()}
    scores_field = L.scores_field(label_field)
    has_scores = ds.has_field(scores_field)
    fields = [label_field, det_field] + ([scores_field] if has_scores else [])
    view = sample_collection.exists(label_field).select_fields(fields)
    count = 0
    for sample in view.iter_samples(autosave=True, batch_size=BATCH_SIZE, progress=progress):
        seg = sample[label_field]
        listed = sample[scores_field] if has_scores else None
        scores = {c.label: c.confidence for c in (listed.classifications if listed else [])}
        sample[det_field] = instances_from_mask(seg.get_mask(), targets, scores, instances)
        count += 1
    make_editable(ds, det_field, list(targets.values()))
    match_colors(ds, targets, label_field, det_field)
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
    from cliprnn.fiftyone.annotation import match_colors, schema_classes, set_schema_classes

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
    scores_field = L.scores_field(label_field)
    has_scores = ds.has_field(scores_field)
    fields = [label_field] + [
        f for f, has in ((det_field, has_det), (scores_field, has_scores)) if has
    ]
    view = ds.exists(label_field).select_fields(fields)
    for sample in view.iter_samples(autosave=True, batch_size=BATCH_SIZE, progress=progress):
        seg = sample[label_field]
        mask = table[seg.get_mask()].astype(dtype)
        if seg.mask_path:
            write_png_atomic(mask, seg.mask_path)
        else:
            seg.mask = mask
        if seg.has_field("kept") and isinstance(seg["kept"], list):
            seg["kept"] = _rename_list(seg["kept"], mapping)
        if has_det and sample[det_field] is not None:
            sample[det_field].detections = _relabel(sample[det_field].detections, mapping)
        if has_scores and sample[scores_field] is not None:  # what was queried: deleted stay
            listed = sample[scores_field]
            listed.classifications = _relabel(listed.classifications, mapping, keep_deleted=True)
    ds.mask_targets = {**ds.mask_targets, label_field: dict(sorted(new_targets.items()))}
    if has_det and det_field in ds.classes:
        ds.classes = {**ds.classes, det_field: list(dict.fromkeys(new_targets.values()))}
    ds.save()
    if has_det:
        old_choices = _rename_list(schema_classes(ds, det_field), mapping)
        set_schema_classes(ds, det_field, [*new_targets.values(), *old_choices])
    match_colors(ds, new_targets, label_field, det_field if has_det else None)
    return new_targets


def _relabel(labels: list, mapping: Mapping[str, str | None], keep_deleted: bool = False) -> list:
    """``labels`` with their ``label`` renamed by ``mapping``; deleted ones dropped unless
    ``keep_deleted``."""
    out = []
    for label in labels:
        new = mapping.get(label.label, label.label)
        if new is not None:
            label.label = new
        if new is not None or keep_deleted:
            out.append(label)
    return out


def _rename_list(names: list[str], mapping: Mapping[str, str | None]) -> list[str]:
    out = [mapping.get(n, n) for n in names]
    return list(dict.fromkeys(n for n in out if n is not None))
