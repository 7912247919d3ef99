"""Rename, merge or delete classes of a segmentation field: masks, instances, scores and
mask targets together, resumable after the process is killed part way."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import fiftyone as fo
import numpy as np

from cliprnn.errors import ConfigError
from cliprnn.fiftyone import labels as L
from cliprnn.fiftyone.annotation import match_colors, schema_classes, set_schema_classes
from cliprnn.fiftyone.defaults import EDIT_BATCH_SIZE as BATCH_SIZE
from cliprnn.fiftyone.faults import fault_point
from cliprnn.fiftyone.files import write_png_atomic
from cliprnn.fiftyone.superseded import Superseded, relabel_fingerprint


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
        fault_point("class_edit_sample")
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
