"""Rebuild a run's instances from its semantic masks (the reverse of folding instance edits
back), refusing to discard edits not folded back unless told to."""

from __future__ import annotations

from dataclasses import dataclass, field

import fiftyone as fo
import numpy as np

from cliprnn.errors import ConfigError
from cliprnn.fiftyone import labels as L
from cliprnn.fiftyone.annotation import make_editable, match_colors
from cliprnn.fiftyone.class_edits import finish_class_edit
from cliprnn.fiftyone.defaults import DEFAULT_INSTANCES, DEFAULT_LABEL_FIELD
from cliprnn.fiftyone.defaults import EDIT_BATCH_SIZE as BATCH_SIZE
from cliprnn.fiftyone.instances import instances_from_mask, render_instances
from cliprnn.fiftyone.superseded import Superseded, label_fingerprint, name_ids


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
                f"{name_ids(self.discarded)}"
            )
        return text


def unapplied_edits(
    sample_collection: fo.core.collections.SampleCollection,
    label_field: str = DEFAULT_LABEL_FIELD,
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
    label_field: str = DEFAULT_LABEL_FIELD,
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
    ds = sample_collection._root_dataset
    det_field = detections_field or f"{label_field}_det"
    L.check_field_name(det_field, "detections_field")
    if not ds._is_label_field(label_field, fo.Segmentation):
        raise ConfigError(f"'{label_field}' is not a Segmentation field of dataset '{ds.name}'")
    if ds.has_field(det_field):
        L.check_detections_field(ds, det_field)
    finish_class_edit(ds, label_field)
    edited = unapplied_edits(sample_collection, label_field, det_field)
    if edited and not discard_edits:
        raise ConfigError(
            f"{len(edited)} sample(s) have instance edits in '{det_field}' that are not folded "
            f"into '{label_field}': {name_ids(edited)}. A rebuild would discard them: apply "
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
