"""Edit stored results: fold edited instance masks back into the semantic mask, rebuild the
instances from it, and rename, merge or delete classes of a segmentation field (masks,
instances, scores and mask_targets together).

Each operation records fingerprints of the instance labels it replaced, per sample (a
collection of their own, :class:`Superseded`); a later fold-back refuses a sample whose
instances hold one of them again, as happens when an App page that still showed the old labels
saves them back."""

from __future__ import annotations

import hashlib
import os
import signal
import uuid
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
    instance_pixels,
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


#: MongoDB collection of the fingerprints of instance labels that a fold-back, rebuild or
#: class edit replaced, one document per (dataset, field, sample): out of the App's sight.
SUPERSEDED_COLLECTION = "cliprnn_superseded"
#: Fingerprints kept per sample (oldest dropped first).
MAX_SUPERSEDED = 512
#: How many sample ids a refusal names.
NAMED = 10


def label_fingerprint(det: fo.Detection, pixels: np.ndarray | None = None, hw=None) -> str:
    """``<label id>:<digest of its class and image pixels>``: what an instance label is, in a
    form that survives the App re-encoding its mask at another resolution. ``pixels`` are its
    image pixels (:func:`instance_pixels`), computed from ``hw`` when not given."""
    if pixels is None:
        pixels = instance_pixels(det, hw)
    h = hashlib.sha1(str(det.label).encode())
    h.update(np.asarray(pixels.shape, np.int64).tobytes())
    h.update(np.packbits(pixels.astype(bool)).tobytes())
    return f"{det.id}:{h.hexdigest()[:16]}"


def relabel_fingerprint(det: fo.Detection) -> str:
    """``<label id>:<class>:*``: the label under this class name, whatever its pixels (recorded
    when a class edit renames or deletes it)."""
    return f"{det.id}:{det.label}:*"


class Superseded:
    """The fingerprints of replaced instance labels of one field, per sample (see
    :func:`label_fingerprint`): read once per operation, written in batches."""

    _indexed = False

    def __init__(self, dataset: fo.Dataset, label_field: str) -> None:
        from fiftyone.core.odm.database import get_db_conn

        self._coll = get_db_conn()[SUPERSEDED_COLLECTION]
        if not Superseded._indexed:
            self._coll.create_index([("dataset", 1), ("field", 1)])
            Superseded._indexed = True
        self._dataset = str(dataset._doc.id)
        self._field = label_field
        self._add: dict[str, list[str]] = {}
        self._drop: dict[str, set[str]] = {}
        self._seen: dict[str, set[str]] | None = None

    def _key(self, sample_id: str) -> str:
        return f"{self._dataset}/{self._field}/{sample_id}"

    def of(self, sample_id: str) -> set[str]:
        """The fingerprints recorded for ``sample_id``."""
        if self._seen is None:
            query = {"dataset": self._dataset, "field": self._field}
            docs = self._coll.find(query, {"sample": 1, "prints": 1})
            self._seen = {d["sample"]: set(d.get("prints") or []) for d in docs}
        return self._seen.get(sample_id, set())

    def add(self, sample_id: str, prints: Iterable[str]) -> None:
        """Record ``prints`` as replaced on ``sample_id`` (written by :meth:`flush`)."""
        self._add.setdefault(sample_id, []).extend(prints)

    def drop(self, sample_id: str, prints: Iterable[str]) -> None:
        """Forget ``prints`` of ``sample_id`` (labels that are current again)."""
        recorded = self.of(sample_id) & set(prints)
        if recorded:
            self._drop.setdefault(sample_id, set()).update(recorded)

    def flush(self) -> None:
        """Write what was added or dropped since the last flush."""
        from pymongo import UpdateOne

        ops = []
        for sid, prints in self._add.items():
            if prints:
                ops.append(
                    UpdateOne(
                        {"_id": self._key(sid)},
                        {
                            "$setOnInsert": {
                                "dataset": self._dataset,
                                "field": self._field,
                                "sample": sid,
                            },
                            "$push": {"prints": {"$each": prints, "$slice": -MAX_SUPERSEDED}},
                        },
                        upsert=True,
                    )
                )
        for sid, prints in self._drop.items():
            ops.append(
                UpdateOne({"_id": self._key(sid)}, {"$pull": {"prints": {"$in": list(prints)}}})
            )
        if ops:
            self._coll.bulk_write(ops, ordered=True)
        if self._seen is not None:
            for sid, prints in self._add.items():
                self._seen.setdefault(sid, set()).update(prints)
            for sid, prints in self._drop.items():
                self._seen.get(sid, set()).difference_update(prints)
        self._add, self._drop = {}, {}


def _stale_labels(dets: list[fo.Detection], claims: list[np.ndarray], seen: set[str]) -> list:
    """The detections that are copies of labels an operation replaced (``seen``)."""
    return [
        d
        for d, px in zip(dets, claims, strict=True)
        if relabel_fingerprint(d) in seen or label_fingerprint(d, px) in seen
    ]


def _name_ids(ids: list[str]) -> str:
    more = f" and {len(ids) - NAMED} more" if len(ids) > NAMED else ""
    return ", ".join(ids[:NAMED]) + more


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
                f"{_name_ids(list(self.refused))}. Nothing of them was folded; rebuild their "
                "instances from the semantic mask (Semantic mask → instances) and redo the edit"
            )
        elif not self.updated:
            text += ". Nothing was folded: no instance differs from the semantic mask"
        return text


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
    Every instance of a written sample gets its class's mask value as ``value``. Samples whose
    masks already agree are not rewritten, so a second call changes nothing.

    A sample whose instances hold an old copy of a label that an earlier fold-back trimmed, a
    rebuild replaced or a class edit renamed (a stale App page saved it back) is refused: it
    is listed in ``refused`` and left as it is.
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
            stale = _stale_labels(dets, claims, seen)
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


@dataclass
class Rebuild:
    """What ``rebuild_instances`` did."""

    updated: int = 0  # samples whose instances were rewritten
    updated_ids: list[str] = field(default_factory=list)
    #: samples whose instances held edits not folded back, discarded with ``discard_edits``
    discarded: list[str] = field(default_factory=list)

    def message(self, label_field: str, det_field: str) -> str:
        """One line for the App's notification."""
        text = f"Rebuilt '{det_field}' from '{label_field}' on {self.updated} sample(s)"
        if self.discarded:
            text += (
                f"; discarded unapplied instance edits on {len(self.discarded)} sample(s): "
                f"{_name_ids(self.discarded)}"
            )
        return text


def unapplied_edits(
    sample_collection: fo.core.collections.SampleCollection,
    label_field: str = "car",
    detections_field: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Ids of samples whose instances (``detections_field``, default ``<label_field>_det``)
    differ from what the semantic mask ``label_field`` implies: edits a rebuild would discard.
    With ``limit``, only the first ``limit`` samples with instances are looked at."""
    ds = sample_collection._root_dataset
    det_field = detections_field or f"{label_field}_det"
    if not ds.has_field(det_field) or not ds._is_label_field(label_field, fo.Segmentation):
        return []
    targets = {int(k): v for k, v in ds.mask_targets.get(label_field, {}).items()}
    values = {n: v for v, n in targets.items()}
    view = sample_collection.exists(label_field).exists(det_field)
    if limit is not None:
        view = view.limit(limit)
    out = []
    for sample in view.select_fields([label_field, det_field]).iter_samples():
        seg = sample[label_field]
        if seg.mask is None and not seg.mask_path:
            continue
        mask = seg.get_mask()
        dets = list(sample[det_field].detections)
        if any(d.label not in values for d in dets):
            out.append(sample.id)  # an instance of a class the mask does not have
            continue
        rendered = render_instances(dets, values, mask.shape[:2], mask.dtype)
        if not np.array_equal(rendered.mask, mask):
            out.append(sample.id)
    return out


def rebuild_instances(
    sample_collection: fo.core.collections.SampleCollection,
    label_field: str = "car",
    detections_field: str | None = None,
    instances: str = DEFAULT_INSTANCES,
    progress: bool | None = None,
    *,
    discard_edits: bool = False,
) -> Rebuild:
    """The reverse direction: rewrite ``detections_field`` (default ``<label_field>_det``)
    from the semantic masks of ``label_field``, one instance per region (or per class), with
    the run's scores, on the samples of the collection only.

    Instances that differ from what the semantic mask implies (edits not yet folded back with
    :func:`apply_mask_edits`) would be lost: unless ``discard_edits``, such samples are named
    in a ConfigError and nothing is written."""
    from cliprnn.fiftyone.annotation import make_editable, match_colors

    ds = sample_collection._root_dataset
    det_field = detections_field or f"{label_field}_det"
    L.check_field_name(det_field, "detections_field")
    if not ds._is_label_field(label_field, fo.Segmentation):
        raise ConfigError(f"'{label_field}' is not a Segmentation field of dataset '{ds.name}'")
    if ds.has_field(det_field):
        _check_detections_field(ds, det_field)
    finish_class_edit(ds, label_field)
    edited = unapplied_edits(sample_collection, label_field, det_field)
    if edited and not discard_edits:
        raise ConfigError(
            f"{len(edited)} sample(s) have instance edits in '{det_field}' that are not folded "
            f"into '{label_field}': {_name_ids(edited)}. A rebuild would discard them: apply "
            "them first (Apply mask edits), or allow discarding them (discard_edits=True). "
            "Nothing was written"
        )
    if not ds.has_field(det_field):
        ds.add_sample_field(det_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    targets = {int(k): v for k, v in ds.mask_targets.get(label_field, {}).items()}
    scores_field = L.scores_field(label_field)
    has_scores = ds.has_field(scores_field)
    fields = [label_field, det_field] + ([scores_field] if has_scores else [])
    view = sample_collection.exists(label_field).select_fields(fields)
    out = Rebuild(discarded=edited)
    replaced = Superseded(ds, label_field)
    for sample in view.iter_samples(autosave=True, batch_size=BATCH_SIZE, progress=progress):
        seg = sample[label_field]
        mask = seg.get_mask()
        listed = sample[scores_field] if has_scores else None
        scores = {c.label: c.confidence for c in (listed.classifications if listed else [])}
        old = sample[det_field]
        if old is not None and old.detections:
            hw = mask.shape[:2]
            replaced.add(sample.id, [label_fingerprint(d, hw=hw) for d in old.detections])
        sample[det_field] = instances_from_mask(mask, targets, scores, instances)
        out.updated += 1
        out.updated_ids.append(sample.id)
        if len(out.updated_ids) % BATCH_SIZE == 0:
            replaced.flush()
    replaced.flush()
    make_editable(ds, det_field, list(targets.values()))
    match_colors(ds, targets, label_field, det_field)
    return out


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


#: Key of ``dataset.info`` holding class edits begun and not yet finished, per field.
PENDING = "cliprnn_pending_class_edits"
#: Attribute of a ``Segmentation``: the id of the last class edit applied to it (only set by
#: edits that are not idempotent, such as swapping two names).
CLASS_EDIT = "class_edit"


def edit_mask_classes(
    sample_collection: fo.core.collections.SampleCollection,
    label_field: str,
    rename: Mapping[str, str] | None = None,
    merge: Mapping[str, Iterable[str]] | None = None,
    delete: Iterable[str] = (),
    progress: bool | None = None,
) -> dict[int, str]:
    """Rename, merge or delete classes of the segmentation ``label_field`` across the whole
    dataset (mask targets are dataset-wide), updating masks, ``mask_targets``, the
    ``<label_field>_det`` instances (label and ``value``) and the ``<label_field>_scores``
    list (a merged class listed once, with its best score) together. Returns the new mask
    targets.

    Resumable: the edit is recorded in ``dataset.info`` before any sample changes, and the
    mask targets name every mask value correctly at every moment (a merged or renamed value
    already carries its new name). If the process dies part way, the next call of this
    function, :func:`apply_mask_edits`, :func:`rebuild_instances` or :func:`finish_class_edit`
    on the field finishes it first; repeating the interrupted call just finishes it.
    """
    ds = sample_collection._root_dataset
    if not ds._is_label_field(label_field, fo.Segmentation):
        raise ConfigError(f"'{label_field}' is not a Segmentation field of dataset '{ds.name}'")
    request = _request(rename, merge, delete)
    pending = (ds.info.get(PENDING) or {}).get(label_field)
    if pending is not None:
        targets = finish_class_edit(ds, label_field, progress=progress)
        if pending.get("request") == request:
            return targets
    targets = {int(k): v for k, v in ds.mask_targets.get(label_field, {}).items()}
    if not targets:
        raise ConfigError(f"field '{label_field}' has no mask_targets to edit")
    mapping = class_mapping(targets.values(), rename, merge, delete)
    new_targets, lut = remap_targets(targets, mapping)
    job = {
        "id": uuid.uuid4().hex,
        "request": request,
        "mapping": mapping,
        "lut": {str(k): int(v) for k, v in lut.items()},
        "targets": {str(k): v for k, v in sorted(new_targets.items())},
        "dtype_max": max(max(targets), 1),
    }
    # Every old value already carries its new name, so a sample read before or after its
    # masks are rewritten means the same; the values merged away are dropped at the end.
    passing = {v: mapping.get(n, n) for v, n in sorted(targets.items())}
    ds.mask_targets = {
        **ds.mask_targets,
        label_field: {v: n for v, n in passing.items() if n is not None},
    }
    ds.info = {**ds.info, PENDING: {**(ds.info.get(PENDING) or {}), label_field: job}}
    ds.save()
    return _run_class_edit(ds, label_field, job, progress)


def _request(rename, merge, delete) -> dict[str, Any]:
    """A class edit request in a form that compares equal when repeated."""
    return {
        "rename": {str(k): v for k, v in (rename or {}).items()},
        "merge": {str(k): [v] if isinstance(v, str) else list(v) for k, v in (merge or {}).items()},
        "delete": [delete] if isinstance(delete, str) else list(delete),
    }


def finish_class_edit(
    dataset: fo.Dataset, label_field: str, progress: bool | None = None
) -> dict[int, str]:
    """Finish a class edit of ``label_field`` that a killed process left part done (no-op when
    there is none). Returns the field's mask targets."""
    job = (dataset.info.get(PENDING) or {}).get(label_field)
    if job is not None:
        return _run_class_edit(dataset, label_field, job, progress)
    return {int(k): v for k, v in dataset.mask_targets.get(label_field, {}).items()}


def _run_class_edit(
    ds: fo.Dataset, label_field: str, job: Mapping[str, Any], progress: bool | None
) -> dict[int, str]:
    from cliprnn.fiftyone.annotation import match_colors, schema_classes, set_schema_classes

    mapping: dict[str, str | None] = dict(job["mapping"])
    # Applying a mapping whose new names all map to themselves twice is applying it once (the
    # value table always is): a sample the killed process rewrote may simply be rewritten
    # again. Only other mappings (a swap of two names) mark each rewritten sample.
    marked = any(mapping.get(n, n) != n for n in mapping.values() if n is not None)
    new_targets = {int(k): v for k, v in job["targets"].items()}
    by_name = {n: v for v, n in new_targets.items()}
    dtype = L.mask_dtype(int(job["dtype_max"]))
    table = np.arange(65536, dtype=np.int64)
    for old, new in job["lut"].items():
        table[int(old)] = int(new)  # idempotent: a mask rewritten twice is rewritten once
    det_field = f"{label_field}_det"
    has_det = ds._is_label_field(det_field, fo.Detections) if ds.has_field(det_field) else False
    scores_field = L.scores_field(label_field)
    has_scores = ds.has_field(scores_field)
    fields = [label_field] + [
        f for f, has in ((det_field, has_det), (scores_field, has_scores)) if has
    ]
    view = ds.exists(label_field).select_fields(fields)
    replaced = Superseded(ds, label_field)
    done = 0
    for sample in view.iter_samples(autosave=True, batch_size=BATCH_SIZE, progress=progress):
        seg = sample[label_field]
        if marked and seg.has_field(CLASS_EDIT) and seg[CLASS_EDIT] == job["id"]:
            continue  # done before the process was stopped
        mask = table[seg.get_mask()].astype(dtype)
        if seg.mask_path:
            write_png_atomic(mask, seg.mask_path)
        else:
            seg.mask = mask
        if seg.has_field("kept") and isinstance(seg["kept"], list):
            seg["kept"] = _rename_list(seg["kept"], mapping)
        if has_det and sample[det_field] is not None:
            dets = list(sample[det_field].detections)
            old = [relabel_fingerprint(d) for d in dets if mapping.get(d.label, d.label) != d.label]
            dets = _relabel(dets, mapping)
            for det in dets:
                if det.label in by_name:
                    det["value"] = int(by_name[det.label])
            replaced.add(sample.id, old)
            replaced.drop(sample.id, [relabel_fingerprint(d) for d in dets])  # current again
            sample[det_field].detections = dets
        if has_scores and sample[scores_field] is not None:  # what was queried: deleted stay
            listed = sample[scores_field]
            relabelled = _relabel(listed.classifications, mapping, keep_deleted=True)
            listed.classifications = _once_each(relabelled)
        if marked:
            seg[CLASS_EDIT] = job["id"]
        sample[label_field] = seg
        done += 1
        if done % BATCH_SIZE == 0:
            replaced.flush()
        _kill_point("class_edit_sample")
    replaced.flush()
    pending = {k: v for k, v in (ds.info.get(PENDING) or {}).items() if k != label_field}
    ds.mask_targets = {**ds.mask_targets, label_field: dict(sorted(new_targets.items()))}
    if has_det and det_field in ds.classes:
        ds.classes = {**ds.classes, det_field: list(dict.fromkeys(new_targets.values()))}
    info = {k: v for k, v in ds.info.items() if k != PENDING}
    ds.info = {**info, PENDING: pending} if pending else info
    ds.save()
    if has_det:
        old_choices = _rename_list(schema_classes(ds, det_field), mapping)
        set_schema_classes(ds, det_field, [*new_targets.values(), *old_choices])
    match_colors(ds, new_targets, label_field, det_field if has_det else None)
    return new_targets


def _kill_point(name: str) -> None:
    """Test hook: ``CLIPRNN_KILL_AT=<name>[:<n>]`` SIGKILLs this process the ``n``-th time
    (default the first) it passes point ``name``."""
    spec = os.environ.get("CLIPRNN_KILL_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point == name:
        _kill_hits[name] = _kill_hits.get(name, 0) + 1
        if _kill_hits[name] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


_kill_hits: dict[str, int] = {}


def _once_each(listed: list) -> list:
    """Classifications with each name once (a merge lists its members under one name): the
    first place, the best confidence."""
    best: dict[str, Any] = {}
    for c in listed:
        have = best.get(c.label)
        if have is None:
            best[c.label] = c
        elif (c.confidence or 0.0) > (have.confidence or 0.0):
            have.confidence = c.confidence
    return list(best.values())


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
