"""Provenance: each segmentation run is recorded as a FiftyOne run with its full config."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import fiftyone as fo

from cliprnn.fiftyone.lock import RUNS_COLLECTION, dataset_edit

METHOD = "cliprnn.segment"


def run_key_for(label_field: str) -> str:
    """The run key under which runs writing ``label_field`` are recorded."""
    return f"cliprnn_{label_field}"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cliprnn")
    except Exception:
        return "unknown"


def record_run(
    collection: fo.core.collections.SampleCollection,
    label_field: str,
    record: Mapping[str, Any],
) -> None:
    """Register (or replace) the run record for ``label_field``, before any write."""
    cfg = collection.init_run(
        method=METHOD, cliprnn_version=_version(), label_field=label_field, **record
    )
    with dataset_edit(collection._root_dataset):
        collection.register_run(run_key_for(label_field), cfg, overwrite=True, cleanup=False)


def record_run_results(
    collection: fo.core.collections.SampleCollection,
    label_field: str,
    results: Mapping[str, Any],
) -> None:
    """Attach the run's counts (processed, skipped, failed, first errors, seconds)."""
    key = run_key_for(label_field)
    data = {k: v for k, v in results.items() if k != "run_key"}
    with dataset_edit(collection._root_dataset):
        collection.save_run_results(key, collection.init_run_results(key, **data), overwrite=True)


def note_mask_edits(
    dataset: fo.Dataset,
    label_field: str,
    detections_field: str,
    updated: int,
    new_classes: list[str],
) -> None:
    """Add a line to the run record of ``label_field`` saying edits were folded into it."""
    key = run_key_for(label_field)
    with dataset_edit(dataset):
        if dataset.has_run(key):
            _add_mask_edit(dataset, key, detections_field, updated, new_classes)


def _add_mask_edit(
    dataset: fo.Dataset, key: str, detections_field: str, updated: int, new_classes: list[str]
) -> None:
    cfg = dataset.get_run_info(key).config
    entry = dict(
        at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        from_field=detections_field,
        samples_updated=int(updated),
        new_classes=list(new_classes),
    )
    cfg.mask_edits = [*(getattr(cfg, "mask_edits", None) or []), entry]
    dataset.update_run_config(key, cfg)


def run_info(dataset: fo.Dataset, label_field: str) -> dict[str, Any] | None:
    """The recorded config of the last run that wrote ``label_field`` (None if none)."""
    key = run_key_for(label_field)
    if not dataset.has_run(key):
        return None
    return dataset.get_run_info(key).config.serialize()


# --- Sharded runs: the plan and each shard's state, shared by every worker through MongoDB ---

RUNS = RUNS_COLLECTION
SHARDS = "cliprnn_run_shards"
SHARD_IDS = "cliprnn_run_ids"
#: Sample ids per document of SHARD_IDS (keeps documents far below MongoDB's 16 MB).
IDS_PER_DOC = 50_000
#: States a shard's own document takes.
QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"
#: Derived states: the worker of a RUNNING operation is gone; the operation no longer exists.
DEAD, LOST = "dead", "lost"
RESUMABLE = (FAILED, DEAD, LOST)


def _db():
    from fiftyone.core.odm.database import get_db_conn

    return get_db_conn()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def shard_key(run_id: str, index: int) -> str:
    return f"{run_id}/{index}"


def save_plan(run_doc: Mapping[str, Any], slices: list[list[str]]) -> None:
    """Store a planned run, one queued state document per shard and each shard's sample ids."""
    db = _db()
    run_id = run_doc["_id"]
    id_docs = []
    for i, ids in enumerate(slices):
        for c in range(0, max(len(ids), 1), IDS_PER_DOC):
            chunk = c // IDS_PER_DOC
            id_docs.append(
                dict(
                    _id=f"{run_id}/{i}/{chunk}",
                    run=run_id,
                    shard=i,
                    chunk=chunk,
                    ids=ids[c : c + IDS_PER_DOC],
                )
            )
    if id_docs:
        db[SHARD_IDS].insert_many(id_docs)
    db[SHARDS].insert_many(
        [
            dict(
                _id=shard_key(run_id, i),
                run=run_id,
                index=i,
                size=len(ids),
                state=QUEUED,
                op_id=None,
                cursor=0,
                processed=0,
                failed=0,
                skipped=0,
                errors=[],
                attempts=[],
            )
            for i, ids in enumerate(slices)
        ]
    )
    db[RUNS].insert_one(dict(run_doc))


def get_plan(run_id: str) -> dict[str, Any] | None:
    return _db()[RUNS].find_one({"_id": run_id})


def shard_ids(run_id: str, index: int) -> list[str]:
    """The sample ids of shard ``index``, in the order the shard segments them."""
    docs = _db()[SHARD_IDS].find({"run": run_id, "shard": index}).sort("chunk", 1)
    return [sid for d in docs for sid in d["ids"]]


def shard_docs(run_id: str) -> list[dict[str, Any]]:
    return list(_db()[SHARDS].find({"run": run_id}).sort("index", 1))


def update_shard(run_id: str, index: int, op_id: str | None, update: Mapping[str, Any]) -> bool:
    """Apply ``update`` to a shard's state if ``op_id`` still owns the shard (a resumed shard
    belongs to its new operation; the old one's writes are refused). True when applied."""
    res = _db()[SHARDS].update_one({"_id": shard_key(run_id, index), "op_id": op_id}, update)
    return res.matched_count == 1


def claim_shard(run_id: str, index: int, op_id: str | None, token: str) -> dict[str, Any] | None:
    """Mark a shard running under ``token`` if ``op_id`` owns it (``op_id=None``: an
    in-process run takes it over from whatever operation was queued for it). Returns the
    shard's state before the claim, or None when it is completed or another operation owns
    it."""
    import os
    import socket

    query: dict[str, Any] = {"_id": shard_key(run_id, index), "state": {"$ne": COMPLETED}}
    if op_id is not None:
        query["op_id"] = op_id
    now = _utcnow()
    host, pid = socket.gethostname(), os.getpid()
    return _db()[SHARDS].find_one_and_update(
        query,
        {
            "$set": dict(op_id=token, state=RUNNING, host=host, pid=pid, heartbeat=now, error=None),
            "$push": {"attempts": dict(op_id=token, host=host, pid=pid, started=now)},
        },
    )


def mark_attempt(run_id: str, index: int, token: str, **fields: Any) -> None:
    """Note ``fields`` (start cursor, end, outcome) on the attempt ``token`` of a shard."""
    _db()[SHARDS].update_one(
        {"_id": shard_key(run_id, index), "attempts.op_id": token},
        {"$set": {f"attempts.$.{k}": v for k, v in fields.items()}},
    )


def requeue_shard(run_id: str, index: int, op_id: str, queued_at: dt.datetime) -> None:
    _db()[SHARDS].update_one(
        {"_id": shard_key(run_id, index)},
        {"$set": dict(op_id=op_id, state=QUEUED, queued_at=queued_at)},
    )


def finish_plan(run_id: str, state: str) -> bool:
    """Move an active run to ``state`` (``"complete"`` or ``"cancelled"``); True for the one
    caller that did it (so exactly one shard finalizes a run)."""
    res = _db()[RUNS].update_one(
        {"_id": run_id, "state": "active"}, {"$set": dict(state=state, finished=_utcnow())}
    )
    return res.modified_count == 1


def active_plan(dataset_id: str, label_field: str) -> dict[str, Any] | None:
    """The sharded run of ``label_field`` that has not completed nor been cancelled."""
    return _db()[RUNS].find_one(
        {"dataset_id": dataset_id, "label_field": label_field, "state": "active"}
    )


def latest_plan(dataset_id: str, label_field: str) -> dict[str, Any] | None:
    docs = (
        _db()[RUNS]
        .find({"dataset_id": dataset_id, "label_field": label_field})
        .sort("created", -1)
        .limit(1)
    )
    return next(iter(docs), None)


def sharded_fields(dataset_id: str, active_only: bool = True) -> list[str]:
    """Fields of the dataset with a sharded run (an unfinished one by default)."""
    query: dict[str, Any] = {"dataset_id": dataset_id}
    if active_only:
        query["state"] = "active"
    return sorted(_db()[RUNS].distinct("label_field", query))


def delete_plan(run_id: str) -> None:
    """Forget one planned run (planning that could not take the field's lock)."""
    db = _db()
    db[SHARD_IDS].delete_many({"run": run_id})
    db[SHARDS].delete_many({"run": run_id})
    db[RUNS].delete_one({"_id": run_id})


def delete_plans(dataset_id: str) -> None:
    """Forget every sharded run of a dataset (its state documents and sample ids)."""
    db = _db()
    runs = [d["_id"] for d in db[RUNS].find({"dataset_id": dataset_id}, {"_id": 1})]
    db[SHARD_IDS].delete_many({"run": {"$in": runs}})
    db[SHARDS].delete_many({"run": {"$in": runs}})
    db[RUNS].delete_many({"_id": {"$in": runs}})


def _worker_gone(doc: Mapping[str, Any], stale_after: dt.timedelta) -> bool:
    import os
    import socket

    if doc.get("host") == socket.gethostname() and doc.get("pid"):
        try:
            os.kill(int(doc["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    beat = doc.get("heartbeat")
    return beat is not None and _utcnow() - beat > stale_after


def shard_state(doc: Mapping[str, Any], op: Any, stale_after: dt.timedelta) -> tuple[str, str]:
    """A shard's state, from its own document and its delegated operation ``op`` (or None),
    with a note: completed, queued, running, failed (the operation failed or the shard
    raised), dead (RUNNING, but its worker process is gone or silent for ``stale_after``) or
    lost (its operation was deleted)."""
    from fiftyone.operators.executor import ExecutionRunState as S

    state = doc.get("state")
    if state == COMPLETED:
        return COMPLETED, ""
    if op is None:
        if doc.get("op_id") and not str(doc["op_id"]).startswith("local-"):
            return LOST, "its delegated operation no longer exists"
        if state == RUNNING and _worker_gone(doc, stale_after):
            return DEAD, f"its process {doc.get('pid')} on {doc.get('host')} is gone"
        return (state or QUEUED), ""
    run_state = op.run_state
    if run_state == S.FAILED:
        error = (op.result or {}).get("error") if isinstance(op.result, dict) else None
        error = error or getattr(op.result, "error", None) or doc.get("error") or ""
        return FAILED, _last_line(error)
    if state == FAILED:
        return FAILED, doc.get("error") or ""
    if run_state in (S.QUEUED, S.SCHEDULED):
        return QUEUED, ""
    if run_state == S.RUNNING:
        if state == RUNNING and _worker_gone(doc, stale_after):
            return DEAD, f"its worker (pid {doc.get('pid')} on {doc.get('host')}) is gone"
        if state != RUNNING:
            started = getattr(op, "started_at", None) or getattr(op, "updated_at", None)
            if started is not None and _utcnow() - started > stale_after:
                return DEAD, "its worker took the operation but never started the shard"
        return RUNNING, ""
    # the operation ended without the shard completing (e.g. superseded)
    return FAILED, doc.get("error") or "its operation ended before the shard completed"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_status(
    dataset: fo.Dataset, label_field: str, stale_after: dt.timedelta | None = None
) -> dict[str, Any] | None:
    """The live state of the latest sharded run of ``label_field`` (None if it never had one):
    run id, whether it is complete, and per shard its state, samples, counts, worker and
    delegated operation. Shards whose worker died or whose operation failed are listed under
    ``resumable``."""
    from fiftyone.operators.delegated import DelegatedOperationService

    from cliprnn.fiftyone.lock import STALE_AFTER

    stale_after = stale_after or STALE_AFTER
    plan = latest_plan(str(dataset._doc.id), label_field)
    if plan is None:
        return None
    svc = DelegatedOperationService()
    shards = []
    for doc in shard_docs(plan["_id"]):
        op = None
        op_id = doc.get("op_id")
        if op_id and not str(op_id).startswith("local-"):
            try:
                from bson import ObjectId

                op = svc.get(ObjectId(op_id))
            except Exception:
                op = None
        state, note = shard_state(doc, op, stale_after)
        shards.append(
            dict(
                index=doc["index"],
                state=state,
                note=note,
                samples=doc["size"],
                written=doc.get("cursor", 0),
                processed=doc.get("processed", 0),
                failed=doc.get("failed", 0),
                skipped=doc.get("skipped", 0),
                operation=op_id,
                host=doc.get("host"),
                pid=doc.get("pid"),
                attempts=len(doc.get("attempts") or []),
            )
        )
    return dict(
        run_id=plan["_id"],
        label_field=label_field,
        state=plan["state"],
        complete=plan["state"] == "complete",
        shards=shards,
        samples=sum(s["samples"] for s in shards),
        written=sum(s["written"] for s in shards),
        resumable=[s["index"] for s in shards if s["state"] in RESUMABLE],
    )
