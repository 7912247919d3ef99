"""`make demo` end to end on a small scale: dataset, the segment operator, the evaluation."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import fiftyone as fo
import pytest

pytestmark = pytest.mark.fiftyone

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def test_demo_builds_segments_and_evaluates(tiny_clip_dir, capsys) -> None:
    spec = importlib.util.spec_from_file_location("cliprnn_demo_script", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    args = ["--samples", "2", "--size", "48", "--preset", "voc", "--model", str(tiny_clip_dir)]
    try:
        assert demo.main(args) == 0
        out = capsys.readouterr().out
        assert "Segmented 2 images" in out and "(failed: 0)" in out
        assert re.search(r"mIoU \d\.\d{3}", out) and "make app" in out
        ds = fo.load_dataset(demo.DATASET)
        assert ds.persistent and ds.count("cliprnn") == 2 and ds.has_evaluation("eval_cliprnn")
        assert ds.mask_targets["cliprnn"] == ds.mask_targets["ground_truth"]  # values line up
        assert ds.load_evaluation_results("eval_cliprnn").classes[0] == "background"
    finally:
        if fo.dataset_exists(demo.DATASET):
            fo.delete_dataset(demo.DATASET)
