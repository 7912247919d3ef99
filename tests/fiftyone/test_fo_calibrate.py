"""Calibration on a real FiftyOne database with the bundled miniature CLIPs: a calibration of
labelled generated scenes is stored on the dataset, read back in a fresh process, offered by
the segment form and used by segment runs (the same masks as its configuration given by
hand); the ``calibrate`` operator's form, run and output; clear errors for samples without
ground truth, queries that name no ground-truth class and masks their targets do not name."""

from __future__ import annotations

import uuid
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionContext
from fresh_process import probe_json

from cliprnn.calibration import CalibrationError, SearchSpace
from cliprnn.config import CaRConfig
from cliprnn.fiftyone import run_info, segment_collection
from cliprnn.fiftyone.calibration import (
    calibrate_view,
    calibration_config,
    calibration_record,
    delete_calibration,
    list_calibrations,
    load_calibration,
)

pytestmark = pytest.mark.fiftyone

URI = "@cliprnn/clip-as-rnn"
CALIBRATE = f"{URI}/calibrate"
SEGMENT = f"{URI}/segment"
SEEDS = (5000, 5001, 5002, 5003)  # 9 classes; η = 0.3 segments them badly (the search gains)
SIZE = (128, 128)
#: The mini preset's own settings but η = 0.3, which segments these scenes badly: the search
#: over η alone (a small space, cheap) finds better.
BASE = {"preset": "mini", "mask_threshold": 0.3}


def _mini_shipped() -> bool:
    from cliprnn.assets import mini_model_paths

    return all((p / "config.json").is_file() for p in mini_model_paths())


needs_mini = pytest.mark.skipif(not _mini_shipped(), reason="the bundled mini CLIP is absent")


def labelled_scenes(folder: Path, seeds, size=SIZE, name: str = "cliprnn-calib") -> fo.Dataset:
    """A persistent dataset of generated scenes (PNG files) with their exact ground truth in
    ``ground_truth``, whose mask targets name only the classes present: value j + 1 is the
    j-th present class of :data:`cliprnn.dev.scenes.CLASSES`, 0 is the background."""
    from PIL import Image

    from cliprnn.dev.scenes import CLASSES, generate_scene

    folder.mkdir(parents=True, exist_ok=True)
    scenes = [generate_scene(seed, size=size) for seed in seeds]
    present = sorted({i for s in scenes for i in s.present})
    remap = np.zeros(256, np.uint8)
    remap[[i + 1 for i in present]] = np.arange(1, len(present) + 1)
    samples = []
    for scene in scenes:
        path = folder / f"scene_{scene.seed}.png"
        Image.fromarray(scene.image).save(path)
        gt = fo.Segmentation(mask=remap[scene.label_map])
        samples.append(fo.Sample(filepath=str(path), ground_truth=gt))
    ds = fo.Dataset(f"{name}-{uuid.uuid4().hex[:8]}", persistent=True)
    ds.add_samples(samples)
    ds.mask_targets = {"ground_truth": {j + 1: CLASSES[i] for j, i in enumerate(present)}}
    ds.save()
    return ds


@pytest.fixture(scope="module")
def scenes(tmp_root: Path):
    ds = labelled_scenes(tmp_root / "calib-scenes", SEEDS)
    yield ds
    if fo.dataset_exists(ds.name):
        fo.delete_dataset(ds.name)


@pytest.fixture
def small(tmp_path: Path):
    """A fresh 3-scene dataset (48×64) for the errors; no model ever runs on it."""
    ds = labelled_scenes(tmp_path / "small", (5100, 5101, 5102), (48, 64), "cliprnn-calib-err")
    yield ds
    if fo.dataset_exists(ds.name):
        fo.delete_dataset(ds.name)


def _space() -> SearchSpace:
    """Only η varies (the mini preset's other values fixed): two candidates per search."""
    mini = CaRConfig.preset("mini")
    return SearchSpace(
        confidence_thresholds=(mini.confidence_threshold,),
        mask_thresholds=(0.3, 0.7),
        visual_prompt_sets=(mini.visual_prompts,),
        background_word_sets=(mini.background_words,),
        crf=(True,),
    )


@pytest.fixture(scope="module")
def calibrated(scenes):
    """The calibration ``shapes`` of :data:`BASE` on the four scenes, stored on ``scenes``."""
    if not _mini_shipped():
        pytest.skip("the bundled mini CLIP is absent")
    seen: list[tuple[float, str]] = []
    result = calibrate_view(
        scenes, "ground_truth", config=BASE, space=_space(), budget=4, folds=2, name="shapes",
        progress=lambda f, s: seen.append((f, s)),
    )  # fmt: skip
    return result, seen


def _masks(ds: fo.Dataset, field: str) -> dict[str, np.ndarray]:
    return dict(zip(ds.values("id"), [s.get_mask() for s in ds.values(field)], strict=True))


# -------------------------------------------------------------------- stored calibrations
_PROBE = """
import json, sys
import fiftyone as fo
from cliprnn.fiftyone.calibration import calibration_config, calibration_record, list_calibrations
ds = fo.load_dataset(sys.argv[1])
rec = calibration_record(ds, "shapes")
print(json.dumps({"names": list(list_calibrations(ds)), "config": calibration_config(ds, "shapes"),
                  "ids": rec["sample_ids"], "candidates": len(rec["result"]["candidates"])}))
"""


@pytest.mark.slow
@needs_mini
def test_a_calibration_is_stored_survives_a_restart_and_segments_as_its_config(
    scenes, calibrated
) -> None:
    result, seen = calibrated
    ids = scenes.values("id")
    # progress: from 0 to 1, in order
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert seen[-1][1] == "Stored the calibration 'shapes'"

    # what is stored: the summary (listed), the search record and the samples (results)
    info = list_calibrations(scenes)["shapes"]
    assert info["gt_field"] == "ground_truth" and info["samples"] == 4 and info["folds"] == 2
    assert info["queries"] == list(scenes.mask_targets["ground_truth"].values())
    assert info["score"] == pytest.approx(result.score)
    assert info["base_score"] == pytest.approx(result.base_score)
    assert info["gain"] == pytest.approx(result.gain) and info["kept_base"] == result.kept_base
    assert info["base"] == BASE
    record = calibration_record(scenes, "shapes")
    assert record["sample_ids"] == ids
    assert record["result"]["space"]["mask_thresholds"] == [0.3, 0.7]
    assert record["result"]["min_gain_se"] == result.min_gain_se == 1.0  # the default margin
    scores = {c["overrides"]["mask_threshold"]: c["miou"] for c in record["result"]["candidates"]}
    assert set(scores) == {0.3, 0.7}  # every candidate's score
    curve = load_calibration(scenes, "shapes").curve("mask_threshold")
    assert [v for v, _ in curve] == [0.3, 0.7] and [m for _, m in curve] == [
        scores[0.3],
        scores[0.7],
    ]
    # the FiftyOne run record (with the view it was computed on)
    key = "cliprnn_calibration_shapes"
    assert key in scenes.list_runs(method="cliprnn.calibrate")
    assert scenes.load_run_view(key).values("id") == ids

    # the configuration to segment with: the base mapping plus the chosen values
    config = calibration_config(scenes, "shapes")
    assert config == {**BASE, **result.overrides}
    by_hand = CaRConfig.preset("mini", **{"mask_threshold": 0.3, **result.overrides})
    assert CaRConfig.resolve(config) == by_hand == result.config
    assert not result.kept_base and result.overrides["mask_threshold"] != 0.3, result

    # a fresh process (a restart) reads the same calibration
    fo.load_dataset(scenes.name).reload()
    got = probe_json(_PROBE, scenes.name)
    assert got == {"names": ["shapes"], "config": config, "ids": ids,
                   "candidates": len(result.candidates)}  # fmt: skip

    # segmenting with it (operator, SDK name, mapping) gives the masks of the config by hand
    queries = list(scenes.mask_targets["ground_truth"].values())
    segment = foo.get_operator(SEGMENT)
    segment(scenes, queries=queries, preset="calibration:shapes", label_field="via_operator")
    segment_collection(scenes, queries, config="calibration:shapes", label_field="via_name",
                       progress=False)  # fmt: skip
    segment_collection(scenes, queries, config=by_hand, label_field="by_hand", progress=False)
    scenes.reload()
    expected = _masks(scenes, "by_hand")
    for field in ("via_operator", "via_name"):
        got_masks = _masks(scenes, field)
        for sid in ids:
            np.testing.assert_array_equal(got_masks[sid], expected[sid], err_msg=field)
    assert run_info(scenes, "via_operator")["calibration"] == "shapes"  # the run's record
    assert run_info(scenes, "by_hand")["calibration"] is None


@pytest.mark.slow
@needs_mini
def test_the_segment_form_offers_stored_calibrations_beside_the_presets(scenes, calibrated) -> None:
    props = _form(SEGMENT, scenes, {})
    values = [c.value for c in props["preset"].view.choices]
    assert values[-1] == "calibration:shapes" and "mini" in values
    label = {c.value: c.label for c in props["preset"].view.choices}["calibration:shapes"]
    assert label.startswith("Calibration 'shapes': ") and "of preset 'mini'" in label
    # its values fill the advanced settings; its models are checked like a preset's
    props = _form(SEGMENT, scenes, {"preset": "calibration:shapes", "advanced": True})
    assert props["mask_threshold"].default == calibration_config(scenes, "shapes").get(
        "mask_threshold", BASE["mask_threshold"]
    )
    assert not [k for k, p in props.items() if getattr(p, "invalid", False)]


# ------------------------------------------------------------------------------- errors
def test_samples_without_ground_truth_are_named(small) -> None:
    first = small.first()
    first.ground_truth = None
    first.save()
    with pytest.raises(CalibrationError) as e:
        calibrate_view(small, "ground_truth", config="mini", name="x")
    assert f"sample {first.id} ({first.filepath})" in str(e.value)
    assert "1 of the 3 samples have no ground truth in 'ground_truth'" in str(e.value)
    assert list_calibrations(small) == {}  # nothing stored, no model loaded


def test_queries_must_name_a_ground_truth_class(small) -> None:
    with pytest.raises(CalibrationError, match="none of the queries purple unicorn names a class"):
        calibrate_view(small, "ground_truth", ["purple unicorn"], config="mini")
    classes = list(small.mask_targets["ground_truth"].values())
    with pytest.raises(CalibrationError, match="none of the queries"):
        calibrate_view(small, "ground_truth", classes=["nothing"], config="mini")
    # case and spacing are ignored, as the scores match names
    from cliprnn.fiftyone.calibration import _queries, ground_truth_targets

    targets = ground_truth_targets(small, "ground_truth")
    chosen, extra = _queries(small, "ground_truth", targets, [classes[0].upper() + " "], None, None)
    assert chosen == [classes[0].upper()] and extra == classes[1:]


def test_mask_target_mismatches_are_named(small) -> None:
    targets = dict(small.mask_targets["ground_truth"])
    value = max(targets)
    small.mask_targets = {"ground_truth": {v: n for v, n in targets.items() if v != value}}
    small.save()
    holder = next(s for s in small if (s.ground_truth.mask == value).any())
    with pytest.raises(CalibrationError) as e:
        calibrate_view(small, "ground_truth", config="mini")
    assert f"sample {holder.id} ({holder.filepath})" in str(e.value)
    assert f"holds values [{value}] that the field's mask targets do not name" in str(e.value)
    small.mask_targets = {}
    small.save()
    with pytest.raises(CalibrationError, match="'ground_truth' has no mask targets"):
        calibrate_view(small, "ground_truth", config="mini")
    with pytest.raises(CalibrationError, match="not a Segmentation field"):
        calibrate_view(small, "filepath", config="mini")


def test_names_and_unknown_calibrations(small) -> None:
    with pytest.raises(CalibrationError, match="letters, digits or underscores"):
        calibrate_view(small, "ground_truth", config="mini", name="my calibration")
    with pytest.raises(CalibrationError, match="has no calibration 'nope'; its calibrations: none"):
        calibration_config(small, "nope")
    with pytest.raises(CalibrationError, match="has no calibration 'nope'"):
        delete_calibration(small, "nope")
    with pytest.raises(CalibrationError, match="has no calibration 'nope'"):
        segment_collection(small, ["red circle"], config="calibration:nope", progress=False)


# ------------------------------------------------------------------------------ operator
def _form(uri: str, coll, params: dict, selected: list[str] | None = None) -> dict:
    if selected:
        params = {"view_target": "SELECTED_SAMPLES", **params}
    view = coll.view() if isinstance(coll, fo.Dataset) else coll
    req = dict(dataset_name=view._root_dataset.name, view=view._serialize(), params=params,
               selected=selected or [])  # fmt: skip
    return foo.get_operator(uri).resolve_input(ExecutionContext(request_params=req)).type.properties


def _errors(props: dict) -> dict[str, str]:
    return {k: p.error_message for k, p in props.items() if getattr(p, "invalid", False)}


def test_the_calibrate_form(small) -> None:
    ids = small.values("id")
    classes = list(small.mask_targets["ground_truth"].values())
    props = _form(CALIBRATE, small, {"preset": "mini"}, ids[:2])
    assert [c.value for c in props["gt_field"].view.choices] == ["ground_truth"]
    assert props["classes"].default == classes
    assert props["name"].default == "calibration" and props["budget"].default == 150
    assert "Calibrates on the 2 selected samples, against 'ground_truth'" in (
        props["samples_notice"].view.label
    )
    assert "Stores the calibration 'calibration'" in props["writes"].view.label
    assert _errors(props) == {}
    assert "action" not in props  # nothing stored yet

    props = _form(CALIBRATE, small, {"preset": "mini", "classes": [], "query_text": "x"}, ids)
    assert "No query names a ground-truth class" in _errors(props)["queries_error"]
    props = _form(CALIBRATE, small, {"preset": "mini", "name": "a b"}, ids)
    assert "letters, digits or underscores" in _errors(props)["name_error"]
    props = _form(CALIBRATE, small, {"preset": "mini"}, ids[:1])
    assert "at least 2 labelled samples" in _errors(props)["count_error"]

    first = small.first()
    first.ground_truth = None
    first.save()
    props = _form(CALIBRATE, small, {"preset": "mini"}, ids)
    error = _errors(props)["unlabelled_error"]
    assert f"1 of the 3 samples have no ground truth in 'ground_truth': {first.id}" in error
    small.mask_targets = {}
    small.save()
    props = _form(CALIBRATE, small, {}, ids)
    assert "has no mask targets" in _errors(props)["gt_field_error"]


@pytest.mark.slow
@needs_mini
def test_the_operator_calibrates_the_selection_and_shows_curves_and_a_table(
    scenes, calibrated
) -> None:
    from operators.calibrate import calibration_output

    ids = scenes.values("id")
    classes = list(scenes.mask_targets["ground_truth"].values())
    params = dict(view_target="SELECTED_SAMPLES", gt_field="ground_truth", classes=classes[1:],
                  preset="mini", budget=2,
                  folds=2, name="picked")  # fmt: skip
    ctx = dict(dataset=scenes, selected=ids[:3], params=params)
    foo.execute_operator(CALIBRATE, ctx=ctx)
    record = calibration_record(scenes, "picked")
    assert record["sample_ids"] == ids[:3] and record["queries"] == classes[1:]
    assert record["extra_background"] == classes[:1]  # the unqueried class: a background word
    assert classes[0] in [w for ws in record["result"]["space"]["background_word_sets"]
                          for w in ws]  # fmt: skip
    assert record["base"] == {"preset": "mini"} and record["budget"] == 2

    outputs, results = calibration_output(record)
    props = outputs["type"]["properties"]
    plots = [k for k, p in props.items() if p["view"]["name"] == "PlotlyView"]
    knobs = ("confidence_threshold", "mask_threshold", "visual_prompts", "background_words", "crf")
    assert plots == [f"curve_{k}" for k in knobs]
    theta = props["curve_confidence_threshold"]["view"]
    assert theta["data"][0]["x"] == record["result"]["space"]["confidence_thresholds"]
    assert props["comparison"]["view"]["name"] == "TableView"
    rows = {r["setting"]: r for r in results["comparison"]}
    cv = rows["mIoU, cross-validated (%), 95 % interval"]
    assert cv["base"].startswith(f"{record['base_score']:.1f} [")
    assert cv["calibrated"].startswith(f"{record['score']:.1f} [")
    assert rows["Model passes"]["calibrated"].startswith(f"{record['passes_computed']} computed")
    assert results["summary"].startswith("Stored the calibration 'picked': ")

    # stored ones are listed, shown and deleted by the same operator
    props = _form(CALIBRATE, scenes, {})
    assert [c.value for c in props["action"].view.choices] == ["calibrate", "show", "delete"]
    assert "Calibration 'picked': " in props["stored_calibrations"].default
    props = _form(CALIBRATE, scenes, {"name": "picked"}, ids[:2])
    assert "'picked' exists: tick Replace" in _errors(props)["name_error"]
    for action in ("show", "delete"):
        params = dict(action=action, calibration="picked")
        foo.execute_operator(CALIBRATE, ctx=dict(dataset=scenes, params=params))
    assert "picked" not in list_calibrations(scenes) and "shapes" in list_calibrations(scenes)


@pytest.mark.slow
@needs_mini
def test_a_scheduled_calibration_runs_on_a_delegated_worker(scenes, calibrated) -> None:
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    ids = scenes.values("id")
    params = dict(view_target="SELECTED_SAMPLES", gt_field="ground_truth", preset="mini",
                  budget=1, folds=2, name="scheduled")  # fmt: skip
    ctx = dict(dataset=scenes, selected=ids[2:], params=params)
    queued = foo.execute_operator(CALIBRATE, ctx=ctx, request_delegation=True)
    assert queued.delegated and "scheduled" not in list_calibrations(scenes)
    svc = DelegatedOperationService()
    op_id = queued.result["id"]
    assert svc.get(op_id).run_state == ExecutionRunState.QUEUED
    svc.execute_queued_operations(operator=CALIBRATE, dataset_name=scenes.name)  # a worker
    doc = svc.get(op_id)
    assert doc.run_state == ExecutionRunState.COMPLETED, doc.status
    assert doc.status.progress == pytest.approx(1.0)
    assert doc.status.label == "Stored the calibration 'scheduled'"
    assert calibration_record(scenes, "scheduled")["sample_ids"] == ids[2:]
    delete_calibration(scenes, "scheduled")
