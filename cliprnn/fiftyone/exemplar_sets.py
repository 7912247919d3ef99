"""Exemplar queries made of a dataset's own images: from a view or a patches view, and stored
by name on the dataset.

A stored set holds ids, never pixels: sample ids, plus label ids and boxes for patches.
Loading it reads the samples' current file paths (and the labels' current boxes and masks),
so it survives restarts, moved media and edited boxes, and names what has since been deleted.

Sets live in the dataset's FiftyOne execution store ``cliprnn_exemplar_sets``, one key per
set, because each save is then one atomic MongoDB write read fresh by every process (rewriting
``dataset.info`` from a stale dataset object, as the App server holds one, could drop another
session's set), kept across dataset renames, deleted with the dataset and copied by a full
``dataset.clone()``, which keeps sample and label ids (in a process that imported this
module); exports do not carry it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import fiftyone as fo

from cliprnn.errors import QueryError
from cliprnn.exemplars import Exemplars

#: The execution store (one per dataset) that holds the sets.
STORE = "cliprnn_exemplar_sets"
#: Format of a stored record.
VERSION = 1
#: How many missing ids an error message lists before "and N more".
SHOW_IDS = 10

SampleCollection = fo.core.collections.SampleCollection


def _register_cloneable() -> None:
    try:
        from fiftyone.operators.store.clone import register_cloneable_store
    except ImportError:  # a FiftyOne without store cloning: clones start with no sets
        return
    register_cloneable_store(STORE)


_register_cloneable()


# --------------------------------------------------------------------------- from a view
def exemplars_from(view_or_patches: SampleCollection, name: str) -> Exemplars:
    """An exemplar query named ``name``: one whole image per sample of a view, or one box
    (with its instance mask, if it has one) per patch of a ``to_patches(field)`` view of a
    Detections field.

    Raises QueryError for an empty name, an empty view, or a collection that is not images.
    """
    name = _check_name(name)
    kind, field = exemplar_source(view_or_patches)
    if kind == "samples":
        paths = view_or_patches.values("filepath")
        _check_not_empty(paths, view_or_patches, name)
        return Exemplars(name, tuple(paths))
    paths, dets = view_or_patches.values(["filepath", field])
    _check_not_empty(paths, view_or_patches, name)
    return _patch_exemplars(name, paths, dets)


def _patch_exemplars(name: str, paths: list[str], dets: list[fo.Detection]) -> Exemplars:
    boxes = tuple(list(d.bounding_box) for d in dets)
    masks = tuple(_mask_of(d) for d in dets)
    return Exemplars(
        name, tuple(paths), boxes, masks if any(m is not None for m in masks) else None
    )


def _mask_of(det: fo.Detection) -> Any:
    mask = det.get_mask()
    return None if mask is None else mask.astype(bool)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise QueryError(f"an exemplar set needs a non-empty name, got {name!r}")
    return name.strip()


def exemplar_source(coll: SampleCollection) -> tuple[str, str | None]:
    """``("samples", None)`` or ``("patches", field)``: what exemplars ``coll`` gives (its
    samples' images, or the boxes of its patches of a Detections ``field``).

    Raises QueryError for a collection exemplars cannot come from (not images, evaluation
    patches, frames, clips).
    """
    from fiftyone.core.patches import PatchesView

    media = coll.media_type
    if media != "image":
        raise QueryError(
            f"exemplars are images; this collection's media type is '{media}'"
            + (" (select one group slice first)" if media == "group" else "")
        )
    if isinstance(coll, PatchesView):
        field = coll.patches_field
        kind = getattr(coll.get_field(field), "document_type", None)
        if not (isinstance(kind, type) and issubclass(kind, fo.Detection)):
            raise QueryError(
                f"patches of '{field}' are not detections; exemplar boxes come from "
                "to_patches() of a Detections field"
            )
        return "patches", field
    if (
        getattr(coll, "_is_patches", False)
        or getattr(coll, "_is_frames", False)
        or getattr(coll, "_is_clips", False)
    ):
        raise QueryError(
            "exemplars come from the dataset, a view of its samples, or to_patches(field) of a "
            "Detections field; not from evaluation patches, frames or clips"
        )
    return "samples", None


def _check_not_empty(values: list, coll: SampleCollection, name: str) -> None:
    if not values:
        what = "patches" if getattr(coll, "_is_patches", False) else "samples"
        raise QueryError(f"exemplar set '{name}': the view has no {what}; select some first")


# ------------------------------------------------------------------------------ stored sets
def _store(dataset: SampleCollection):
    from fiftyone.operators.store import ExecutionStore

    return ExecutionStore.create(STORE, dataset_id=dataset._root_dataset._doc.id)


def _records(dataset: SampleCollection) -> dict[str, dict[str, Any]]:
    store = _store(dataset)
    out = {}
    for key in sorted(store.list_keys(), key=str.casefold):
        value = store.get(key)
        if isinstance(value, dict):
            out[key] = value
    return out


def _unknown(name: str, known: dict[str, Any], dataset: SampleCollection) -> QueryError:
    names = ", ".join(f"'{n}'" for n in known) or "none"
    return QueryError(
        f"dataset '{dataset._root_dataset.name}' has no exemplar set '{name}'; its sets: {names}"
    )


def matching_name(name: str | None, names: Iterable[str], ignore: str | None = None) -> str | None:
    """The name among ``names`` (but ``ignore``) equal to ``name`` up to case and surrounding
    spaces, if any: the stored set a new set called ``name`` would collide with (queries are
    told apart without case)."""
    key = (name or "").strip().casefold()
    return next((n for n in names if key and n != ignore and n.casefold() == key), None)


def _info(record: dict[str, Any]) -> dict[str, Any]:
    return dict(
        count=len(record["sample_ids"]),
        samples=len(set(record["sample_ids"])),
        source=record["source"],
        field=record.get("field"),
        created_at=record["created_at"],
    )


def list_exemplar_sets(dataset: fo.Dataset) -> dict[str, dict[str, Any]]:
    """The stored sets of ``dataset`` by name (sorted): ``count`` exemplars, distinct
    ``samples``, ``source`` ("samples" or "patches"), ``field`` (the patches' Detections
    field, else None) and ``created_at`` (ISO 8601, UTC)."""
    return {name: _info(rec) for name, rec in _records(dataset).items()}


def save_exemplar_set(
    dataset: fo.Dataset, name: str, view_or_patches: SampleCollection, overwrite: bool = False
) -> dict[str, Any]:
    """Store the samples (or patches) of ``view_or_patches``, a view of ``dataset``, as the
    exemplar set ``name``; returns its :func:`list_exemplar_sets` entry.

    A name already used (up to case) raises QueryError unless ``overwrite``.
    """
    name = _check_name(name)
    root = dataset._root_dataset
    if view_or_patches._root_dataset._doc.id != root._doc.id:
        raise QueryError(
            f"exemplar set '{name}': the view belongs to dataset "
            f"'{view_or_patches._root_dataset.name}', not '{root.name}'"
        )
    kind, field = exemplar_source(view_or_patches)
    record: dict[str, Any] = dict(
        version=VERSION,
        name=name,
        source=kind,
        field=field,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    if kind == "samples":
        record["sample_ids"] = view_or_patches.values("id")
    else:
        sids, lids, boxes = view_or_patches.values(
            ["sample_id", f"{field}.id", f"{field}.bounding_box"]
        )
        record.update(sample_ids=sids, label_ids=lids, boxes=[list(b) for b in boxes])
    _check_not_empty(record["sample_ids"], view_or_patches, name)

    store = _store(root)
    existing = matching_name(name, _records(root))
    if existing is not None and not overwrite:
        raise QueryError(
            f"dataset '{root.name}' already has an exemplar set '{existing}'; choose another "
            "name or overwrite it"
        )
    if existing is not None and existing != name:
        store.delete(existing)
    if overwrite:
        store.set(name, record)
    elif not store.set_if_absent(name, record):
        raise QueryError(f"exemplar set '{name}' was just saved by someone else; reload")
    return _info(record)


def rename_exemplar_set(dataset: fo.Dataset, old: str, new: str) -> dict[str, Any]:
    """Rename the stored set ``old`` to ``new``; returns its :func:`list_exemplar_sets` entry.

    Raises QueryError, listing the dataset's sets, when ``old`` is unknown or ``new`` is
    taken (up to case, by another set).
    """
    new = _check_name(new)
    records = _records(dataset)
    if old not in records:
        raise _unknown(old, records, dataset)
    taken = matching_name(new, records, ignore=old)
    if taken is not None:
        names = ", ".join(f"'{n}'" for n in records)
        raise QueryError(f"exemplar set '{taken}' exists; choose a name not among {names}")
    record = {**records[old], "name": new}
    store = _store(dataset)
    if new != old:
        if not store.set_if_absent(new, record):
            raise QueryError(f"exemplar set '{new}' was just saved by someone else; reload")
        store.delete(old)
    return _info(record)


def delete_exemplar_set(dataset: fo.Dataset, name: str) -> None:
    """Delete the stored set ``name`` (QueryError listing the dataset's sets if unknown)."""
    records = _records(dataset)
    if name not in records:
        raise _unknown(name, records, dataset)
    _store(dataset).delete(name)


def load_exemplar_set(dataset: fo.Dataset, name: str) -> Exemplars:
    """The stored set ``name`` as an exemplar query, with the samples' current file paths
    (and, for patches, the labels' current boxes and masks).

    Raises QueryError listing the dataset's sets when ``name`` is unknown, and naming the
    samples (or labels) of the set that have been deleted since it was saved.
    """
    root = dataset._root_dataset
    record = _store(root).get(name)
    if not isinstance(record, dict):
        raise _unknown(name, _records(root), dataset)
    sids = list(record["sample_ids"])
    found = dict(zip(*root.select(sids).values(["id", "filepath"]), strict=True))
    _check_found(name, "samples", list(dict.fromkeys(s for s in sids if s not in found)))
    if record["source"] == "samples":
        return Exemplars(name, tuple(found[s] for s in sids))

    field, lids = record["field"], list(record["label_ids"])
    if not root.has_field(field):
        raise QueryError(f"exemplar set '{name}': the field '{field}' of its patches is gone")
    labels = root.select_labels(ids=lids, fields=field)
    dets = {d.id: d for dd in labels.values(f"{field}.detections") for d in dd or ()}
    gone = [f"{lid} (sample {sid})" for lid, sid in zip(lids, sids, strict=True) if lid not in dets]
    _check_found(name, f"labels of '{field}'", gone)
    return _patch_exemplars(name, [found[s] for s in sids], [dets[lid] for lid in lids])


def _check_found(name: str, what: str, missing: list[str]) -> None:
    if not missing:
        return
    shown = ", ".join(missing[:SHOW_IDS])
    more = f" and {len(missing) - SHOW_IDS} more" if len(missing) > SHOW_IDS else ""
    verb = "was" if len(missing) == 1 else "were"
    raise QueryError(
        f"exemplar set '{name}': {len(missing)} of its {what} {verb} deleted since it was "
        f"saved: {shown}{more}. "
        "Save the set again from the remaining ones, or delete it"
    )


__all__ = [
    "STORE",
    "delete_exemplar_set",
    "exemplar_source",
    "exemplars_from",
    "list_exemplar_sets",
    "load_exemplar_set",
    "matching_name",
    "rename_exemplar_set",
    "save_exemplar_set",
]
