"""Sharded runs: one run of one field split into K delegated jobs, run by several workers,
resumed after a worker dies, and equal sample by sample to a single uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionResult, ExecutionRunState

from cliprnn.errors import CaRError, ConfigError
from cliprnn.fiftyone import (
    FieldLockedError,
    SegmentationRun,
    cancel_run,
    queue_sharded_run,
    resume_run,
    run_info,
    run_status,
    segment_collection,
)
from cliprnn.fiftyone import runs as R
from cliprnn.fiftyone.lock import lock_holder
from cliprnn.fiftyone.shards import run_shard, split

pytestmark = [pytest.mark.fiftyone]

QUERIES = ["red circle", "blue square", "green triangle"]
OUTPUTS = ["segmentation", "detections"]
SEGMENT = "@cliprnn/clip-as-rnn/segment"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The library's install hint, as the plugin's forms and failed jobs show it.
INSTALL_HINT = "The cliprnn package is not installed"


@pytest.fixture
def dataset_of(make_dataset, scene_files):
    """Factory: a persistent dataset of ``n`` samples cycling through the six scenes."""

    def make(n: int):
        files = [scene_files[i % len(scene_files)] for i in range(n)]
        return make_dataset(persistent=True, files=files)

    return make


def _ops(plan_or_status) -> list[str]:
    return list(plan_or_status["operations"])


def assert_same_labels(ds: fo.Dataset, field: str, ref: str) -> None:
    """Masks of ``field`` equal those of ``ref`` on every sample, and so do the instances."""
    for sample in ds.select_fields([field, f"{field}_det", ref, f"{ref}_det"]):
        assert sample[field] is not None, sample.id
        np.testing.assert_array_equal(sample[field].mask, sample[ref].mask)
        got, want = sample[f"{field}_det"].detections, sample[f"{ref}_det"].detections
        assert [d.label for d in got] == [d.label for d in want]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a.mask, b.mask)
            assert a.confidence == pytest.approx(b.confidence)


def test_split_is_contiguous_balanced_and_disjoint() -> None:
    ids = [str(i) for i in range(10)]
    parts = split(ids, 4)
    assert [len(p) for p in parts] == [2, 3, 2, 3]
    assert [x for p in parts for x in p] == ids
    assert split(ids, 1) == [ids]


def test_the_planned_config_comes_back_on_a_worker() -> None:
    from cliprnn.config import CaRConfig
    from cliprnn.fiftyone.collection import config_from_dict

    for preset in ("voc", "fast", "mini"):
        config = CaRConfig.preset(preset, visual_prompts=("circle", "blur"))
        assert config_from_dict(config.to_dict()) == config
    # the bundled model planned from another install's folder is this install's copy
    mini = CaRConfig.preset("mini")
    data = mini.to_dict()
    for role in ("proposal", "classifier"):
        data[f"{role}_model"] = f"/other/site-packages/cliprnn/assets/mini_clip/{role}"
    assert config_from_dict(data) == mini


def test_planned_shards_run_anywhere_and_equal_a_single_run(dataset_of, tiny_config) -> None:
    ds = dataset_of(6)
    plan = queue_sharded_run(
        ds, 3, queue=False, queries=QUERIES, label_field="car", config=tiny_config,
        outputs=OUTPUTS, batch_size=1,
    )  # fmt: skip
    assert (plan.shards, plan.samples, plan.sizes) == (3, 6, [2, 2, 2])
    assert plan.operations == []

    # Fixed once, before any shard: mask targets, fields, schema, label schema, run record.
    ds.reload()
    targets = {1: "red circle", 2: "blue square", 3: "green triangle"}
    assert ds.mask_targets["car"] == targets
    schema = ds.get_field_schema()
    assert {"car", "car_det"} <= set(schema)
    assert "car_det" in ds.active_label_schemas
    assert run_info(ds, "car")["sharded"] == dict(run_id=plan.run_id, shards=3)
    assert ds.count("car") == 0
    holder = lock_holder(str(ds._doc.id), "car")
    assert holder["run"] == plan.run_id

    # Another run of the field (another configuration) is refused, naming the run...
    with pytest.raises(FieldLockedError, match=f"sharded run '{plan.run_id}'"):
        segment_collection(ds, ["cat"], label_field="car", config=tiny_config, overwrite=True)
    with pytest.raises(FieldLockedError, match=plan.run_id):
        queue_sharded_run(ds, 2, queue=False, queries=["cat"], label_field="car",
                          config=tiny_config, overwrite=True)  # fmt: skip
    # ...while a plain run of another field proceeds, interleaved with the shards.
    plain = iter(
        SegmentationRun(ds, QUERIES, label_field="ref", config=tiny_config, outputs=OUTPUTS,
                        batch_size=2)
    )  # fmt: skip
    assert next(plain).done == 2  # holds the lock of 'ref' now

    # Shards never write mask_targets nor the schema: forbid both while they run.
    saved = {"n": 0}
    orig_save = fo.Dataset.save

    def counting_save(self, *a, **k):
        saved["n"] += 1
        return orig_save(self, *a, **k)

    fo.Dataset.save = counting_save
    try:
        out = run_shard(ds, plan.run_id, 2)
        assert out["state"] == "completed" and out["processed"] == 2
        assert next(plain).done == 4
        run_shard(ds, plan.run_id, 0)
    finally:
        fo.Dataset.save = orig_save
    assert saved["n"] == 0
    assert list(plain) and ds.count("ref") == 6

    status = run_status(ds, "car")
    assert [s["state"] for s in status["shards"]] == ["completed", "queued", "completed"]
    assert not status["complete"]
    out = run_shard(ds, plan.run_id, 1)
    assert out["run_complete"]
    again = run_shard(ds, plan.run_id, 1)  # a second time: nothing
    assert again["state"] == "skipped" and "the run is complete" in again["message"]

    ds.reload()
    assert ds.mask_targets["car"] == targets
    assert ds.count("car") == 6
    assert_same_labels(ds, "car", "ref")
    status = run_status(ds, "car")
    assert status["complete"] and status["written"] == 6
    results = ds.load_run_results("cliprnn_car")
    assert results.complete and results.processed == 6
    assert [s["state"] for s in results.shards] == ["completed"] * 3
    assert lock_holder(str(ds._doc.id), "car") is None  # released by the last shard
    segment_collection(ds, ["cat"], label_field="car", config=tiny_config, overwrite=True)


def test_resume_requeues_exactly_the_unfinished_shards(dataset_of, tiny_config) -> None:
    ds = dataset_of(6)
    svc = DelegatedOperationService()
    plan = queue_sharded_run(
        ds, 3, queries=QUERIES, label_field="car", config=tiny_config, outputs=OUTPUTS,
        batch_size=1,
    )  # fmt: skip
    ops = plan.operations
    assert len(ops) == 3
    assert all(svc.get(ObjectId(o)).run_state == ExecutionRunState.QUEUED for o in ops)
    assert "job 1/3" in svc.get(ObjectId(ops[0])).label

    run_shard(ds, plan.run_id, 0, op_id=ops[0])  # as its worker would

    # Shard 1 dies after its first sample: its process is gone, its operation RUNNING.
    def crash(p):
        if p.done >= 1:
            raise KeyboardInterrupt("worker killed")

    svc.set_running(ObjectId(ops[1]))
    with pytest.raises(KeyboardInterrupt):
        run_shard(ds, plan.run_id, 1, op_id=ops[1], progress=crash)
    dead = subprocess.Popen(["true"])
    dead.wait()
    R._db()[R.SHARDS].update_one(
        {"_id": R.shard_key(plan.run_id, 1)}, {"$set": dict(state="running", pid=dead.pid)}
    )
    status = run_status(ds, "car")
    assert [s["state"] for s in status["shards"]] == ["completed", "dead", "queued"]
    assert status["shards"][1]["written"] == 1 and status["resumable"] == [1]

    out = resume_run(ds, "car")
    assert out["requeued"] == [1] and out["queued"] == [2] and out["completed"] == [0]
    assert "re-queued job 2" in out["message"]
    assert svc.get(ObjectId(ops[1])).run_state == ExecutionRunState.FAILED
    (new_op,) = out["operations"]
    assert run_shard(ds, plan.run_id, 1, op_id=ops[1])["state"] == "superseded"
    resumed = run_shard(ds, plan.run_id, 1, op_id=new_op)
    assert (resumed["start"], resumed["processed"]) == (1, 1)  # skips what it wrote
    assert resume_run(ds, "car")["requeued"] == []  # nothing else is unfinished
    assert run_shard(ds, plan.run_id, 2, op_id=ops[2])["run_complete"]

    segment_collection(ds, QUERIES, label_field="ref", config=tiny_config, outputs=OUTPUTS)
    assert_same_labels(ds, "car", "ref")
    results = ds.load_run_results("cliprnn_car")
    assert results.processed == 6 and [s["attempts"] for s in results.shards] == [1, 2, 1]
    with pytest.raises(CaRError, match="is complete; nothing to resume"):
        resume_run(ds, "car")


def test_cancel_frees_the_field_and_stops_queued_jobs(dataset_of, tiny_config) -> None:
    ds = dataset_of(4)
    plan = queue_sharded_run(ds, 2, queries=QUERIES, label_field="car", config=tiny_config)
    out = cancel_run(ds, "car")
    assert plan.run_id in out["message"]
    svc = DelegatedOperationService()
    assert all(svc.get(ObjectId(o)).run_state == ExecutionRunState.FAILED for o in plan.operations)
    assert run_shard(ds, plan.run_id, 0, op_id=plan.operations[0])["state"] == "skipped"
    assert ds.count("car") == 0
    assert lock_holder(str(ds._doc.id), "car") is None
    segment_collection(ds, QUERIES, label_field="car", config=tiny_config, skip_existing=True)


def test_bad_shard_counts_and_immediate_runs(dataset_of, tiny_config) -> None:
    ds = dataset_of(3)
    kw = dict(queries=QUERIES, label_field="car", config=tiny_config)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="shards must be an integer >= 1"):
            queue_sharded_run(ds, bad, queue=False, **kw)
    assert "car" not in ds.get_field_schema()

    seg = foo.get_operator(SEGMENT)
    advanced = dict(
        proposal_model=tiny_config.proposal_model,
        classifier_model=tiny_config.classifier_model,
        device="cpu",
    )
    with pytest.raises(ConfigError, match="shards must be"):
        seg(ds, queries=QUERIES, shards=0, delegate=True, **advanced)
    with pytest.raises(ConfigError, match="pass delegate=True"):
        seg(ds, queries=QUERIES, shards=2, **advanced)
    assert "car" not in ds.get_field_schema()

    # More jobs than samples: one per sample, and it says so.
    res = seg(ds, queries=QUERIES, label_field="car", shards=10, delegate=True, **advanced)
    assert res.delegated
    plan = res.result
    assert plan["shards"] == 3 and plan["requested"] == 10 and len(plan["operations"]) == 3
    assert "asked for 10, but there are only 3 samples" in plan["message"]
    cancel_run(ds, "car")

    # Sharding an immediate run (the App's Execute): one job, and the notification says so.
    result = foo.execute_operator(
        SEGMENT,
        dict(dataset=ds),
        params=dict(queries=QUERIES, label_field="one", shards=2, advanced=True, **advanced),
    )
    notes = [r.params.get("message", "") for r in result.executor._requests if r.params is not None]
    assert any("as one job: 'Split into 2 jobs' applies to scheduled runs" in n for n in notes)
    assert ds.count("one") == 3 and "sharded" not in run_info(ds, "one")


def test_forms_offer_shards_refuse_a_held_field_and_resume(dataset_of, tiny_config) -> None:
    from fiftyone.operators.executor import ExecutionContext

    ds = dataset_of(3)

    def form(uri: str, params: dict) -> dict:
        req = dict(dataset_name=ds.name, params=params)
        return foo.get_operator(uri).resolve_input(ExecutionContext(request_params=req))

    props = form(SEGMENT, dict(queries=["cat"], label_field="car")).type.properties
    assert props["shards"].view.label == "Split into K jobs" and props["shards"].default == 1
    assert "sharded_run_error" not in props
    resume = "@cliprnn/clip-as-rnn/resume_run"
    assert "no_runs" in form(resume, {}).type.properties

    plan = queue_sharded_run(ds, 2, queue=False, queries=QUERIES, label_field="car",
                             config=tiny_config)  # fmt: skip
    props = form(SEGMENT, dict(queries=["cat"], label_field="car", overwrite=True)).type.properties
    assert plan.run_id in props["sharded_run_error"].view.label
    props = form(resume, {}).type.properties
    assert props["label_field"].default == "car"
    assert "job 2: queued, 0/2 written" in props["status"].view.label
    cancelled = foo.get_operator(resume)(ds, "car", cancel=True)
    assert plan.run_id in cancelled["message"]
    assert "no_runs" in form(resume, {}).type.properties


# --- real workers: `fiftyone delegated launch` processes sharing the test database ---


class Worker:
    """A `fiftyone delegated launch` process; its output is collected on a thread."""

    def __init__(self, plugins_dir: Path, extra_path: str | None = None) -> None:
        path = [p for p in (extra_path, str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p]
        env = {
            **os.environ,
            "FIFTYONE_PLUGINS_DIR": str(plugins_dir),
            "PYTHONPATH": os.pathsep.join(path),
            "OMP_NUM_THREADS": "1",
        }
        cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
        self.proc = subprocess.Popen(
            [cli, "delegated", "launch"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if "Delegated operation service running" in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 120) -> None:
        assert self.ready.wait(timeout), "\n".join(self.lines[-50:])

    def kill(self) -> None:
        os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(timeout=10)

    @property
    def output(self) -> str:
        return "\n".join(self.lines[-80:])


@pytest.fixture
def workers(plugins_dir):
    started: list[Worker] = []

    def start(n: int = 1, extra_path: str | None = None) -> list[Worker]:
        new = [Worker(plugins_dir, extra_path) for _ in range(n)]
        started.extend(new)
        for w in new:
            w.wait_ready()
        return new

    yield start
    for w in started:
        w.stop()


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2, log=lambda: ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")


def _reference_run(ds: fo.Dataset, tiny_config) -> None:
    """One uninterrupted run into ``ref`` with the settings the worker tests queue."""
    segment_collection(
        ds, QUERIES, label_field="ref", outputs=OUTPUTS, progress=False,
        config=dict(preset="voc", proposal_model=tiny_config.proposal_model,
                    classifier_model=tiny_config.classifier_model, device="cpu", crf=True),
    )  # fmt: skip


def _op_states(ops: list[str]) -> list[str]:
    svc = DelegatedOperationService()
    return [svc.get(ObjectId(o)).run_state for o in ops]


def _ended(ops: list[str]) -> bool:
    done = (ExecutionRunState.COMPLETED, ExecutionRunState.FAILED)
    return all(s in done for s in _op_states(ops))


@pytest.mark.slow
def test_scheduled_sharded_run_on_two_workers(dataset_of, tiny_config, workers) -> None:
    """The App's path: one scheduled `segment` with "Split into 4 jobs"; a worker plans it and
    queues 4 jobs; two workers run them."""
    ds = dataset_of(8)
    a, b = workers(2)
    params = dict(
        queries=QUERIES, label_field="car", shards=4, batch_size=1, advanced=True,
        proposal_model=tiny_config.proposal_model, classifier_model=tiny_config.classifier_model,
        device="cpu", crf=True,
    )  # fmt: skip
    queued = foo.execute_operator(SEGMENT, dict(dataset=ds), params=params, request_delegation=True)
    assert queued.delegated
    logs = lambda: a.output + "\n----\n" + b.output  # noqa: E731

    def queued_jobs():  # the plan exists and each of its jobs has its operation
        status = run_status(ds, "car")
        return status if status and all(s["operation"] for s in status["shards"]) else None

    status = wait_for(queued_jobs, 120, "the plan", log=logs)
    ops = [s["operation"] for s in status["shards"]]
    assert len(ops) == 4
    wait_for(lambda: _ended(ops), 300, "the 4 jobs", log=logs)
    assert _op_states(ops) == [ExecutionRunState.COMPLETED] * 4, logs()
    assert _op_states([queued.result["id"]]) == [ExecutionRunState.COMPLETED]

    # the reference: one uninterrupted run with the same settings
    _reference_run(ds, tiny_config)
    ds.reload()
    assert ds.count("car") == 8
    assert_same_labels(ds, "car", "ref")
    status = run_status(ds, "car")
    assert status["complete"], status
    assert [s["processed"] for s in status["shards"]] == [2, 2, 2, 2]  # each sample once
    assert all(s["attempts"] == 1 for s in status["shards"])
    assert {s["pid"] for s in status["shards"]} == {a.pid, b.pid}  # both workers ran jobs
    results = ds.load_run_results("cliprnn_car")
    assert results.complete and results.processed == 8
    assert lock_holder(str(ds._doc.id), "car") is None


@pytest.mark.slow
def test_killed_worker_is_resumed_to_the_uninterrupted_result(
    dataset_of, tiny_config, workers
) -> None:
    ds = dataset_of(12)
    svc = DelegatedOperationService()
    seg = foo.get_operator(SEGMENT)
    a, b = workers(2)
    res = seg(
        ds, queries=QUERIES, label_field="car", shards=2, batch_size=1, delegate=True,
        proposal_model=tiny_config.proposal_model, classifier_model=tiny_config.classifier_model,
        device="cpu", crf=True,
    )  # fmt: skip
    run_id, ops = res.result["run_id"], res.result["operations"]
    logs = lambda: a.output + "\n----\n" + b.output  # noqa: E731

    def mid_shard():
        for d in R.shard_docs(run_id):
            if d["state"] == "running" and 1 <= d["cursor"] < d["size"]:
                return d
        return None

    doc = wait_for(mid_shard, 180, "a job half way", poll=0.02, log=logs)
    victim = a if doc["pid"] == a.pid else b
    survivor = b if victim is a else a
    victim.kill()
    killed = doc["index"]
    at_kill = next(d for d in R.shard_docs(run_id) if d["index"] == killed)["cursor"]
    assert 1 <= at_kill < 6
    other = 1 - killed
    wait_for(lambda: _ended([ops[other]]), 180, "the other job", log=logs)
    assert svc.get(ObjectId(ops[killed])).run_state == ExecutionRunState.RUNNING  # stuck
    # what `fiftyone delegated fail <id>` does
    svc.set_failed(ObjectId(ops[killed]), result=ExecutionResult(error="marked as failed"))
    assert run_status(ds, "car")["resumable"] == [killed]

    out = foo.get_operator("@cliprnn/clip-as-rnn/resume_run")(ds, "car")
    assert out["requeued"] == [killed] and out["completed"] == [other]
    wait_for(lambda: _ended(out["operations"]), 180, "the resumed job", log=logs)
    assert _op_states(out["operations"]) == [ExecutionRunState.COMPLETED], survivor.output

    _reference_run(ds, tiny_config)
    ds.reload()
    assert_same_labels(ds, "car", "ref")
    status = run_status(ds, "car")
    assert status["complete"]
    shard = status["shards"][killed]
    assert shard["attempts"] == 2 and shard["pid"] == survivor.pid
    assert shard["processed"] == 6  # the samples written before the kill are not counted twice
    attempts = R.shard_docs(run_id)[killed]["attempts"]
    assert attempts[1]["start"] >= at_kill  # the resumed job skipped what was written


@pytest.mark.slow
def test_worker_without_the_library_fails_its_jobs_with_the_hint(
    dataset_of, tiny_config, workers, tmp_path
) -> None:
    fake = tmp_path / "no-cliprnn" / "cliprnn"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    (w,) = workers(1, extra_path=str(fake.parent))
    plan = queue_sharded_run(ds := dataset_of(4), 2, queries=QUERIES, label_field="car",
                             config=tiny_config)  # fmt: skip
    wait_for(lambda: _ended(plan.operations), 120, "the jobs", log=lambda: w.output)
    svc = DelegatedOperationService()
    for op in plan.operations:
        doc = svc.get(ObjectId(op))
        assert doc.run_state == ExecutionRunState.FAILED
        error = doc.result.error if hasattr(doc.result, "error") else doc.result["error"]
        assert INSTALL_HINT in error and "plugins requirements" in error
    ds.reload()
    assert ds.count("car") == 0  # nothing written
    status = run_status(ds, "car")
    assert status["resumable"] == [0, 1]
    assert all(INSTALL_HINT in s["note"] for s in status["shards"])
    cancel_run(ds, "car")
