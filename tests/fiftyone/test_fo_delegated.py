"""Delegated execution: queue a segment run from the SDK, run it with `fiftyone delegated
launch`, and check the field and the recorded progress."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState

pytestmark = [pytest.mark.fiftyone, pytest.mark.slow]

URI = "@cliprnn/clip-as-rnn/segment"


def test_delegated_segment_runs_in_a_worker(make_dataset, tiny_config, plugins_dir) -> None:
    ds = make_dataset(3, persistent=True)
    result = foo.get_operator(URI)(
        ds,
        queries=["red circle", "blue square"],
        label_field="car",
        delegate=True,
        proposal_model=tiny_config.proposal_model,
        classifier_model=tiny_config.classifier_model,
        device="cpu",
    )
    assert result.delegated
    op_id = result.result["id"]
    svc = DelegatedOperationService()
    assert svc.get(op_id).run_state == ExecutionRunState.QUEUED
    assert "car" not in ds.get_field_schema()

    repo = str(Path(__file__).resolve().parents[2])  # cliprnn importable without an install
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": str(plugins_dir), "PYTHONPATH": path}
    cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    worker = subprocess.Popen(
        [cli, "delegated", "launch"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            state = svc.get(op_id).run_state
            if state in (ExecutionRunState.COMPLETED, ExecutionRunState.FAILED):
                break
            time.sleep(1)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        out = worker.communicate(timeout=60)[0].decode(errors="replace")
    doc = svc.get(op_id)
    assert doc.run_state == ExecutionRunState.COMPLETED, (doc.status, out[-3000:])
    ds.reload()
    assert ds.count("car") == 3
    assert ds.mask_targets["car"] == {1: "red circle", 2: "blue square"}
    assert doc.status is not None and doc.status.progress == pytest.approx(1.0)
    assert doc.status.label == "Segmented 3/3 samples"
