"""Unit tests of the FiftyOne layer: query sources, value assignment, labels, files, locks."""

from __future__ import annotations

import os

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from cliprnn.errors import ConfigError, QueryError
from cliprnn.fiftyone import labels as L
from cliprnn.fiftyone.edits import class_mapping, remap_targets
from cliprnn.fiftyone.files import validate_output_dir, write_png_atomic
from cliprnn.fiftyone.instances import render_instances
from cliprnn.fiftyone.lock import FieldLock, FieldLockedError
from cliprnn.fiftyone.queries import (
    assign_values,
    class_sources,
    clean_queries,
    resolve_queries,
    source_classes,
)
from cliprnn.result import CaRResult

pytestmark = pytest.mark.fiftyone


def _result() -> CaRResult:
    """A hand-made result: 'cat' owns the left half of a 4×6 image, 'dog' was dropped,
    'sky' owns the two bottom-right pixels."""
    label_map = np.zeros((4, 6), np.int32)
    label_map[:, :3] = 1
    label_map[3, 4:] = 3
    masks = np.stack([label_map == 1, np.zeros((4, 6), bool), label_map == 3])
    soft = np.stack(
        [
            np.full((4, 6), 0.5, np.float32),
            np.zeros((4, 6), np.float32),
            np.full((4, 6), 1.0, np.float32),
        ]
    )
    return CaRResult(
        label_map=label_map,
        queries=["cat", "dog", "sky"],
        kept=["cat", "sky"],
        scores=np.array([0.9, 0.0, 0.7], np.float32),
        masks=masks,
        steps=2,
        soft_masks=soft,
    )


# ----------------------------------------------------------------------------- queries
def test_clean_queries_strips_dedupes_and_keeps_order() -> None:
    assert clean_queries([" cat", "dog ", "", "  ", "cat", "café"]) == ["cat", "dog", "café"]
    with pytest.raises(QueryError):
        clean_queries(["cat", 3])


def test_assign_values_prefers_source_then_existing_then_smallest_free() -> None:
    assert assign_values(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}
    # source fixes b=5; existing field already maps c to 2, so a takes 1 and d takes 3
    got = assign_values(["a", "b", "c", "d"], {"b": 5}, {2: "c", 4: "old"})
    assert got == {"b": 5, "c": 2, "a": 1, "d": 3}
    # a source value held by another name in the existing field is not reused
    assert assign_values(["x"], {"x": 1}, {1: "y"}) == {"x": 2}


@pytest.fixture
def sourced(make_dataset):
    ds = make_dataset(3)
    ds.default_mask_targets = {0: "background", 1: "cat", 7: "dog"}
    ds.mask_targets = {"gt": {0: "background", 2: "sheep", 3: "cow"}}
    ds.default_classes = ["tree", "bush"]
    ds.classes = {"boxes": ["car", "bus"]}
    ds.save()
    for i, s in enumerate(ds):
        s["boxes"] = fo.Detections(
            detections=[
                fo.Detection(label=["car", "truck", "car"][i], bounding_box=[0.1, 0.1, 0.2, 0.2])
            ]
        )
        s.save()
    return ds


def test_class_sources_lists_every_kind(sourced) -> None:
    assert set(class_sources(sourced)) == {
        "default_mask_targets",
        "mask_targets:gt",
        "default_classes",
        "classes:boxes",
        "labels:boxes",
    }


@pytest.mark.parametrize(
    ("spec", "names", "values"),
    [
        ("default_mask_targets", ["cat", "dog"], {"cat": 1, "dog": 7}),
        ("mask_targets:gt", ["sheep", "cow"], {"sheep": 2, "cow": 3}),
        ("default_classes", ["tree", "bush"], {}),
        ("classes:boxes", ["car", "bus"], {}),
        ("labels:boxes", ["car", "truck"], {}),
        ("gt", ["sheep", "cow"], {"sheep": 2, "cow": 3}),  # bare name: mask targets first
    ],
)
def test_source_classes(sourced, spec: str, names: list[str], values: dict) -> None:
    got_names, got_values = source_classes(sourced, spec)
    assert sorted(got_names) == sorted(names)
    assert got_values == values


def test_resolve_queries_merges_source_subset_and_free_text(sourced) -> None:
    r = resolve_queries(sourced, ["horse", "cow", " "], "mask_targets:gt", classes=["cow"])
    assert r.queries == ["cow", "horse"]
    assert r.source_values == {"sheep": 2, "cow": 3}
    assert resolve_queries(sourced, "a\nb\n\na").queries == ["a", "b"]


@pytest.mark.parametrize("spec", ["mask_targets:nope", "labels:nope", "weird:x", "nope", ""])
def test_bad_sources_are_config_errors(sourced, spec: str) -> None:
    with pytest.raises(ConfigError):
        source_classes(sourced, spec)


def test_no_queries_is_a_query_error(sourced) -> None:
    with pytest.raises(QueryError):
        resolve_queries(sourced, ["", "  "])


# ----------------------------------------------------------------------------- labels
def test_mask_dtype_uint8_until_255() -> None:
    assert L.mask_dtype(255) is np.uint8
    assert L.mask_dtype(256) is np.uint16
    with pytest.raises(ValueError):
        L.mask_dtype(70000)


def test_output_field_names() -> None:
    f = L.output_fields(
        "car", ["segmentation", "detections", "heatmaps"], {"Red car": 1, "red-car": 2, "": 3}
    )
    assert (f.segmentation, f.detections, f.error) == ("car", "car_det", "car_error")
    assert f.scores == "car_scores" and f.scores in f.all() and f.scores not in f.shown()
    assert f.heatmaps == {
        "Red car": "car_heat_red_car",
        "red-car": "car_heat_red_car_2",
        "": "car_heat_3",
    }
    only_det = L.output_fields("x", ["detections"], {"a": 1})
    assert only_det.detections == "x" and only_det.primary == "x"
    for bad in ("", "1car", "a.b", "id", "_x"):
        with pytest.raises(ConfigError):
            L.output_fields(bad, ["segmentation"], {"a": 1})
    with pytest.raises(ConfigError):
        L.output_fields("car", ["masks"], {"a": 1})


def test_semantic_mask_uses_stored_values() -> None:
    res = _result()
    mask = L.semantic_mask(res, {"cat": 4, "dog": 9, "sky": 1}, np.uint8)
    assert mask.dtype == np.uint8
    assert mask[0, 0] == 4 and mask[0, 3] == 0 and mask[3, 5] == 1
    assert np.count_nonzero(mask == 4) == 12 and np.count_nonzero(mask == 1) == 2
    seg = L.segmentation_label(res, {"cat": 4, "dog": 9, "sky": 1}, np.uint8)
    assert seg.kept == ["cat", "sky"] and seg.steps == 2 and not seg.has_field("scores")
    listed = L.scores_label(res).classifications
    assert [(c.label, c.kept) for c in listed] == [("cat", True), ("dog", False), ("sky", True)]
    assert [c.confidence for c in listed] == pytest.approx([0.9, 0.0, 0.7])


def test_detections_fold_back_into_the_same_mask() -> None:
    res = _result()
    values = {"cat": 1, "dog": 2, "sky": 3}
    dets = L.detections_label(res, values).detections
    assert [(d.label, d.value) for d in dets] == [("cat", 1), ("sky", 3)]
    assert dets[0].confidence == pytest.approx(0.9)
    assert dets[0].bounding_box == pytest.approx([0.0, 0.0, 0.5, 1.0])
    back = render_instances(dets, values, (4, 6), np.uint8).mask
    np.testing.assert_array_equal(back, L.semantic_mask(res, values, np.uint8))


def test_heatmaps_only_for_kept_queries() -> None:
    maps = L.heatmap_arrays(_result())
    assert set(maps) == {"cat", "sky"}
    assert maps["cat"].dtype == np.uint8 and int(maps["cat"][0, 0]) == 128
    assert int(maps["sky"].min()) == 255


# ----------------------------------------------------------------------------- class edits
def test_class_mapping_and_remap() -> None:
    targets = {1: "cat", 2: "dog", 3: "sky", 5: "kitten"}
    m = class_mapping(
        targets.values(), rename={"sky": "heaven"}, merge={"cat": ["kitten"]}, delete=["dog"]
    )
    assert m == {"cat": "cat", "dog": None, "sky": "heaven", "kitten": "cat"}
    new, lut = remap_targets(targets, m)
    assert new == {1: "cat", 3: "heaven"}
    assert lut == {1: 1, 2: 0, 3: 3, 5: 1}
    with pytest.raises(ConfigError):
        class_mapping(["cat"], delete=["cow"])


# ----------------------------------------------------------------------------- files
def test_write_png_atomic_roundtrip(tmp_path) -> None:
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    p = write_png_atomic(a, tmp_path / "x" / "m.png")
    np.testing.assert_array_equal(np.asarray(Image.open(p)), a)
    b = (np.arange(12, dtype=np.uint16) * 1000).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(Image.open(write_png_atomic(b, p))), b)
    assert [f.name for f in (tmp_path / "x").iterdir()] == ["m.png"]  # no temp file left


def test_validate_output_dir(tmp_path) -> None:
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    img = str(media / "a.png")
    assert validate_output_dir(str(tmp_path / "out"), [img]) == (tmp_path / "out").resolve()
    assert validate_output_dir({"absolute_path": str(tmp_path / "o2")}, [img]).is_dir()
    for bad in ("relative/dir", "", str(media), str(media / "sub")):
        with pytest.raises(ConfigError):
            validate_output_dir(bad, [img])
    assert validate_output_dir(str(media / "sub"), [img], allow_media_dir=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError):
        validate_output_dir(str(tmp_path / "file"), [])
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ConfigError):
            validate_output_dir(str(ro), [])


# ----------------------------------------------------------------------------- lock
def test_field_lock_refuses_a_second_writer_and_frees_on_release() -> None:
    first = FieldLock("dsid", "demo", "car").acquire()
    with pytest.raises(FieldLockedError, match="being written by another run"):
        FieldLock("dsid", "demo", "car").acquire()
    FieldLock("dsid", "demo", "other").acquire().release()  # other fields are independent
    first.release()
    FieldLock("dsid", "demo", "car").acquire().release()


def test_field_lock_of_a_dead_process_is_taken_over() -> None:
    lock = FieldLock("dsid2", "demo", "car").acquire()
    lock._coll.update_one({"_id": lock.key}, {"$set": {"pid": 2**22 + 12345}})
    FieldLock("dsid2", "demo", "car").acquire().release()


def test_output_dir_that_cannot_be_made_is_refused(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        validate_output_dir(str(tmp_path / "file" / "masks"), [])  # a folder below a file


def test_write_png_atomic_keeps_the_old_file_when_a_write_crashes(tmp_path, monkeypatch) -> None:
    target = tmp_path / "m.png"
    old = np.full((3, 4), 7, np.uint8)
    write_png_atomic(old, target)

    def crash(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")  # some bytes reach the disk, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_png_atomic(np.zeros((3, 4), np.uint8), target)
    with pytest.raises(OSError):
        write_png_atomic(np.zeros((3, 4), np.uint8), tmp_path / "new.png")
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(Image.open(target)), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]  # no temp, no new.png


# ----------------------------------------------------------------------------- forms
def test_segment_form_has_one_delegation_control_the_execute_menu() -> None:
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    op = foo.get_operator("@cliprnn/clip-as-rnn/segment")
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(50)])

        def ctx() -> ExecutionContext:
            req = dict(dataset_name=ds.name, params=dict(queries=["cat"]))
            return ExecutionContext(request_params=req)

        def form() -> dict:
            return op.resolve_input(ctx()).type.properties

        props = form()  # 50 samples: at the threshold, immediate by default, no notice
        assert "delegate" not in props and "delegate_warning" not in props
        assert op.resolve_execution_options(ctx()).default_choice_to_delegated is False
        ds.add_sample(fo.Sample(filepath="/nonexistent/50.png"))
        props = form()  # 51: Schedule pre-selected in the Execute menu, and a notice says so
        assert "delegate" not in props
        assert "51 samples: choose Schedule" in props["delegate_warning"].view.label
        assert op.resolve_execution_options(ctx()).default_choice_to_delegated is True
    finally:
        ds.delete()


def test_apply_edits_form_pairs_the_instance_field_with_its_semantic_field() -> None:
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    op = foo.get_operator("@cliprnn/clip-as-rnn/apply_mask_edits")
    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath="/nonexistent/0.png"))
        for name, kind in (("aaa_det", fo.Detections), ("zed", fo.Segmentation),
                           ("zed_det", fo.Detections)):  # fmt: skip
            ds.add_sample_field(name, fo.EmbeddedDocumentField, embedded_doc_type=kind)

        def form(params: dict) -> dict:
            req = dict(dataset_name=ds.name, params=params)
            return op.resolve_input(ExecutionContext(request_params=req)).type.properties

        props = form({})
        assert props["label_field"].default == "zed"
        assert props["detections_field"].default == "zed_det"  # not the alphabetically first
        assert form({"label_field": "zed"})["detections_field"].default == "zed_det"
        assert "allow_new_classes" in props
        assert "allow_new_classes" not in form({"direction": "to_detections"})
    finally:
        ds.delete()


def test_text_queries_are_one_per_line_never_split_on_spaces() -> None:
    from operators.segment_params import run_kwargs

    kwargs = run_kwargs({"query_text": "red circle\n  blue square \n\n", "queries": ["sky"]})
    assert kwargs["queries"][0] == "sky" and "red circle" in kwargs["queries"]
    assert clean_queries(kwargs["queries"]) == ["sky", "red circle", "blue square"]
    assert run_kwargs({"classes_from": "none", "queries_from": "none"})["classes_from"] is None
