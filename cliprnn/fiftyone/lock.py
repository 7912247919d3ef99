"""A database lock per (dataset, field), so two runs never write the same field at once.

A plain run holds a :class:`FieldLock` while its process writes. A sharded run holds a *run
lock* instead: the same document, naming the run, taken when the run is planned and released
when its last shard completes (or the run is cancelled). The run's own shards write under it
from any process or machine; any other run on the field is refused with a message naming it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pymongo.errors
from fiftyone.core.odm.database import get_db_conn

from cliprnn.errors import CaRError

_COLLECTION = "cliprnn_field_locks"
#: The plans of sharded runs (cliprnn.fiftyone.runs keeps them); a run lock whose run is no
#: longer active there (completed, cancelled, or never saved) is abandoned.
RUNS_COLLECTION = "cliprnn_runs"
#: A lock whose holder has not refreshed it for this long is considered abandoned.
STALE_AFTER = dt.timedelta(minutes=15)
#: The pseudo-field whose lock serialises changes to a dataset's document (see dataset_edit).
DATASET_DOCUMENT = "#dataset"
#: A dataset-document lock is held for one short edit; older than this, its holder is gone.
DATASET_STALE_AFTER = dt.timedelta(seconds=60)


class FieldLockedError(CaRError, RuntimeError):
    """Another run is writing the same field of the same dataset."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_key(dataset_id: str, field: str) -> str:
    """The lock document id of ``field`` of the dataset ``dataset_id``."""
    return f"{dataset_id}/{field}"


def _holder_text(held: dict[str, Any], field: str, dataset_name: str) -> str:
    if held.get("run"):
        return (
            f"field '{field}' of dataset '{dataset_name}' belongs to the sharded run "
            f"'{held['run']}' ({held.get('shards', '?')} jobs, planned on {held.get('host')} "
            f"at {held.get('started')} UTC), which has unfinished jobs; wait for it to finish, "
            f"resume it with resume_run('{field}') if a worker died, cancel it with "
            f"cancel_run('{field}'), or choose another label_field"
        )
    return (
        f"field '{field}' of dataset '{dataset_name}' is being written by another "
        f"run (pid {held.get('pid')} on {held.get('host')}, started {held.get('started')} "
        "UTC); wait for it to finish or choose another label_field"
    )


class FieldLock:
    """Held while a run writes ``field`` of ``dataset``; use as a context manager.

    With ``run`` (a sharded run's id) it is a run lock: it outlives the planning process (the
    shards may wait in the queue for hours), is released with :func:`release_run_lock` when
    the run completes or is cancelled, and is taken over only once its run is no longer
    active.
    """

    def __init__(
        self,
        dataset_id: str,
        dataset_name: str,
        field: str,
        run: str | None = None,
        shards: int = 0,
        stale_after: dt.timedelta = STALE_AFTER,
    ) -> None:
        self.key = lock_key(dataset_id, field)
        self.stale_after = stale_after
        self.dataset_name = dataset_name
        self.field = field
        self.run = run
        self.shards = shards
        self.token = uuid.uuid4().hex
        self._coll = get_db_conn()[_COLLECTION]

    def _doc(self) -> dict:
        doc = dict(
            _id=self.key,
            token=self.token,
            pid=os.getpid(),
            host=socket.gethostname(),
            started=_now(),
            heartbeat=_now(),
        )
        if self.run:
            doc.update(run=self.run, shards=self.shards)
        return doc

    def _abandoned(self, doc: dict) -> bool:
        if doc.get("run"):  # held from planning to the last shard, across processes
            runs = get_db_conn()[RUNS_COLLECTION]
            return runs.find_one({"_id": doc["run"], "state": "active"}) is None
        if doc.get("host") == socket.gethostname() and not _pid_alive(int(doc.get("pid", -1))):
            return True
        return _now() - doc.get("heartbeat", _now()) > self.stale_after

    def acquire(self, wait: float = 0.0) -> FieldLock:
        """Take the lock, or raise FieldLockedError describing the run that holds it; with
        ``wait`` (seconds), retry until then before raising."""
        deadline = time.monotonic() + wait
        delay = 0.01
        while True:
            try:
                return self._try_acquire()
            except FieldLockedError:
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _try_acquire(self) -> FieldLock:
        try:
            self._coll.insert_one(self._doc())
            return self
        except pymongo.errors.DuplicateKeyError:
            pass
        held = self._coll.find_one({"_id": self.key})
        if held is not None and self._abandoned(held):
            taken = self._coll.find_one_and_replace(
                {"_id": self.key, "token": held["token"]}, self._doc()
            )
            if taken is not None:
                return self
            held = self._coll.find_one({"_id": self.key})
        if held is None:  # released in between
            return self._try_acquire()
        raise FieldLockedError(_holder_text(held, self.field, self.dataset_name))

    def refresh(self) -> None:
        """Mark the lock as still in use (call once per batch)."""
        self._coll.update_one(
            {"_id": self.key, "token": self.token}, {"$set": {"heartbeat": _now()}}
        )

    def hand_to_run(self, run: str, shards: int) -> None:
        """Turn this held plain lock into the run lock of the sharded run ``run`` (it then
        outlives this process, until the run completes or is cancelled)."""
        held = self._coll.find_one_and_update(
            {"_id": self.key, "token": self.token}, {"$set": {"run": run, "shards": shards}}
        )
        if held is None:
            raise FieldLockedError(
                f"the lock of field '{self.field}' of dataset '{self.dataset_name}' was taken "
                "over while the run was planned; nothing was queued"
            )
        self.run, self.shards = run, shards

    def release_if_plain(self) -> None:
        """Release the lock unless it was handed to a sharded run."""
        if not self.run:
            self.release()

    def release(self) -> None:
        """Give the lock back (only if this run still holds it)."""
        self._coll.delete_one({"_id": self.key, "token": self.token})

    def __enter__(self) -> FieldLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(dataset_id: str, field: str) -> dict[str, Any] | None:
    """The lock document of ``field`` (None when nobody holds it)."""
    return get_db_conn()[_COLLECTION].find_one({"_id": lock_key(dataset_id, field)})


def check_run_lock(dataset_id: str, dataset_name: str, field: str, run: str) -> None:
    """Raise FieldLockedError unless the run lock of ``field`` belongs to ``run`` (a shard
    checks this before it writes, and refreshes the lock's heartbeat)."""
    coll = get_db_conn()[_COLLECTION]
    key = lock_key(dataset_id, field)
    held = coll.find_one_and_update({"_id": key, "run": run}, {"$set": {"heartbeat": _now()}})
    if held is not None:
        return
    other = coll.find_one({"_id": key})
    if other is None:
        raise FieldLockedError(
            f"the sharded run '{run}' no longer holds field '{field}' of dataset "
            f"'{dataset_name}' (it was completed or cancelled); this job writes nothing"
        )
    raise FieldLockedError(_holder_text(other, field, dataset_name))


def release_run_lock(dataset_id: str, field: str, run: str) -> bool:
    """Release the run lock of ``field`` if ``run`` holds it; True when it did."""
    res = get_db_conn()[_COLLECTION].delete_one({"_id": lock_key(dataset_id, field), "run": run})
    return res.deleted_count == 1


_edits_held: dict[str, int] = {}  # dataset id -> nesting depth of dataset_edit here
_edits_guard = threading.Lock()


@contextlib.contextmanager
def dataset_edit(dataset: Any, wait: float = 120.0) -> Iterator[Any]:
    """Serialise a change to ``dataset``'s document (its schema, mask targets, classes, label
    schemas, colours, run records) with every other cliprnn process: hold the dataset's
    document lock and reload the dataset first, so the change applies to the current document
    and no other process's change is written over by a stale copy. Re-entrant within a
    process (an inner edit runs under the outer one's lock)."""
    key = str(dataset._doc.id)
    with _edits_guard:
        depth = _edits_held.get(key, 0)
        _edits_held[key] = depth + 1
    lock = None
    try:
        if depth == 0:
            lock = FieldLock(key, dataset.name, DATASET_DOCUMENT, stale_after=DATASET_STALE_AFTER)
            lock.acquire(wait=wait)
            dataset.reload()
        yield dataset
    finally:
        if lock is not None:
            lock.release()
        with _edits_guard:
            _edits_held[key] -= 1
            if not _edits_held[key]:
                del _edits_held[key]
