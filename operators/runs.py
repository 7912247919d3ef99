"""Operators of scheduled runs: ``segment_shard`` (one job of a sharded ``segment`` run,
queued by it, unlisted), ``resume_run`` (re-queue the unfinished jobs of a run, or cancel it)
and ``scheduled_runs`` (unlisted, run by the App whenever a dataset opens: says how the
dataset's scheduled runs ended, or how far they are, and shows the finished fields)."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .common import choices_view, cliprnn_missing, fail, plural, refresh_app, touch_notice

ACTIONS = {
    "resume": "Resume: re-queue the jobs whose worker died or whose operation failed",
    "cancel": "Cancel: stop the run and free the field (written labels stay)",
}


class SegmentShard(foo.Operator):
    """One job of a sharded segment run; queued by ``segment``, run by a delegated worker."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="segment_shard",
            label="Segment with text: one job of a sharded run",
            unlisted=True,
            allow_immediate_execution=False,
            allow_delegated_execution=True,
            rerunnable=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        missing = cliprnn_missing()
        if missing:
            # A worker without the library: the operation fails with this message, and
            # nothing is written.
            fail(inputs, "missing", missing)
        inputs.str("run_id", required=True)
        inputs.int("shard", required=True, min=0)
        return types.Property(inputs)

    def execute(self, ctx):
        from cliprnn.fiftyone.shards import run_shard

        op_id = ctx.request_params.get("run_doc")

        job = int(ctx.params["shard"]) + 1

        def progress(p) -> None:
            ctx.set_progress(progress=p.fraction, label=f"Job {job}: {p.label}")

        return run_shard(
            ctx.dataset,
            ctx.params["run_id"],
            int(ctx.params["shard"]),
            op_id=str(op_id) if op_id else None,
            progress=progress,
        )


class ResumeRun(foo.Operator):
    """Resume (or cancel) a sharded segment run of a field."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="resume_run",
            label="Resume a sharded segment run",
            description="Re-queue the jobs of a sharded run whose worker died or failed",
            dynamic=True,
            icon="restart_alt",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        view = types.View(label="Resume a sharded segment run")
        missing = cliprnn_missing()
        if missing:
            fail(inputs, "missing", missing)
            return types.Property(inputs, view=view)
        from cliprnn.fiftyone.runs import sharded_fields
        from cliprnn.fiftyone.shards import run_status

        fields = sharded_fields(str(ctx.dataset._doc.id))
        if not fields:
            fail(inputs, "no_runs", "This dataset has no unfinished sharded run.")
            return types.Property(inputs, view=view)
        inputs.enum(
            "label_field",
            fields,
            default=fields[0],
            required=True,
            label="Field",
            view=choices_view(types.DropdownView, fields),
        )
        inputs.enum(
            "action",
            list(ACTIONS),
            default="resume",
            label="Action",
            view=choices_view(types.RadioGroup, ACTIONS, ACTIONS),
        )
        field = ctx.params.get("label_field") or fields[0]
        status = run_status(ctx.dataset, field)
        if status:
            inputs.view("status", types.Notice(label=status_text(status)))
            touch_notice(inputs, "writes", touch_text(status, field, ctx.params.get("action")))
        return types.Property(inputs, view=view)

    def execute(self, ctx):
        from cliprnn.fiftyone.shards import cancel_run, resume_run

        field = ctx.params["label_field"]
        if ctx.params.get("action") == "cancel":
            out = cancel_run(ctx.dataset, field)
        else:
            out = resume_run(ctx.dataset, field, delegation_target=ctx.delegation_target)
        ctx.ops.notify(out["message"], variant="success")
        refresh_app(ctx)  # builds (and so triggers) the reload messages
        return out

    def __call__(self, sample_collection: Any, label_field: str, cancel: bool = False) -> Any:
        """Resume the sharded run of ``label_field`` (or ``cancel=True``: cancel it).

        Re-queues exactly the unfinished jobs whose worker died or whose operation failed;
        each starts after the samples it already wrote. Returns what it did.

        Example usage::

            resume = foo.get_operator("@cliprnn/clip-as-rnn/resume_run")
            resume(dataset, "cliprnn")
        """
        from fiftyone.operators.executor import ExecutionResult

        from .common import execute_from_sdk

        params = dict(label_field=label_field, action="cancel" if cancel else "resume")
        result = execute_from_sdk(
            self, sample_collection, params, delegate=False, delegation_target=None
        )
        # a notebook gets the asyncio.Task to await, as from any operator
        return result.result if isinstance(result, ExecutionResult) else result


class ScheduledRuns(foo.Operator):
    """Run by the App when a dataset opens: announce the dataset's scheduled segment runs
    that ended since (one notification: each run's summary, or why it failed; and the runs
    still queued or running, with their progress) and show the fields of the finished ones,
    in the run's colours."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="scheduled_runs",
            label="Announce finished scheduled segment runs",
            unlisted=True,
            on_dataset_open=True,
        )

    def execute(self, ctx):
        if ctx.dataset is None or cliprnn_missing():
            return {"ended": []}
        from cliprnn.fiftyone.scheduled import scheduled_runs, take_finished

        ended = take_finished(ctx.dataset)
        pending = scheduled_runs(ctx.dataset)
        lines = [f"Scheduled run into '{e['field']}' {_how(e)}" for e in ended]
        if pending:
            lines.append("Still going: " + "; ".join(pending_text(r) for r in pending))
        if not lines:
            return {"ended": [], "pending": []}
        failed = any(not e["ok"] for e in ended)
        variant = "error" if failed else "success" if ended else "info"
        ctx.ops.notify("\n".join(lines), variant=variant)
        done = [e for e in ended if e["ok"] and not e.get("planned")]
        shown = [f for e in done for f in _shown_fields(ctx.dataset, e["field"])]
        if shown:
            refresh_app(ctx, shown)  # builds (and so triggers) the messages
        return {"ended": ended, "pending": [r["field"] for r in pending]}


def pending_text(run: dict[str, Any]) -> str:
    """``'car' running 40 % (Segmented 2/5 samples)`` for a scheduled run not ended yet."""
    state = run["state"]
    if run.get("progress") is not None and state == "running":
        state += f" {round(100 * run['progress'])} %"
    label = f" ({run['label']})" if run.get("label") else ""
    return f"'{run['field']}' {state}{label}"


def _how(ended: dict[str, Any]) -> str:
    """How a scheduled run ended, in words."""
    if not ended["ok"]:
        return f"failed: {ended['message']}"
    if ended.get("planned"):
        return (
            f"was split into jobs: {ended['message']}. 'Resume a sharded segment run' shows "
            "their progress"
        )
    return f"finished: {ended['message']}"


def _shown_fields(dataset: Any, field: str) -> list[str]:
    """The fields a finished run shows: its mask and instances (frame fields on videos)."""
    out = []
    for name in (field, f"{field}_det"):
        if dataset.has_field(name):
            out.append(name)
        elif dataset.media_type == "video" and dataset.has_frame_field(name):
            out.append(f"frames.{name}")
    return out


def touch_text(status: dict[str, Any], field: str, action: str | None) -> str:
    """What resuming (or cancelling) the sharded run of ``field`` writes."""
    left = int(status["samples"]) - int(status["written"])
    if action == "cancel":
        return (
            f"Cancel writes no labels: it frees '{field}' for other runs; the "
            f"{plural(int(status['written']), 'sample')} written stay as they are"
        )
    return (
        f"Resume writes '{field}' (and its companion fields) on the "
        f"{plural(left, 'sample')} of this run not written yet; the "
        f"{plural(int(status['written']), 'sample')} written and all other samples are not "
        "changed"
    )


def status_text(status: dict[str, Any]) -> str:
    """One line per job of a run status (cliprnn.fiftyone.shards.run_status)."""
    lines = [
        f"Run {status['run_id']} ({status['state']}): {status['written']}/{status['samples']} "
        "samples written"
    ]
    for s in status["shards"]:
        note = f" ({s['note']})" if s.get("note") else ""
        lines.append(
            f"job {s['index'] + 1}: {s['state']}{note}, {s['written']}/{s['samples']} written"
        )
    return "\n".join(lines)
