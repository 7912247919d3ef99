"""The fingerprints of the instance labels an edit of stored results replaced, kept per
sample in a collection of their own: a later fold-back refuses a sample whose instances hold
one of them again, as happens when an App page that still showed the old labels saves them
back."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import fiftyone as fo
import numpy as np

from cliprnn.fiftyone.instances import instance_pixels

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


def stale_labels(dets: list[fo.Detection], claims: list[np.ndarray], seen: set[str]) -> list:
    """The detections that are copies of labels an operation replaced (``seen``)."""
    return [
        d
        for d, px in zip(dets, claims, strict=True)
        if relabel_fingerprint(d) in seen or label_fingerprint(d, px) in seen
    ]


def name_ids(ids: list[str]) -> str:
    """The first :data:`NAMED` of ``ids``, comma separated, and how many more there are."""
    more = f" and {len(ids) - NAMED} more" if len(ids) > NAMED else ""
    return ", ".join(ids[:NAMED]) + more
