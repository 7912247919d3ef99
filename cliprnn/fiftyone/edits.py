"""Edit stored results: fold edited instance masks back into the semantic mask (here),
rebuild the instances from it (:mod:`~cliprnn.fiftyone.rebuild`), and rename, merge or delete
classes of a segmentation field (:mod:`~cliprnn.fiftyone.class_edits`).

Each operation records fingerprints of the instance labels it replaced, per sample
(:mod:`~cliprnn.fiftyone.superseded`); a later fold-back refuses a sample whose instances hold
one of them again, as happens when an App page that still showed the old labels saves them
back. The names of all four modules stay importable from here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from cliprnn.errors import ConfigError
from cliprnn.fiftyone import labels as L
from cliprnn.fiftyone.annotation import match_colors, schema_classes, set_schema_classes
from cliprnn.fiftyone.class_edits import (
    CLASS_EDIT,
    PENDING,
    class_mapping,
    edit_mask_classes,
    finish_class_edit,
    remap_targets,
)
from cliprnn.fiftyone.defaults import DEFAULT_LABEL_FIELD
from cliprnn.fiftyone.defaults import EDIT_BATCH_SIZE as BATCH_SIZE
from cliprnn.fiftyone.files import write_png_atomic
from cliprnn.fiftyone.instances import (
    instance_pixels,
    labels_of,
    render_instances,
    settle_instances,
)
from cliprnn.fiftyone.queries import assign_values
from cliprnn.fiftyone.rebuild import Rebuild, rebuild_instances, unapplied_edits
from cliprnn.fiftyone.runs import note_mask_edits
from cliprnn.fiftyone.superseded import (
    MAX_SUPERSEDED,
    SUPERSEDED_COLLECTION,
    Superseded,
    label_fingerprint,
    name_ids,
    relabel_fingerprint,
)

__all__ = [
    "CLASS_EDIT",
    "MAX_SUPERSEDED",
    "PENDING",
    "SUPERSEDED_COLLECTION",
    "FoldBack",
    "Rebuild",
    "Superseded",
    "apply_mask_edits",
    "class_mapping",
    "edit_mask_classes",
    "finish_class_edit",
    "label_fingerprint",
    "rebuild_instances",
    "relabel_fingerprint",
    "remap_targets",
    "unapplied_edits",
]


def _frame_size(sample: fo.Sample, seg: fo.Segmentation | None) -> tuple[int, int]:
    """(height, width) of the sample's mask: the stored mask's, else the image's."""
    if seg is not None and (seg.mask is not None or seg.mask_path):
        return seg.get_mask().shape[:2]
    if sample.metadata is None or not sample.metadata.width:
        sample.compute_metadata()
    return sample.metadata.height, sample.metadata.width


def stale_labels(dets: list[fo.Detection], claims: list[np.ndarray], seen: set[str]) -> list:
    """The detections that are copies of labels an operation replaced (``seen``)."""
    return [
        d
        for d, px in zip(dets, claims, strict=True)
        if relabel_fingerprint(d) in seen or label_fingerprint(d, px) in seen
    ]


@dataclass
class FoldBack:
    """What ``apply_mask_edits`` did."""

    updated: int = 0  # samples whose semantic mask (or instances) changed
    unchanged: int = 0  # samples already in agreement
    skipped: list[str] = field(default_factory=list)  # ids without a Detections label
    trimmed: int = 0  # instances cut back to the pixels they won (or dropped)
    new_classes: list[str] = field(default_factory=list)
    updated_ids: list[str] = field(default_factory=list)
    #: sample id -> why it was not folded (an old copy of replaced labels came back)
    refused: dict[str, str] = field(default_factory=dict)
    values_fixed: int = 0  # instances whose ``value`` was set to their class's mask value

    @property
    def folded(self) -> bool:
        """Whether anything was written."""
        return bool(self.updated)

    def message(self, label_field: str) -> str:
        """One line for the App's notification."""
        parts = [f"Folded edits into '{label_field}': {self.updated} sample(s) updated"]
        if self.unchanged:
            parts.append(f"{self.unchanged} unchanged")
        if self.skipped:
            parts.append(f"{len(self.skipped)} without instances skipped")
        if self.trimmed:
            parts.append(f"{self.trimmed} overlapped instance(s) trimmed")
        if self.new_classes:
            parts.append(f"new classes {self.new_classes}")
        text = ", ".join(parts)
        if self.refused:
            text += (
                f". REFUSED {len(self.refused)} sample(s) whose instances hold labels an "
                "earlier fold-back, rebuild or class edit had replaced (an App page that had not "
                "refreshed saved its old copy): "
                f"{name_ids(list(self.refused))}. Nothing of them was folded; rebuild their "
                "instances from the semantic mask (Semantic mask → instances) and redo the edit"
            )
        elif not self.updated:
            text += ". Nothing was folded: no instance differs from the semantic mask"
        return text


def _unknown_classes(
    view: fo.core.collections.SampleCollection,
    det_field: str,
    label_field: str,
    names: list[str],
    known: set[str],
    replaced: Superseded,
) -> None:
    unknown = [n for n in names if n not in known]
    if not unknown:
        return
    odd = view.filter_labels(det_field, F("label").is_in(unknown))
    ids = []
    for sample in odd.select_fields(det_field).iter_samples():
        seen = replaced.of(sample.id)
        dets = [d for d in sample[det_field].detections if d.label in unknown]
        if any(relabel_fingerprint(d) not in seen for d in dets):
            ids.append(sample.id)  # not an old copy of a relabelled instance: a real unknown
            if len(ids) == 5:
                break
    if not ids:
        return  # only old copies of renamed or deleted instances: refused sample by sample
    raise ConfigError(
        f"'{det_field}' has classes the segmentation field does not know: {unknown} (e.g. on "
        f"samples {ids}). They are neither mask targets nor label-schema classes; pass "
        "allow_new_classes=True to add them as new classes, or relabel them. Nothing was written"
    )


def apply_mask_edits(
    sample_collection: fo.core.collections.SampleCollection,
    label_field: str = DEFAULT_LABEL_FIELD,
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
    Every instance of a written sample gets its class's mask value as ``value``. Samples whose
    masks already agree are not rewritten, so a second call changes nothing.

    A sample whose instances hold an old copy of a label that an earlier fold-back trimmed, a
    rebuild replaced or a class edit renamed (a stale App page saved it back) is refused: it
    is listed in ``refused`` and left as it is.
    """
    ds = sample_collection._root_dataset
    det_field = detections_field or f"{label_field}_det"
    L.check_field_name(label_field)
    L.check_detections_field(ds, det_field)
    has_seg = ds.has_field(label_field)
    if has_seg and not ds._is_label_field(label_field, fo.Segmentation):
        raise ConfigError(f"field '{label_field}' is not a Segmentation field")
    if has_seg:
        finish_class_edit(ds, label_field)
    if not sample_collection.count():
        raise ConfigError("the collection has no samples to apply edits to")
    existing = {int(k): v for k, v in ds.mask_targets.get(label_field, {}).items()}
    fields = [det_field, "metadata"] + ([label_field] if has_seg else [])
    present = F(det_field) != None  # noqa: E711 (a query expression)
    if has_seg:
        present = present | (F(label_field) != None)  # noqa: E711
    view = sample_collection.match(present).select_fields(fields)
    replaced = Superseded(ds, label_field)
    names = [n for n in view.distinct(f"{det_field}.detections.label") if isinstance(n, str)]
    allowed = set(existing.values()) | set(schema_classes(ds, det_field))
    if not allow_new_classes:
        _unknown_classes(view, det_field, label_field, names, allowed, replaced)
        names = [n for n in names if n in allowed]
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
        hw = _frame_size(sample, old)
        seen = replaced.of(sample.id)
        if seen:
            claims = [instance_pixels(d, hw) for d in dets]
            stale = stale_labels(dets, claims, seen)
            if stale:
                out.refused[sample.id] = (
                    f"instances {[f'{d.label} ({d.id})' for d in stale]} are old copies of "
                    "labels replaced by an earlier operation"
                )
                continue
        rendered = render_instances(dets, values, hw, dtype, previous)
        won = [rendered.owner == i for i in range(len(dets))]
        changed = [i for i, w in enumerate(won) if not np.array_equal(w, rendered.claims[i])]
        wrong_value = [d for d in dets if _value_of(d) != values[d.label]]
        for det in wrong_value:
            det["value"] = int(values[det.label])
        out.values_fixed += len(wrong_value)
        mask_same = previous is not None and np.array_equal(rendered.mask, previous)
        if mask_same and not changed:
            if wrong_value:
                out.updated += 1
                out.updated_ids.append(sample.id)
            else:
                out.unchanged += 1
            continue
        superseded = [label_fingerprint(dets[i], rendered.claims[i]) for i in changed]
        settled, trimmed = settle_instances(dets, rendered)
        out.trimmed += trimmed
        if trimmed:
            labels.detections = settled
        replaced.add(sample.id, superseded)
        sample[label_field] = _edited_segmentation(old, rendered.mask, labels_of(settled), values)
        out.updated += 1
        out.updated_ids.append(sample.id)
    if out.new_classes:
        set_schema_classes(ds, det_field, [*schema_classes(ds, det_field), *out.new_classes])
    match_colors(ds, targets, label_field, det_field)
    replaced.flush()
    note_mask_edits(ds, label_field, det_field, out.updated, out.new_classes)
    return out


def _value_of(det: fo.Detection) -> int | None:
    value = det.get_field("value") if det.has_field("value") else None
    return int(value) if value is not None else None


def _edited_segmentation(
    old: fo.Segmentation | None, mask: np.ndarray, present: list[str], values: Mapping[str, int]
) -> fo.Segmentation:
    attrs: dict[str, Any] = {}
    if old is not None:
        attrs = {k: old[k] for k in ("steps", CLASS_EDIT) if old.has_field(k)}
    attrs["kept"] = [n for n in values if n in present]
    attrs["edited"] = True
    if old is not None and old.mask_path:
        return fo.Segmentation(mask_path=write_png_atomic(mask, old.mask_path), **attrs)
    return fo.Segmentation(mask=mask, **attrs)
