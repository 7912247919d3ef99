"""Check that a cliprnn segmentation field means what its labels say, sample by sample.

The invariants every cliprnn operation keeps (docs/integrity.md):

(a) meaning: every value of a sample's semantic mask is a class of the field's
    ``mask_targets``; every instance of ``<field>_det`` names such a class and carries its
    mask value as ``value``; the ``<field>_scores`` list names each query once;
(b) agreement: the semantic mask and the instances cover the same pixels with the same
    classes (an instance edit not yet folded back breaks this until it is applied).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import numpy as np

from cliprnn.errors import ConfigError
from cliprnn.fiftyone import labels as L
from cliprnn.fiftyone.instances import render_instances

#: How many broken samples :meth:`FieldCheck.summary` names.
SHOWN = 10


@dataclass
class FieldCheck:
    """What :func:`check_field` found: the samples that break an invariant, with reasons."""

    label_field: str
    checked: int = 0
    broken: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no checked sample breaks an invariant."""
        return not self.broken

    def add(self, sample_id: str, reason: str) -> None:
        self.broken.setdefault(sample_id, []).append(reason)

    def summary(self) -> str:
        """A few lines for a person: the counts and the first broken samples."""
        if self.ok:
            return f"'{self.label_field}': all {self.checked} sample(s) consistent"
        lines = [
            f"'{self.label_field}': {len(self.broken)} of {self.checked} sample(s) inconsistent"
        ]
        for sid, reasons in list(self.broken.items())[:SHOWN]:
            lines.append(f"  {sid}: {'; '.join(reasons)}")
        if len(self.broken) > SHOWN:
            lines.append(f"  ... and {len(self.broken) - SHOWN} more")
        return "\n".join(lines)


def check_field(
    sample_collection: fo.core.collections.SampleCollection, label_field: str
) -> FieldCheck:
    """Check invariants (a) and (b) on every sample of the collection that has
    ``label_field`` (a Segmentation field) or its instances ``<label_field>_det``."""
    L.check_field_name(label_field)
    ds = sample_collection._root_dataset
    if not ds.has_field(label_field) or not ds._is_label_field(label_field, fo.Segmentation):
        raise ConfigError(f"dataset '{ds.name}' has no Segmentation field '{label_field}'")
    targets = {int(v): n for v, n in ds.mask_targets.get(label_field, {}).items()}
    det = f"{label_field}_det"
    det = det if ds.has_field(det) and ds._is_label_field(det, fo.Detections) else None
    scores = L.scores_field(label_field)
    scores = scores if ds.has_field(scores) else None
    report = FieldCheck(label_field)
    names = [f for f in (label_field, det, scores) if f]
    view = sample_collection.exists(label_field).select_fields([*names, "metadata"])
    for sample in view.iter_samples():
        report.checked += 1
        for reason in _sample_problems(sample, label_field, det, scores, targets):
            report.add(sample.id, reason)
    return report


def _sample_problems(
    sample: fo.Sample,
    label_field: str,
    det: str | None,
    scores: str | None,
    targets: Mapping[int, str],
) -> list[str]:
    out: list[str] = []
    seg = sample[label_field]
    mask = seg.get_mask() if seg is not None and (seg.mask is not None or seg.mask_path) else None
    if mask is None:
        return ["no mask"]
    orphans = sorted(int(v) for v in np.unique(mask) if v and int(v) not in targets)
    if orphans:
        out.append(f"mask values {orphans} are not classes of the field")
    by_name = {n: v for v, n in targets.items()}
    kept = seg.get_field("kept") if seg.has_field("kept") else None
    unknown_kept = [k for k in kept or [] if k not in by_name]
    if unknown_kept:
        out.append(f"kept names {unknown_kept} are not classes of the field")
    if scores:
        out.extend(_score_problems(sample[scores]))
    if det is None:
        return out
    labels = sample[det]
    dets = list(labels.detections) if labels is not None else []
    unknown = sorted({str(d.label) for d in dets if d.label not in by_name})
    if unknown:
        out.append(f"instances of unknown classes {unknown}")
        return out
    stale = sorted({d.label for d in dets if _value(d) != by_name[d.label]})
    if stale:
        out.append(f"instance value differs from the class's mask value for {stale}")
    rendered = render_instances(dets, by_name, mask.shape[:2], mask.dtype)
    differ = int(np.count_nonzero(rendered.mask != mask))
    if differ:
        out.append(
            f"instances and semantic mask disagree on {differ} px (unapplied instance edits, "
            "or a stale write)"
        )
    return out


def _score_problems(label: Any) -> list[str]:
    if label is None:
        return []
    names = [c.label for c in label.classifications]
    twice = sorted({n for n in names if names.count(n) > 1})
    return [f"scores list {twice} more than once"] if twice else []


def _value(det: fo.Detection) -> int | None:
    value = det.get_field("value") if det.has_field("value") else None
    return int(value) if value is not None else None
