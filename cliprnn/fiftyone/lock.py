"""A database lock per (dataset, field), so two runs never write the same field at once."""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid

import pymongo.errors
from fiftyone.core.odm.database import get_db_conn

from cliprnn.errors import CaRError

_COLLECTION = "cliprnn_field_locks"
#: A lock whose holder has not refreshed it for this long is considered abandoned.
STALE_AFTER = dt.timedelta(minutes=15)


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


class FieldLock:
    """Held while a run writes ``field`` of ``dataset``; use as a context manager."""

    def __init__(self, dataset_id: str, dataset_name: str, field: str) -> None:
        self.key = f"{dataset_id}/{field}"
        self.dataset_name = dataset_name
        self.field = field
        self.token = uuid.uuid4().hex
        self._coll = get_db_conn()[_COLLECTION]

    def _doc(self) -> dict:
        return dict(
            _id=self.key,
            token=self.token,
            pid=os.getpid(),
            host=socket.gethostname(),
            started=_now(),
            heartbeat=_now(),
        )

    def _abandoned(self, doc: dict) -> bool:
        if doc.get("host") == socket.gethostname() and not _pid_alive(int(doc.get("pid", -1))):
            return True
        return _now() - doc.get("heartbeat", _now()) > STALE_AFTER

    def acquire(self) -> FieldLock:
        """Take the lock, or raise FieldLockedError describing the run that holds it."""
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
            return self.acquire()
        raise FieldLockedError(
            f"field '{self.field}' of dataset '{self.dataset_name}' is being written by another "
            f"run (pid {held.get('pid')} on {held.get('host')}, started {held.get('started')} "
            "UTC); wait for it to finish or choose another label_field"
        )

    def refresh(self) -> None:
        """Mark the lock as still in use (call once per batch)."""
        self._coll.update_one(
            {"_id": self.key, "token": self.token}, {"$set": {"heartbeat": _now()}}
        )

    def release(self) -> None:
        """Give the lock back (only if this run still holds it)."""
        self._coll.delete_one({"_id": self.key, "token": self.token})

    def __enter__(self) -> FieldLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
