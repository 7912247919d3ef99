"""A run killed half way keeps its finished batches; skip_existing completes it, and the result
equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cliprnn.fiftyone import segment_collection

pytestmark = [pytest.mark.fiftyone, pytest.mark.slow]

QUERIES = ["red circle", "blue square", "green triangle"]
REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs two batches of two samples, reports each, then waits to be killed.
_WORKER = """
import sys, time
import fiftyone as fo
from cliprnn import CaRConfig
from cliprnn.fiftyone import SegmentationRun

ds = fo.load_dataset(sys.argv[1])
cfg = CaRConfig.preset("voc", proposal_model=sys.argv[2], classifier_model=sys.argv[2],
                       crf=True, device="cpu", max_image_side=64,
                       min_region_pixels=0)  # as tiny_config
run = SegmentationRun(ds, sys.argv[3].split("|"), label_field="car", config=cfg, batch_size=2)
for p in run:
    print(p.done, flush=True)
    if p.done >= 4:
        time.sleep(120)
"""


def test_killed_run_resumes_to_the_uninterrupted_result(
    make_dataset, tiny_config, tiny_clip_dir
) -> None:
    ds = make_dataset(6, persistent=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, ds.name, str(tiny_clip_dir), "|".join(QUERIES)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        seen = [proc.stdout.readline().strip() for _ in range(2)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert seen == ["2", "4"]
    ds.reload()
    assert ds.count("car") == 4

    summary = segment_collection(
        ds, QUERIES, label_field="car", config=tiny_config, skip_existing=True, progress=False
    )
    assert (summary.processed, summary.skipped) == (2, 4)
    segment_collection(ds, QUERIES, label_field="ref", config=tiny_config, progress=False)
    for sample in ds:
        np.testing.assert_array_equal(sample["car"].mask, sample["ref"].mask)
