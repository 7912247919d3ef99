"""Sharded runs: one run of one field, split into K delegated operations that any number of
``fiftyone delegated launch`` workers (on any number of machines sharing the database) run.

Planning (:func:`queue_sharded_run`) fixes everything the shards must agree on before any of
them starts: the query list, mask values and ``mask_targets``, the configuration, the output
fields and their schema (declared once, with the editable label schema and colours), and the
samples of each shard (disjoint, contiguous slices of the target view, in its order). It takes
the field's *run lock*, records the run, and queues one operation per shard.

A shard (:func:`run_shard`) segments its slice and writes its labels only: never
``mask_targets`` nor the schema, so shards cannot race. After each written batch it records
how far it got (a cursor into its slice, with its counts). The shard that completes last
finalizes the run (results on the run record, lock released).

A shard whose worker died, or whose operation failed, is resumed by :func:`resume_run`: it
re-queues exactly the unfinished shards, each starting after the samples it already wrote.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import fiftyone as fo

from cliprnn.errors import CaRError, ConfigError
from cliprnn.fiftyone import runs as R
from cliprnn.fiftyone.collection import make_run
from cliprnn.fiftyone.labels import output_fields
from cliprnn.fiftyone.lock import FieldLock, check_run_lock, lock_holder, release_run_lock
from cliprnn.fiftyone.results import Progress
from cliprnn.fiftyone.run import SegmentationRun

logger = logging.getLogger(__name__)

#: The plugin operator that runs one shard (operators/runs.py).
SHARD_OPERATOR = "@cliprnn/clip-as-rnn/segment_shard"


class ShardSupersededError(CaRError, RuntimeError):
    """The shard was re-queued (or taken over) while this attempt ran; it stops writing."""


@dataclass
class ShardedRun:
    """What planning a sharded run did: its id, shards, samples and queued operations."""

    run_id: str
    label_field: str
    shards: int
    requested: int
    samples: int
    skipped: int
    sizes: list[int]
    operations: list[str] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def check_shards(shards: Any) -> int:
    """``shards`` as an int >= 1, or ConfigError."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"shards must be an integer >= 1, got {shards!r}")
    return shards


def split(ids: Sequence[str], k: int) -> list[list[str]]:
    """``ids`` cut into ``k`` contiguous slices whose sizes differ by at most one."""
    n = len(ids)
    return [list(ids[i * n // k : (i + 1) * n // k]) for i in range(k)]


def queue_sharded_run(
    sample_collection: fo.core.collections.SampleCollection,
    shards: int,
    *,
    queue: bool = True,
    operator_uri: str = SHARD_OPERATOR,
    delegation_target: str | None = None,
    **run_kwargs: Any,
) -> ShardedRun:
    """Plan a run of :func:`cliprnn.fiftyone.segment_collection` (same ``run_kwargs``) over
    ``sample_collection`` split into ``shards`` jobs, and queue one delegated operation per job.

    Everything is checked as for a plain run before anything is written; the models are not
    loaded here (the workers load them). More jobs than samples gives one job per sample (the
    returned ``message`` says so). ``queue=False`` plans without queueing: run each shard with
    :func:`run_shard` yourself (another orchestrator, a test). Raises FieldLockedError while
    another run holds the field.
    """
    requested = check_shards(shards)
    run = make_run(sample_collection, load_model=False, **run_kwargs)
    ds = run.dataset
    label_field = run.fields.label_field
    # Decide under the field's lock (a plain one while planning, handed to the run once its
    # plan is saved), so nothing changes the field between the checks and the plan.
    lock = FieldLock(str(ds._doc.id), ds.name, label_field)
    lock.acquire()
    try:
        ds.reload()
        run._plan()
        return _plan_and_queue(run, requested, lock, queue, operator_uri, delegation_target)
    finally:
        lock.release_if_plain()


def _plan_and_queue(
    run: SegmentationRun,
    requested: int,
    lock: FieldLock,
    queue: bool,
    operator_uri: str,
    delegation_target: str | None,
) -> ShardedRun:
    ds = run.dataset
    label_field = run.fields.label_field
    k = max(1, min(requested, len(run.ids)))
    slices = split(run.ids, k)
    run_id = uuid.uuid4().hex[:16]
    message = f"Planned '{label_field}' as {k} job{'s' * (k != 1)} over {len(run.ids)} samples"
    if k < requested:
        message += f" (asked for {requested}, but there are only {len(run.ids)} samples to segment)"
    plan = dict(
        _id=run_id,
        dataset_id=str(ds._doc.id),
        dataset_name=ds.name,
        label_field=label_field,
        state="active",
        shards=k,
        requested=requested,
        samples=len(run.ids),
        skipped=run.skipped,
        no_queries=len(run.summary.no_queries),
        created=_now(),
        host=socket.gethostname(),
        operator=operator_uri,
        delegation_target=delegation_target,
        spec=run.spec(),
    )
    R.save_plan(plan, slices)
    try:
        lock.hand_to_run(run_id, k)
    except BaseException:
        R.delete_plan(run_id)
        raise
    result = ShardedRun(
        run_id, label_field, k, requested, len(run.ids), run.skipped, [len(s) for s in slices]
    )
    try:
        run._prepare_dataset(declare_error=True)
        record = {**run._record(), "sharded": dict(run_id=run_id, shards=k)}
        R.record_run(run.collection, label_field, record)
        if queue:
            result.operations = queue_shards(ds, plan, range(k), operator_uri, delegation_target)
            message += f"; queued {k} delegated operation{'s' * (k != 1)}"
        _write_results(ds, R.get_plan(run_id))
    except BaseException:
        _cancel(ds, R.get_plan(run_id) or plan, "planning failed")
        raise
    result.message = message
    logger.info("%s (run %s)", message, run_id)
    return result


def queue_shards(
    dataset: fo.Dataset,
    plan: dict[str, Any],
    indices: Sequence[int],
    operator_uri: str = SHARD_OPERATOR,
    delegation_target: str | None = None,
) -> list[str]:
    """Queue one delegated operation per shard index; each shard then belongs to it."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    svc = DelegatedOperationService()
    ops = []
    for i in indices:
        request = dict(
            dataset_name=dataset.name,
            dataset_id=str(dataset._doc.id),
            params=dict(run_id=plan["_id"], shard=int(i)),
            delegated=True,
            request_delegation=True,
            delegation_target=delegation_target,
        )
        op = svc.queue_operation(
            operator=operator_uri,
            label=f"Segment '{plan['label_field']}': job {i + 1}/{plan['shards']}",
            delegation_target=delegation_target,
            context=ExecutionContext(request_params=request),
            metadata=dict(inputs_schema=None, outputs_schema=None),
            rerunnable=False,
        )
        R.requeue_shard(plan["_id"], int(i), str(op.id), _now())
        ops.append(str(op.id))
    return ops


def run_shard(
    dataset: fo.Dataset,
    run_id: str,
    index: int,
    op_id: str | None = None,
    progress: Callable[[Progress], Any] | None = None,
) -> dict[str, Any]:
    """Segment shard ``index`` of the planned run ``run_id``, after the samples it already
    wrote; returns what it did. ``op_id`` is the delegated operation running it (the shard's
    owner); without it this process takes the shard over. The shard completing last
    finalizes the run."""
    dataset = dataset._root_dataset
    plan = R.get_plan(run_id)
    if plan is None:
        raise CaRError(f"no sharded run '{run_id}' (it was deleted); this job writes nothing")
    label_field, k = plan["label_field"], plan["shards"]
    name = f"job {index + 1}/{k} of '{label_field}'"
    if plan["state"] != "active":
        return dict(state="skipped", message=f"{name}: the run is {plan['state']}; nothing done")
    token = str(op_id) if op_id else f"local-{uuid.uuid4().hex[:12]}"
    before = R.claim_shard(run_id, index, op_id and str(op_id), token)
    if before is None:
        doc = next((d for d in R.shard_docs(run_id) if d["index"] == index), None)
        if doc is None:
            raise CaRError(f"sharded run '{run_id}' has no {name}")
        if doc["state"] == R.COMPLETED:
            return dict(state="completed", message=f"{name} was already completed")
        return dict(
            state="superseded",
            message=f"{name} now belongs to operation {doc.get('op_id')}; this one writes nothing",
        )
    try:
        check_run_lock(plan["dataset_id"], dataset.name, label_field, run_id)
        ids = R.shard_ids(run_id, index)
        start = int(before.get("cursor", 0))
        R.mark_attempt(run_id, index, token, start=start)
        todo = ids[start:]
        run = SegmentationRun.from_spec(dataset, plan["spec"], todo)
    except BaseException as e:
        _fail_shard(run_id, index, token, e)
        raise
    offset = {sid: j for j, sid in enumerate(todo)}
    base_p, base_f = int(before.get("processed", 0)), int(before.get("failed", 0))
    base_e = [list(e) for e in before.get("errors") or []]
    size = len(ids)

    def on_write(done: int) -> None:
        s = run.summary
        update = dict(
            cursor=start + offset[run.ids[done - 1]] + 1,
            processed=base_p + s.processed,
            failed=base_f + s.failed,
            errors=(base_e + [list(e) for e in s.errors])[:20],
            heartbeat=_now(),
        )
        if not R.update_shard(run_id, index, token, {"$set": update}):
            raise ShardSupersededError(f"{name} was re-queued; this attempt stops")
        check_run_lock(plan["dataset_id"], dataset.name, label_field, run_id)

    try:
        for p in run.segment_samples(on_write):
            if progress is not None:
                done = start + (offset[run.ids[p.done - 1]] + 1 if p.done else 0)
                progress(Progress(done, size, base_f + p.failed))
    except BaseException as e:
        _fail_shard(run_id, index, token, e)
        raise
    s = run.summary
    processed, failed = base_p + s.processed, base_f + s.failed
    done = dict(
        state=R.COMPLETED,
        cursor=size,
        processed=processed,
        failed=failed,
        skipped=size - processed - failed,
        finished=_now(),
        heartbeat=_now(),
    )
    if not R.update_shard(run_id, index, token, {"$set": done, "$inc": {"seconds": s.seconds}}):
        raise ShardSupersededError(f"{name} was re-queued; this attempt stops")
    R.mark_attempt(run_id, index, token, ended=_now(), state=R.COMPLETED, written=s.processed)
    finalized = finalize_if_complete(dataset, run_id)
    message = (
        f"Job {index + 1}/{k}: segmented {s.processed} sample{'s' * (s.processed != 1)} "
        f"into '{label_field}'"
        + (f" (resumed after {start})" if start else "")
        + (f", {s.failed} failed" if s.failed else "")
        + ("; the run is complete" if finalized else "")
    )
    return dict(
        state=R.COMPLETED,
        run_id=run_id,
        shard=index,
        start=start,
        processed=s.processed,
        failed=s.failed,
        run_complete=finalized,
        message=message,
    )


def _fail_shard(run_id: str, index: int, token: str, error: BaseException) -> None:
    msg = f"{type(error).__name__}: {error}"
    R.update_shard(run_id, index, token, {"$set": dict(state=R.FAILED, error=msg)})
    R.mark_attempt(run_id, index, token, ended=_now(), state=R.FAILED, error=msg)


def finalize_if_complete(dataset: fo.Dataset, run_id: str) -> bool:
    """When every shard is complete: mark the run complete (exactly one caller does), write
    its results on the run record and release the field. True for the caller that did."""
    docs = R.shard_docs(run_id)
    if not docs or any(d["state"] != R.COMPLETED for d in docs):
        return False
    if not R.finish_plan(run_id, "complete"):
        return False
    plan = R.get_plan(run_id)
    _write_results(dataset, plan, docs)
    release_run_lock(plan["dataset_id"], plan["label_field"], run_id)
    return True


def _write_results(
    dataset: fo.Dataset, plan: dict[str, Any], docs: list[dict[str, Any]] | None = None
) -> None:
    """The run record's results: the run's state, its totals and each shard's state and
    counts (written when planned, resumed and completed; :func:`run_status` is live)."""
    docs = docs if docs is not None else R.shard_docs(plan["_id"])
    spec = plan["spec"]
    shards = [
        dict(
            index=d["index"],
            state=d["state"],
            samples=d["size"],
            written=d.get("cursor", 0),
            processed=d.get("processed", 0),
            failed=d.get("failed", 0),
            skipped=d.get("skipped", 0),
            operation=d.get("op_id"),
            host=d.get("host"),
            pid=d.get("pid"),
            attempts=len(d.get("attempts") or []),
        )
        for d in docs
    ]
    errors = [e for d in docs for e in d.get("errors") or []][:20]
    values = {q: int(v) for q, v in spec["values"]}
    fields = output_fields(plan["label_field"], spec["outputs"], values)
    R.record_run_results(
        dataset,
        plan["label_field"],
        dict(
            label_field=plan["label_field"],
            fields=fields.all(),
            mask_targets={str(v): q for v, q in spec["mask_targets"]},
            processed=sum(s["processed"] for s in shards),
            skipped=plan.get("skipped", 0) + sum(s["skipped"] for s in shards),
            failed=sum(s["failed"] for s in shards),
            errors=errors,
            seconds=sum(float(d.get("seconds", 0.0)) for d in docs),
            output_dir=spec.get("output_dir"),
            run_id=plan["_id"],
            state=plan["state"],
            complete=plan["state"] == "complete",
            shards=shards,
        ),
    )


def _find_active(dataset: fo.Dataset, label_field: str) -> dict[str, Any]:
    plan = R.active_plan(str(dataset._doc.id), label_field)
    if plan is not None:
        return plan
    last = R.latest_plan(str(dataset._doc.id), label_field)
    if last is None:
        raise CaRError(f"field '{label_field}' of dataset '{dataset.name}' has no sharded run")
    raise CaRError(
        f"the sharded run '{last['_id']}' of field '{label_field}' is {last['state']}; "
        "nothing to resume"
    )


def resume_run(
    dataset: fo.Dataset,
    label_field: str,
    operator_uri: str | None = None,
    delegation_target: str | None = None,
    stale_after: dt.timedelta | None = None,
) -> dict[str, Any]:
    """Re-queue exactly the unfinished shards of the sharded run of ``label_field`` whose
    operation failed, was deleted, or whose worker is gone (its process is dead, or silent
    for ``stale_after``, 15 minutes by default); a RUNNING operation of such a worker is
    marked failed. Queued and live shards are left alone. Each re-queued shard starts after
    the samples it already wrote. Returns what it did (``message`` says it in words)."""
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult, ExecutionRunState

    dataset = dataset._root_dataset
    plan = _find_active(dataset, label_field)
    run_id = plan["_id"]
    held = lock_holder(plan["dataset_id"], label_field)
    if held is None or held.get("run") != run_id:
        FieldLock(
            plan["dataset_id"], dataset.name, label_field, run=run_id, shards=plan["shards"]
        ).acquire()
    status = R.run_status(dataset, label_field, stale_after)
    by_state: dict[str, list[int]] = {}
    for s in status["shards"]:
        by_state.setdefault(s["state"], []).append(s["index"])
    svc = DelegatedOperationService()
    for s in status["shards"]:
        if s["state"] == R.DEAD and s["operation"] and not str(s["operation"]).startswith("local-"):
            svc.set_failed(
                ObjectId(s["operation"]),
                result=ExecutionResult(error=f"worker gone ({s['note']}); resumed by resume_run"),
                required_state=ExecutionRunState.RUNNING,
            )
    todo = [s["index"] for s in status["shards"] if s["state"] in R.RESUMABLE]
    ops = queue_shards(
        dataset, plan, todo, operator_uri or plan.get("operator") or SHARD_OPERATOR,
        delegation_target if delegation_target is not None else plan.get("delegation_target"),
    )  # fmt: skip
    finalized = False if todo else finalize_if_complete(dataset, run_id)
    if not finalized:
        _write_results(dataset, R.get_plan(run_id))
    parts = []
    if todo:
        jobs = ", ".join(str(i + 1) for i in todo)
        parts.append(f"re-queued job{'s' * (len(todo) != 1)} {jobs}")
    for state in (R.RUNNING, R.QUEUED, R.COMPLETED):
        if by_state.get(state):
            parts.append(f"{len(by_state[state])} {state}")
    if finalized:
        parts.append("the run is now complete")
    elif not todo:
        parts.append("nothing to resume")
    message = f"Run '{run_id}' of '{label_field}': " + "; ".join(parts)
    return dict(
        run_id=run_id,
        label_field=label_field,
        requeued=todo,
        operations=ops,
        running=by_state.get(R.RUNNING, []),
        queued=by_state.get(R.QUEUED, []),
        completed=by_state.get(R.COMPLETED, []),
        message=message,
    )


def cancel_run(dataset: fo.Dataset, label_field: str) -> dict[str, Any]:
    """Cancel the unfinished sharded run of ``label_field``: its queued operations are marked
    failed, running shards stop at their next batch, and the field is released. Labels
    already written stay (rerun with ``skip_existing=True`` or ``overwrite=True``)."""
    dataset = dataset._root_dataset
    plan = _find_active(dataset, label_field)
    _cancel(dataset, plan, "cancelled by cancel_run")
    return dict(run_id=plan["_id"], message=f"Cancelled run '{plan['_id']}' of '{label_field}'")


def _cancel(dataset: fo.Dataset, plan: dict[str, Any], reason: str) -> None:
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult, ExecutionRunState

    run_id = plan["_id"]
    R.finish_plan(run_id, "cancelled")
    svc = DelegatedOperationService()
    for d in R.shard_docs(run_id):
        op = d.get("op_id")
        if op and not str(op).startswith("local-"):
            try:
                svc.set_failed(
                    ObjectId(op),
                    result=ExecutionResult(error=f"run {run_id} {reason}"),
                    required_state=ExecutionRunState.QUEUED,
                )
            except Exception:  # best effort: a running shard checks the lock anyway
                logger.warning("could not fail operation %s", op, exc_info=True)
    release_run_lock(plan["dataset_id"], plan["label_field"], run_id)
    try:
        _write_results(dataset, R.get_plan(run_id) or plan)
    except Exception:  # the record may not exist yet
        logger.debug("no run record to update", exc_info=True)


def run_status(dataset: fo.Dataset, label_field: str, **kwargs: Any) -> dict[str, Any] | None:
    """Live state of the latest sharded run of ``label_field`` (see runs.run_status)."""
    return R.run_status(dataset._root_dataset, label_field, **kwargs)
