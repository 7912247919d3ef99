"""Scheduled (delegated) segment runs: the output field is reserved when a run is queued.

A queued run has not created its field yet, so a "first free field name" check that reads
only the schema gives two queued runs the same name, and the one that runs second fails on
the worker. A *reservation* closes that gap: one database document per (dataset, field),
inserted when the run is scheduled (a unique ``_id``, so of two runs scheduled at the same
moment exactly one gets the name), carried by the queued operation as a token in its
parameters, and closed by the worker when the run ends. Free-name checks and form checks
read the reservations; a reservation whose operation is gone (failed, deleted, never
queued) no longer holds its field.

The same documents remember how each scheduled run ended (``completed`` or ``failed``, with
a message) until the App has announced it: :func:`take_finished` hands each finished run
out exactly once.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

import pymongo
import pymongo.errors
from fiftyone.core.odm.database import get_db_conn

from cliprnn.errors import CaRError

COLLECTION = "cliprnn_field_reservations"
#: The operator parameter that carries a queued run's reservation token.
TOKEN_PARAM = "field_reservation"
#: FiftyOne's collection of delegated operations (fiftyone.factory.repos).
DELEGATED_OPS = "delegated_ops"
#: States of a delegated operation that has not ended.
LIVE_OP_STATES = ("scheduled", "queued", "running", "processing")
#: A reservation is taken just before its operation is queued; until the operation document
#: exists (milliseconds later), the reservation holds for at most this long. After that, a
#: reservation without its operation (deleted, or the queueing failed) frees its field.
QUEUE_GRACE = dt.timedelta(seconds=30)
#: Reservation states: the run is queued or running; it ended.
SCHEDULED, RUNNING, COMPLETED, FAILED = "scheduled", "running", "completed", "failed"


class FieldReservedError(CaRError, RuntimeError):
    """The output field is reserved by another scheduled run."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _coll():
    return get_db_conn()[COLLECTION]


def _key(dataset_id: str, field: str) -> str:
    return f"{dataset_id}/{field}"


def new_token() -> str:
    """A fresh reservation token."""
    return uuid.uuid4().hex


def _ops_by_token(tokens: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The delegated operations carrying ``tokens`` (token -> operation document)."""
    tokens = list(tokens)
    if not tokens:
        return {}
    path = f"context.request_params.params.{TOKEN_PARAM}"
    docs = get_db_conn()[DELEGATED_OPS].find(
        {path: {"$in": tokens}},
        {"run_state": 1, "status": 1, "result": 1, "queued_at": 1, path: 1},
    )
    out = {}
    for d in docs:
        token = d.get("context", {}).get("request_params", {}).get("params", {}).get(TOKEN_PARAM)
        if token:
            out[token] = d
    return out


def _holds(doc: dict[str, Any], op: dict[str, Any] | None) -> bool:
    """Whether reservation ``doc`` (whose operation is ``op``) still holds its field."""
    if doc.get("state") not in (SCHEDULED, RUNNING):
        return False
    if op is None:  # not queued yet, or deleted since
        return _now() - doc["created"] < QUEUE_GRACE
    return op.get("run_state") in LIVE_OP_STATES


def _describe(doc: dict[str, Any]) -> str:
    when = doc["created"].strftime("%H:%M:%S")
    return f"a run scheduled at {when} UTC (still {doc.get('state', SCHEDULED)})"


def reserve_field(dataset: Any, field: str, token: str, samples: int | None = None) -> None:
    """Reserve ``field`` of ``dataset`` for the scheduled run carrying ``token``; raise
    FieldReservedError naming the run that holds it. Atomic: of two runs reserving the same
    field at once, one gets it."""
    coll = _coll()
    key = _key(str(dataset._doc.id), field)
    doc = dict(
        _id=key,
        dataset_id=str(dataset._doc.id),
        field=field,
        token=token,
        state=SCHEDULED,
        created=_now(),
        samples=samples,
        announced=False,
    )
    for _ in range(3):
        try:
            coll.insert_one(doc)
            return
        except pymongo.errors.DuplicateKeyError:
            pass
        held = coll.find_one({"_id": key})
        if held is None:
            continue
        if held["token"] == token:
            return
        if _holds(held, _ops_by_token([held["token"]]).get(held["token"])):
            raise FieldReservedError(
                f"field '{field}' of dataset '{dataset.name}' is reserved by {_describe(held)}; "
                "choose another output field, or wait for that run to finish"
            )
        if coll.find_one_and_replace({"_id": key, "token": held["token"]}, doc) is not None:
            return
    raise FieldReservedError(f"field '{field}' of dataset '{dataset.name}' is being reserved")


def reserved_fields(dataset: Any, except_token: str | None = None) -> dict[str, str]:
    """The fields of ``dataset`` that scheduled runs hold (field -> who holds it), except
    the run carrying ``except_token``."""
    query = {"dataset_id": str(dataset._doc.id), "state": {"$in": [SCHEDULED, RUNNING]}}
    docs = [d for d in _coll().find(query) if d["token"] != except_token]
    ops = _ops_by_token(d["token"] for d in docs)
    return {d["field"]: _describe(d) for d in docs if _holds(d, ops.get(d["token"]))}


def claim(dataset: Any, field: str, token: str) -> None:
    """Called by the worker as the run starts: mark the reservation running (taking the
    field again if the reservation was dropped); FieldReservedError if another run holds
    it."""
    held = _coll().find_one_and_update(
        {"_id": _key(str(dataset._doc.id), field), "token": token},
        {"$set": {"state": RUNNING, "started": _now()}},
    )
    if held is None:
        reserve_field(dataset, field, token)
        _coll().update_one(
            {"_id": _key(str(dataset._doc.id), field), "token": token},
            {"$set": {"state": RUNNING, "started": _now()}},
        )


def finish(
    dataset: Any, field: str, token: str, ok: bool, message: str, planned: bool = False
) -> None:
    """Called by the worker as the run ends: free the field and keep how the run ended
    (``message``) for the App to announce. ``planned``: the run was a sharded run's planning
    job (its jobs, queued now, hold the field with the run's own lock)."""
    _coll().update_one(
        {"_id": _key(str(dataset._doc.id), field), "token": token},
        {
            "$set": {
                "state": COMPLETED if ok else FAILED,
                "finished": _now(),
                "message": message,
                "planned": planned,
                "announced": False,
            }
        },
    )


def scheduled_runs(dataset: Any) -> list[dict[str, Any]]:
    """The dataset's scheduled runs that hold a field: ``field``, ``state`` (queued or
    running), ``progress`` (0..1 or None) and ``label`` (the worker's last progress
    message), oldest first."""
    docs = list(
        _coll()
        .find({"dataset_id": str(dataset._doc.id), "state": {"$in": [SCHEDULED, RUNNING]}})
        .sort("created", pymongo.ASCENDING)
    )
    ops = _ops_by_token(d["token"] for d in docs)
    out = []
    for d in docs:
        op = ops.get(d["token"])
        if not _holds(d, op):
            continue
        status = (op or {}).get("status") or {}
        out.append(
            dict(
                field=d["field"],
                state=(op or {}).get("run_state") or "queued",
                progress=status.get("progress"),
                label=status.get("label"),
                created=d["created"],
            )
        )
    return out


def take_finished(dataset: Any) -> list[dict[str, Any]]:
    """The dataset's scheduled runs that ended since the last call (each is returned once,
    even to several Apps): ``field``, ``ok``, ``message`` and ``planned`` (a sharded run's
    planning job, whose jobs may still run). A run whose operation failed
    before the run could say so (a worker-side error, a deleted or killed operation) is
    reported with the operation's error."""
    coll = _coll()
    ds_id = str(dataset._doc.id)
    open_docs = list(coll.find({"dataset_id": ds_id, "state": {"$in": [SCHEDULED, RUNNING]}}))
    ops = _ops_by_token(d["token"] for d in open_docs)
    for d in open_docs:
        op = ops.get(d["token"])
        if _holds(d, op):
            continue
        if op is None:
            reason = "its operation was deleted before it ran"
        else:
            error = (op.get("result") or {}).get("error") or ""
            last = [ln for ln in str(error).strip().splitlines() if ln.strip()]
            reason = last[-1] if last else f"its operation is {op.get('run_state')}"
        coll.update_one(
            {"_id": d["_id"], "token": d["token"]},
            {"$set": {"state": FAILED, "finished": _now(), "message": reason, "announced": False}},
        )
    out = []
    while True:
        d = coll.find_one_and_update(
            {"dataset_id": ds_id, "state": {"$in": [COMPLETED, FAILED]}, "announced": False},
            {"$set": {"announced": True}},
            sort=[("finished", pymongo.ASCENDING)],
        )
        if d is None:
            return out
        ok = d["state"] == COMPLETED
        out.append(
            dict(field=d["field"], ok=ok, message=d.get("message"), planned=bool(d.get("planned")))
        )
