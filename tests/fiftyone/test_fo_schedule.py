"""Scheduled (delegated) segment runs: the output field is reserved when a run is queued, so
two runs scheduled back to back get different fields and both land on one real worker
(`fiftyone delegated launch`); how each run ended reaches the App when the dataset opens."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext, ExecutionRunState

from cliprnn.fiftyone import scheduled
from cliprnn.fiftyone.check import check_field
from cliprnn.fiftyone.scheduled import TOKEN_PARAM, reserved_fields, scheduled_runs

pytestmark = pytest.mark.fiftyone

URI = "@cliprnn/clip-as-rnn/segment"
ANNOUNCE = "@cliprnn/clip-as-rnn/scheduled_runs"
REPO_ROOT = Path(__file__).resolve().parents[2]
QUERIES = ["red circle", "blue square"]


def _params(tiny_config, **extra) -> dict:
    return dict(
        query_text="\n".join(QUERIES),
        preset="voc",
        advanced=True,
        proposal_model=tiny_config.proposal_model,
        classifier_model=tiny_config.classifier_model,
        device="cpu",
        **extra,
    )


def _form(ds: fo.Dataset, params: dict) -> dict:
    req = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params)
    return foo.get_operator(URI).resolve_input(ExecutionContext(request_params=req)).type.properties


def _schedule_like_the_app(ds: fo.Dataset, params: dict):
    """What the App does on Schedule: take the form's default output field, then ask for
    delegated execution with those params."""
    field = _form(ds, params)["label_field"].default
    result = foo.execute_operator(
        URI, dict(dataset=ds, params={**params, "label_field": field}), request_delegation=True
    )
    assert result.delegated
    return field, result.result["id"]


def _worker_env(plugins_dir: Path) -> dict:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "FIFTYONE_PLUGINS_DIR": str(plugins_dir), "PYTHONPATH": path}


def _run_worker_until_done(plugins_dir: Path, op_ids, timeout: float = 300) -> str:
    """Start one `fiftyone delegated launch` worker; stop it when every operation has ended.
    ``op_ids``: a list, or a callable giving the list (operations queued by operations)."""
    svc = DelegatedOperationService()
    cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    worker = subprocess.Popen(
        [cli, "delegated", "launch"],
        env=_worker_env(plugins_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            ids = op_ids() if callable(op_ids) else op_ids
            states = [svc.get(i).run_state for i in ids]
            if ids and all(s in ExecutionRunState.TERMINAL_STATES for s in states):
                break
            time.sleep(1)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        out = worker.communicate(timeout=60)[0].decode(errors="replace")
    return out


@pytest.mark.slow
def test_two_runs_scheduled_back_to_back_land_in_two_fields(
    make_dataset, tiny_config, plugins_dir
) -> None:
    ds = make_dataset(2, persistent=True)
    params = _params(tiny_config)
    first, op1 = _schedule_like_the_app(ds, params)
    second, op2 = _schedule_like_the_app(ds, params)
    assert (first, second) == ("cliprnn", "cliprnn_2")  # the queued run's field is taken already
    assert set(reserved_fields(ds)) == {"cliprnn", "cliprnn_2"}
    assert [r["field"] for r in scheduled_runs(ds)] == ["cliprnn", "cliprnn_2"]
    svc = DelegatedOperationService()
    assert svc.get(op1).label == "Segment into 'cliprnn'"
    # the form names the reserved fields' runs and refuses them
    props = _form(ds, {**params, "label_field": "cliprnn"})
    assert props["label_field_error"].invalid
    assert "reserved by a run scheduled" in props["label_field_error"].error_message
    listed = props["scheduled_runs"].default  # (another test's worker may have started one)
    assert "- 'cliprnn' " in listed and "- 'cliprnn_2' " in listed
    # a run scheduled into a reserved field is refused when it is scheduled, not on the worker
    with pytest.raises(Exception, match="reserved"):
        foo.execute_operator(URI, dict(dataset=ds, params={**params, "label_field": "cliprnn_2"}),
                             request_delegation=True)  # fmt: skip
    assert svc.count(filters={"operator": URI, "dataset_id": ds._doc.id}) == 2  # none queued

    out = _run_worker_until_done(plugins_dir, [op1, op2])
    for op in (op1, op2):
        doc = svc.get(op)
        assert doc.run_state == ExecutionRunState.COMPLETED, (doc.result, out[-3000:])
    ds.reload()
    for field in ("cliprnn", "cliprnn_2"):
        assert ds.count(field) == 2 and ds.count(f"{field}_det") == 2
        assert ds.mask_targets[field] == {1: "red circle", 2: "blue square"}
        report = check_field(ds, field)
        assert report.ok and report.checked == 2, report.summary()
    assert reserved_fields(ds) == {} and scheduled_runs(ds) == []
    # the next form offers the next free name
    assert _form(ds, params)["label_field"].default == "cliprnn_3"

    # the App opens the dataset: one notification for both runs, their fields shown
    result = foo.execute_operator(ANNOUNCE, dict(dataset=ds))
    ended = {e["field"]: e for e in result.result["ended"]}  # in the order they finished
    assert sorted(ended) == ["cliprnn", "cliprnn_2"] and all(e["ok"] for e in ended.values())
    assert ended["cliprnn"]["message"] == (
        "Segmented 2 samples into 'cliprnn'; edit 'cliprnn_det' in the Annotate tab"
    )
    requests = {r.operator_uri: r.params for r in result.executor._requests}
    assert requests["notify"]["variant"] == "success"
    assert "Scheduled run into 'cliprnn_2' finished" in requests["notify"]["message"]
    assert sorted(requests["set_active_fields"]["fields"]) == [
        "cliprnn", "cliprnn_2", "cliprnn_2_det", "cliprnn_det"
    ]  # fmt: skip
    colours = {f["path"] for f in requests["set_color_scheme"]["fields"]}
    assert {"cliprnn", "cliprnn_det", "cliprnn_2", "cliprnn_2_det"} <= colours
    assert "refresh_colors" in requests
    # announced once: the next dataset open says nothing
    again = foo.execute_operator(ANNOUNCE, dict(dataset=ds))
    assert again.result["ended"] == [] and not again.executor._requests


@pytest.mark.slow
def test_a_scheduled_run_that_fails_on_the_worker_is_announced_and_frees_its_field(
    make_dataset, tiny_config, plugins_dir
) -> None:
    ds = make_dataset(1, persistent=True)
    params = _params(tiny_config)
    field, op = _schedule_like_the_app(ds, params)
    # the images disappear after scheduling: the run fails on the worker
    ds.set_values("filepath", ["/nonexistent/cliprnn/gone.png"])
    out = _run_worker_until_done(plugins_dir, [op])
    assert DelegatedOperationService().get(op).run_state == ExecutionRunState.FAILED, out[-3000:]
    assert reserved_fields(ds) == {}
    result = foo.execute_operator(ANNOUNCE, dict(dataset=ds))
    (ended,) = result.result["ended"]
    assert ended["field"] == field and not ended["ok"]
    assert "gone.png" in ended["message"]
    requests = {r.operator_uri: r.params for r in result.executor._requests}
    assert requests["notify"]["variant"] == "error"
    assert f"Scheduled run into '{field}' failed" in requests["notify"]["message"]
    assert "set_active_fields" not in requests


@pytest.mark.slow
def test_a_scheduled_sharded_run_reserves_its_field_until_its_jobs_hold_it(
    make_dataset, tiny_config, plugins_dir
) -> None:
    ds = make_dataset(2, persistent=True)
    params = _params(tiny_config, shards=2)
    field, op = _schedule_like_the_app(ds, params)
    assert (
        field == "cliprnn" and _form(ds, _params(tiny_config))["label_field"].default == "cliprnn_2"
    )
    svc = DelegatedOperationService()

    def ops() -> list:  # the planning job, then the two jobs it queues
        jobs = svc.list_operations(operator="@cliprnn/clip-as-rnn/segment_shard",
                                   dataset_name=ds.name)  # fmt: skip
        return [op, *(j.id for j in jobs)] if len(jobs) == 2 else []

    out = _run_worker_until_done(plugins_dir, ops)
    states = [svc.get(i).run_state for i in ops()]
    assert states == [ExecutionRunState.COMPLETED] * 3, out[-3000:]
    ds.reload()
    assert ds.count("cliprnn") == 2 and check_field(ds, "cliprnn").ok
    result = foo.execute_operator(ANNOUNCE, dict(dataset=ds))
    (ended,) = result.result["ended"]
    assert ended["ok"] and ended["planned"]
    requests = {r.operator_uri: r.params for r in result.executor._requests}
    assert (
        "Scheduled run into 'cliprnn' was split into jobs: Planned 'cliprnn' as 2 jobs"
        in (requests["notify"]["message"])
    )


def test_a_reservation_whose_operation_is_gone_frees_the_field(
    make_dataset, tiny_config, monkeypatch
) -> None:
    ds = make_dataset(1, persistent=True)
    params = _params(tiny_config)
    field, op = _schedule_like_the_app(ds, params)
    assert field == "cliprnn" and _form(ds, params)["label_field"].default == "cliprnn_2"
    # opening the dataset meanwhile says the run is still going
    result = foo.execute_operator(ANNOUNCE, dict(dataset=ds))
    assert result.result == {"ended": [], "pending": ["cliprnn"]}
    notes = [r.params for r in result.executor._requests if r.operator_uri == "notify"]
    assert notes == [{"message": "Still going: 'cliprnn' queued", "variant": "info"}]
    DelegatedOperationService().delete_operation(op)  # `fiftyone delegated delete`
    assert reserved_fields(ds) == {
        "cliprnn": reserved_fields(ds)["cliprnn"]
    }  # may be queueing still
    monkeypatch.setattr(scheduled, "QUEUE_GRACE", dt.timedelta(0))  # ... 30 s later
    assert reserved_fields(ds) == {}
    assert _form(ds, params)["label_field"].default == "cliprnn"
    result = foo.execute_operator(ANNOUNCE, dict(dataset=ds))
    (ended,) = result.result["ended"]
    assert ended == dict(
        field="cliprnn", ok=False, message="its operation was deleted before it ran", planned=False
    )
    # the name can be scheduled again
    again, op2 = _schedule_like_the_app(ds, params)
    assert again == "cliprnn"
    params_of_op = DelegatedOperationService().get(op2).context.request_params["params"]
    assert params_of_op[TOKEN_PARAM]
