"""Integration: segment_collection, the operators and CaRModel on a real FiftyOne database,
running the real CaR pipeline on a tiny random CLIP."""

from __future__ import annotations

from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from PIL import Image

from cliprnn.errors import ConfigError, ModelLoadError, QueryError
from cliprnn.fiftyone import (
    CaRModel,
    FieldLockedError,
    SampleError,
    apply_mask_edits,
    edit_mask_classes,
    run_info,
    segment_collection,
)
from cliprnn.fiftyone.engine import get_car
from cliprnn.fiftyone.lock import FieldLock

pytestmark = pytest.mark.fiftyone

URI = "@cliprnn/clip-as-rnn"
QUERIES = ["red circle", "blue square", "green triangle"]


def _masks(ds: fo.Dataset, field: str) -> dict[str, np.ndarray]:
    return {s.id: s[field].get_mask() for s in ds.select_fields(field)}


def test_segment_collection_writes_uint8_masks_and_targets(make_dataset, tiny_config) -> None:
    ds = make_dataset(3)
    summary = segment_collection(ds, QUERIES, label_field="car", config=tiny_config, progress=False)
    assert summary.processed == 3 and summary.failed == 0
    assert ds.mask_targets["car"] == {1: "red circle", 2: "blue square", 3: "green triangle"}
    car = get_car(tiny_config)
    for sample in ds:
        seg = sample["car"]
        h, w = Image.open(sample.filepath).size[::-1]
        assert seg.mask.dtype == np.uint8 and seg.mask.shape == (h, w)
        direct = car.segment(sample.filepath, QUERIES)
        np.testing.assert_array_equal(seg.mask, direct.label_map)  # values 1..3 in query order
        assert seg.kept == direct.kept and seg.steps == direct.steps
        assert not seg.has_field("queries") and not seg.has_field("scores")  # short tooltips
        listed = sample["car_scores"].classifications
        assert [c.label for c in listed] == QUERIES
        assert [c.confidence for c in listed] == pytest.approx(direct.scores.tolist(), abs=1e-6)
        assert [c.kept for c in listed] == [q in direct.kept for q in QUERIES]
    info = run_info(ds, "car")
    assert info["method"] == "cliprnn.segment" and info["queries"] == QUERIES
    assert info["config"]["proposal_model"] == tiny_config.proposal_model
    assert ds.load_run_results("cliprnn_car").processed == 3


def test_detections_heatmaps_and_output_dir(make_dataset, tiny_config, tmp_path) -> None:
    ds = make_dataset(2)
    out = tmp_path / "out"
    segment_collection(
        ds,
        QUERIES,
        label_field="car",
        config=tiny_config,
        progress=False,
        outputs=["segmentation", "detections", "heatmaps"],
        output_dir=str(out),
    )
    assert {"car", "car_det"} <= set(ds.get_field_schema())
    heat_fields = [f for f in ds.get_field_schema() if f.startswith("car_heat_")]
    assert sorted(heat_fields) == [
        "car_heat_blue_square",
        "car_heat_green_triangle",
        "car_heat_red_circle",
    ]
    for sample in ds:
        seg = sample["car"]
        assert seg.mask is None and seg.mask_path == str(out / "car" / "masks" / f"{sample.id}.png")
        mask = seg.get_mask()
        scores = {c.label: c.confidence for c in sample["car_scores"].classifications}
        for det in sample["car_det"].detections:
            assert det.label in seg.kept
            assert det.confidence == pytest.approx(scores[det.label])
        assert {d.label for d in sample["car_det"].detections} == {
            QUERIES[v - 1] for v in np.unique(mask) if v
        }
        for q in QUERIES:
            heat = sample[f"car_heat_{q.replace(' ', '_')}"]
            if q in seg.kept:
                assert Path(heat.map_path).name == f"{sample.id}_{QUERIES.index(q) + 1}.png"
                assert heat.range == [0, 255] and heat.get_map().shape == mask.shape
            else:
                assert heat is None
    assert not list(out.rglob("*.part"))


def test_overwrite_refusal_and_skip_existing(make_dataset, tiny_config) -> None:
    ds = make_dataset(3)
    first = ds.take(1, seed=0)
    segment_collection(first, QUERIES, label_field="car", config=tiny_config, progress=False)
    with pytest.raises(ConfigError, match="already exists"):
        segment_collection(ds, QUERIES, label_field="car", config=tiny_config, progress=False)
    ds.set_values("other", ["keep"] * 3)
    before = _masks(ds.exists("car"), "car")
    summary = segment_collection(
        ds, QUERIES, label_field="car", config=tiny_config, skip_existing=True, progress=False
    )
    assert (summary.processed, summary.skipped) == (2, 1)
    assert ds.count("car") == 3 and ds.values("other") == ["keep"] * 3
    sid = first.first().id
    np.testing.assert_array_equal(ds[sid]["car"].mask, before[sid])


def test_skip_failures_records_errors_and_stops_otherwise(
    make_dataset, tiny_config, tmp_path, scene_files
) -> None:
    bad = tmp_path / "truncated.png"
    bad.write_bytes(scene_files[0].read_bytes()[:60])
    missing = tmp_path / "missing.png"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    files = [scene_files[0], bad, scene_files[1], missing, scene_files[2], empty, text]
    ds = make_dataset(files=files)
    ids = ds.values("id")
    s = segment_collection(
        ds,
        QUERIES,
        label_field="car",
        config=tiny_config,
        skip_failures=True,
        batch_size=2,
        progress=False,
    )
    assert (s.processed, s.failed) == (3, 4)
    errors = dict(zip(ids, ds.values("car_error"), strict=True))
    assert errors[ids[0]] is None and errors[ids[2]] is None and errors[ids[4]] is None
    for i, path, what in [(1, bad, "truncated"), (3, missing, "not found"), (5, empty, "empty"),
                          (6, text, "not an image")]:  # fmt: skip
        assert errors[ids[i]].startswith("ImageError") and str(path) in errors[ids[i]]
        assert what in errors[ids[i]], errors[ids[i]]
    # the user filters for them; the failed samples hold no label
    assert ds.exists("car_error").values("id") == [ids[i] for i in (1, 3, 5, 6)]
    assert ds.exists("car").values("id") == [ids[i] for i in (0, 2, 4)]
    # a rerun with skip_existing retries only the failed samples (and fails them again)
    again = segment_collection(ds, QUERIES, label_field="car", config=tiny_config,
                               skip_existing=True, skip_failures=True, progress=False)  # fmt: skip
    assert (again.processed, again.failed, again.skipped) == (0, 4, 3)
    with pytest.raises(ConfigError, match="car_error"):  # an error field from an earlier run
        segment_collection(ds.exists("car", False), QUERIES, label_field="car",
                           config=tiny_config, progress=False)  # fmt: skip

    ds2 = make_dataset(files=files)
    ids2 = ds2.values("id")
    with pytest.raises(SampleError, match=ids2[1]) as info:
        segment_collection(ds2, QUERIES, label_field="car", config=tiny_config, progress=False)
    assert str(bad) in str(info.value)
    assert ds2.exists("car").values("id") == [ids2[0]]  # what finished before stays


def test_bad_parameters_are_rejected_before_any_sample(make_dataset, tiny_config, tmp_path):
    ds = make_dataset(2)
    not_clip = tmp_path / "not-a-clip"
    not_clip.mkdir()
    (not_clip / "config.json").write_text("{}")
    cases = [
        (dict(config={"preset": "mini", "confidence_threshold": 1.5}), ConfigError),
        (dict(config={"preset": "mini", "visual_prompts": ["sparkle"]}), ConfigError),
        (dict(config="no-such-preset"), ConfigError),
        (dict(config={"preset": "mini", "proposal_model": "/nonexistent/clip"}), ModelLoadError),
        (dict(config={"preset": "mini", "classifier_model": str(not_clip)}), ModelLoadError),
        (dict(config=tiny_config, label_field="bad name"), ConfigError),
        (dict(config=tiny_config, output_dir="relative/out"), ConfigError),
        (dict(config=tiny_config, outputs=["everything"]), ConfigError),
    ]
    for kwargs, err in cases:
        with pytest.raises(err):
            segment_collection(ds, QUERIES, progress=False, **kwargs)
    with pytest.raises(QueryError):
        segment_collection(ds, ["", " "], config=tiny_config, progress=False)
    with pytest.raises(ConfigError, match="media folder"):
        media = str(Path(ds.first().filepath).parent / "masks")
        segment_collection(ds, QUERIES, config=tiny_config, output_dir=media, progress=False)
    ds.set_values("mine_error", [1, 2])  # a user's own field where the run records errors
    with pytest.raises(ConfigError, match="not a string field"):
        segment_collection(ds, QUERIES, label_field="mine", config=tiny_config, progress=False)
    assert "car" not in ds.get_field_schema() and "mine" not in ds.get_field_schema()
    assert ds.values("mine_error") == [1, 2] and not ds.has_runs


def test_concurrent_run_on_the_same_field_is_refused(make_dataset, tiny_config) -> None:
    ds = make_dataset(1)
    held = FieldLock(str(ds._doc.id), ds.name, "car").acquire()
    try:
        with pytest.raises(FieldLockedError, match="being written by another run"):
            segment_collection(ds, QUERIES, label_field="car", config=tiny_config, progress=False)
        segment_collection(ds, QUERIES, label_field="car2", config=tiny_config, progress=False)
    finally:
        held.release()
    assert "car" not in ds.get_field_schema() and ds.count("car2") == 1


def test_classes_from_ground_truth_keep_their_values(make_dataset, tiny_config) -> None:
    ds = make_dataset(2)
    ds.mask_targets = {"gt": {0: "background", 4: "blue square", 9: "red circle"}}
    ds.save()
    segment_collection(
        ds,
        ["green triangle"],
        classes_from="mask_targets:gt",
        label_field="car",
        config=tiny_config,
        progress=False,
    )
    assert ds.mask_targets["car"] == {1: "green triangle", 4: "blue square", 9: "red circle"}
    car = get_car(tiny_config)
    for s in ds:
        direct = car.segment(s.filepath, ["blue square", "red circle", "green triangle"])
        lut = np.array([0, 4, 9, 1])
        np.testing.assert_array_equal(s["car"].mask, lut[direct.label_map])


def test_three_entry_points_give_identical_masks(make_dataset, tiny_config) -> None:
    ds = make_dataset(3)
    segment_collection(ds, QUERIES, label_field="lib", config=tiny_config, progress=False)
    op = foo.get_operator(f"{URI}/segment")
    keep = dict(min_region_pixels=tiny_config.min_region_pixels)
    op(ds, queries=QUERIES, label_field="sdk", preset="voc", **keep, **_advanced(tiny_config))
    foo.execute_operator(
        f"{URI}/segment",
        ctx=dict(
            dataset=ds,
            params=dict(
                queries=QUERIES,
                label_field="exe",
                preset="voc",
                advanced=True,
                **keep,
                **_advanced(tiny_config),
            ),
        ),
    )
    model = CaRModel(tiny_config, queries=QUERIES)
    ds.apply_model(model, label_field="mdl")
    model.set_mask_targets(ds, "mdl")
    lib = _masks(ds, "lib")
    for field in ("sdk", "exe", "mdl"):
        got = _masks(ds, field)
        for sid, mask in lib.items():
            np.testing.assert_array_equal(got[sid], mask, err_msg=field)
        assert ds.mask_targets[field] == ds.mask_targets["lib"]


def _advanced(cfg) -> dict:
    """The form's advanced settings that turn the VOC preset into ``tiny_config``."""
    return dict(
        proposal_model=cfg.proposal_model,
        classifier_model=cfg.classifier_model,
        crf=cfg.crf,
        device="cpu",
    )


def test_operator_on_selected_samples_only(make_dataset, tiny_config) -> None:
    ds = make_dataset(3)
    chosen = ds.values("id")[1]
    foo.execute_operator(
        f"{URI}/segment",
        ctx=dict(
            dataset=ds,
            selected=[chosen],
            params=dict(
                view_target="SELECTED_SAMPLES",
                queries=QUERIES,
                label_field="car",
                preset="voc",
                advanced=True,
                **_advanced(tiny_config),
            ),
        ),
    )
    assert ds.exists("car").values("id") == [chosen]
    # written on the root dataset, saved: a fresh handle sees them
    assert fo.load_dataset(ds.name).mask_targets["car"] == dict(enumerate(QUERIES, start=1))


def test_operator_refuses_existing_field(make_dataset, tiny_config) -> None:
    ds = make_dataset(1)
    ds.set_values("cliprnn", [fo.Segmentation(mask=np.zeros((2, 2), np.uint8))])
    with pytest.raises(Exception, match="exists"):  # the default field
        foo.get_operator(f"{URI}/segment")(ds, queries=QUERIES, **_advanced(tiny_config))


def test_operator_output_dir_inside_the_media_needs_consent(make_dataset, tiny_config) -> None:
    import shutil

    ds = make_dataset(1)
    out = Path(ds.first().filepath).parent / "car-out"
    segment = foo.get_operator(f"{URI}/segment")
    try:
        with pytest.raises(Exception, match=r"inside the folder .* that holds the images") as e:
            segment(ds, queries=QUERIES, output_dir=str(out), **_advanced(tiny_config))
        assert "allow_media_dir" not in str(e.value)  # the form's words, not the SDK's
        assert "cliprnn" not in ds.get_field_schema() and not out.exists()
        segment(ds, queries=QUERIES, output_dir=str(out), allow_media_dir=True,
                **_advanced(tiny_config))  # fmt: skip
        sample = ds.first()
        assert sample["cliprnn"].mask_path == str(out / "cliprnn" / "masks" / f"{sample.id}.png")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_apply_mask_edits_and_edit_classes(make_dataset, tiny_config) -> None:
    ds = make_dataset(2)
    segment_collection(
        ds,
        QUERIES,
        label_field="car",
        config=tiny_config,
        progress=False,
        outputs=["segmentation", "detections"],
    )
    original = _masks(ds, "car")
    # unedited instances fold back into exactly the semantic mask
    out = apply_mask_edits(ds, "car")
    assert (out.updated, out.unchanged, out.trimmed) == (0, 2, 0)
    for sid, mask in _masks(ds, "car").items():
        np.testing.assert_array_equal(mask, original[sid])
    # a user draws a new 'yellow star' box in the top-left quarter of the first sample
    s = ds.first()
    s["car_det"].detections.append(
        fo.Detection(label="yellow star", bounding_box=[0.0, 0.0, 0.25, 0.25])
    )
    s.save()
    fold = foo.get_operator(f"{URI}/apply_mask_edits")
    with pytest.raises(Exception, match="yellow star"):  # not a class of the field
        fold(ds, label_field="car")
    fold(ds, label_field="car", allow_new_classes=True)
    assert ds.mask_targets["car"][4] == "yellow star"
    mask = ds.first()["car"].mask
    assert (mask[:12, :16] == 4).all() and "yellow star" in ds.first()["car"].kept
    # merge red circle + yellow star into 'shape'; delete blue square
    before = _masks(ds, "car")
    edit = foo.get_operator(f"{URI}/edit_mask_classes")
    edit(ds, "car", "merge", ["red circle", "yellow star"], new_name="shape")
    targets = edit_mask_classes(ds, "car", delete=["blue square"])
    assert targets == {1: "shape", 3: "green triangle"}
    for sid, mask in _masks(ds, "car").items():
        old = before[sid]
        expected = np.select([np.isin(old, [1, 4]), old == 2, old == 3], [1, 0, 3], 0)
        np.testing.assert_array_equal(mask, expected)
        labels = {d.label for d in ds[sid]["car_det"].detections}
        assert "blue square" not in labels and "red circle" not in labels


def test_odd_image_modes_and_exif_rotation(make_dataset, tiny_config, tmp_path, scene_files):
    rgb = Image.open(scene_files[0]).convert("RGB")  # 64 wide, 48 high
    files = {"gray": rgb.convert("L"), "rgba": rgb.convert("RGBA"), "palette": rgb.convert("P")}
    files["cmyk"] = rgb.convert("CMYK")
    files["tiny"] = rgb.resize((5, 3))  # smaller than one 8-pixel patch
    wide = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    files["gray16"] = Image.fromarray(wide)
    paths = []
    for name, im in files.items():
        paths.append(tmp_path / f"{name}.{'jpg' if im.mode == 'CMYK' else 'png'}")
        im.save(paths[-1])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    paths.append(tmp_path / "rotated.jpg")
    rgb.save(paths[-1], exif=exif.tobytes())
    ds = make_dataset(files=paths)
    s = segment_collection(ds, QUERIES, label_field="car", config=tiny_config, progress=False)
    assert (s.processed, s.failed) == (len(paths), 0)
    shapes = {Path(x.filepath).stem: x["car"].mask.shape for x in ds}
    assert shapes == {"gray": (48, 64), "rgba": (48, 64), "palette": (48, 64), "cmyk": (48, 64),
                      "tiny": (3, 5), "gray16": (48, 64), "rotated": (64, 48)}  # fmt: skip
    # 16-bit gray decodes to the same pixels as its 8-bit source, so it segments the same
    by_name = {Path(x.filepath).stem: x["car"].mask for x in ds}
    np.testing.assert_array_equal(by_name["gray16"], by_name["gray"])


def test_values_above_255_switch_masks_to_uint16(make_dataset, tiny_config) -> None:
    ds = make_dataset(1)
    ds.mask_targets = {"car": {300: "old class"}}
    ds.save()
    segment_collection(ds, QUERIES, label_field="car", config=tiny_config, progress=False)
    assert ds.mask_targets["car"] == {1: "red circle", 2: "blue square", 3: "green triangle",
                                      300: "old class"}  # fmt: skip
    mask = ds.first()["car"].mask
    assert mask.dtype == np.uint16
    direct = get_car(tiny_config).segment(ds.first().filepath, QUERIES)
    np.testing.assert_array_equal(mask, direct.label_map)


def test_non_image_collections_are_refused(make_dataset, tiny_config) -> None:
    groups = fo.Dataset()
    try:
        groups.add_group_field("group", default="left")
        group = fo.Group()
        groups.add_sample(fo.Sample(filepath="/nonexistent/a.png", group=group.element("left")))
        with pytest.raises(ConfigError, match=r"media type is 'group'.*one group slice"):
            segment_collection(groups, QUERIES, config=tiny_config, progress=False)
    finally:
        groups.delete()
    ds = make_dataset(1)
    ds.set_values("boxes", [fo.Detections(detections=[fo.Detection(label="a")])])
    with pytest.raises(ConfigError, match="patches view"):
        segment_collection(ds.to_patches("boxes"), QUERIES, config=tiny_config, progress=False)


def test_crf_overlap_writes_the_same_labels_as_the_sequential_run(make_dataset, tiny_config):
    ds = make_dataset(4)
    outputs = ["segmentation", "detections"]
    segment_collection(ds, QUERIES, label_field="seq", config=tiny_config, progress=False,
                       outputs=outputs)  # fmt: skip
    segment_collection(ds, QUERIES, label_field="ovl", config=tiny_config.replace(crf_workers=2),
                       progress=False, outputs=outputs)  # fmt: skip
    for sample in ds:
        np.testing.assert_array_equal(sample["seq"].mask, sample["ovl"].mask)
        a, b = sample["seq_det"].detections, sample["ovl_det"].detections
        assert [(d.label, d.bounding_box) for d in a] == [(d.label, d.bounding_box) for d in b]
        assert [c.confidence for c in sample["seq_scores"].classifications] == [
            c.confidence for c in sample["ovl_scores"].classifications
        ]
    assert run_info(ds, "ovl")["config"]["crf_workers"] == 2
