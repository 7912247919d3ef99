"""The labeling loop on a real FiftyOne database: editable instances with a label schema,
edits folded back pixel by pixel (inline, file-backed, added, deleted, relabelled), the
reverse direction, per-sample queries, and bad input that loses nothing. Over 600 lines on
purpose: the scenarios share one dataset builder and its pixel-exact checks."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest

from cliprnn.errors import ConfigError, QueryError
from cliprnn.fiftyone import (
    apply_mask_edits,
    edit_mask_classes,
    rebuild_instances,
    run_info,
    segment_collection,
)
from cliprnn.fiftyone.edits import unapplied_edits
from cliprnn.fiftyone.engine import get_car
from cliprnn.fiftyone.instances import instance_pixels

pytestmark = pytest.mark.fiftyone

QUERIES = ["red circle", "blue square", "green triangle"]
TARGETS = {1: "cat", 2: "dog", 3: "sky"}


def _label_map(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A semantic mask with sky on top, a cat and two dogs (values of TARGETS)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[: h // 4] = 3
    y, x = rng.integers(16, 22), rng.integers(2, 10)
    mask[y : y + 10, x : x + 12] = 1
    mask[30:40, 30:38] = 2
    mask[28:44, 48:60] = 2
    return mask


@pytest.fixture
def labelled(make_dataset):
    """Two samples with a semantic field 'car' and its instances 'car_det' (schema active)."""
    ds = make_dataset(2)
    for i, sample in enumerate(ds):
        sample["car"] = fo.Segmentation(mask=_label_map(i))
        sample["car_scores"] = fo.Classifications(
            classifications=[fo.Classification(label=n, confidence=c)
                             for n, c in (("cat", 0.9), ("dog", 0.8), ("sky", 0.7), ("cow", 0.0))]
        )  # fmt: skip
        sample.save()
    ds.mask_targets = {"car": dict(TARGETS)}
    ds.save()
    rebuild_instances(ds, "car")
    return ds


def _mask(ds: fo.Dataset, sid: str) -> np.ndarray:
    return ds[sid]["car"].get_mask()


def _app_save(det: fo.Detection, pixels: np.ndarray, scale: float = 6.25) -> None:
    """Store ``pixels`` (H×W bool) in ``det`` the way the App saves an edited mask: inline, at
    ``scale`` times the image's resolution, in a box off the pixel grid, mask_path cleared."""
    h, w = pixels.shape
    ys, xs = np.nonzero(pixels)
    x0, x1 = xs.min() - 0.3, xs.max() + 1.3
    y0, y1 = ys.min() - 0.2, ys.max() + 1.4
    mh, mw = round((y1 - y0) * scale), round((x1 - x0) * scale)
    rows = np.clip(np.floor(y0 + (np.arange(mh) + 0.5) / scale).astype(int), 0, h - 1)
    cols = np.clip(np.floor(x0 + (np.arange(mw) + 0.5) / scale).astype(int), 0, w - 1)
    det.mask = pixels[np.ix_(rows, cols)]
    det.mask_path = None
    det.bounding_box = [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]


def _instances(ds: fo.Dataset, sid: str, label: str) -> list[fo.Detection]:
    return [d for d in ds[sid]["car_det"].detections if d.label == label]


# ------------------------------------------------------------------ editable by default
def test_a_run_makes_its_instances_editable_with_every_class(make_dataset, tiny_config) -> None:
    ds = make_dataset(2)
    segment_collection(ds, QUERIES, label_field="car", config=tiny_config, progress=False,
                       outputs=["segmentation", "detections"])  # fmt: skip
    assert "car_det" in ds.active_label_schemas
    schema = ds.label_schemas["car_det"]
    assert schema["type"] == "detections" and schema["component"] == "dropdown"
    assert schema["classes"] == QUERIES  # unused classes too, so an instance can take one
    # each class has one colour in both fields
    fields = {e["path"]: e for e in ds.app_config.color_scheme.fields}
    seg = {c["intTarget"]: c["color"] for c in fields["car"]["maskTargetsColors"]}
    det = {c["value"]: c["color"] for c in fields["car_det"]["valueColors"]}
    assert fields["car_det"]["colorByAttribute"] == "label"
    assert {ds.mask_targets["car"][v]: c for v, c in seg.items()} == det
    assert len(set(seg.values())) == 3
    # the instances cover exactly the semantic mask
    for sample in ds:
        back = np.zeros_like(sample["car"].mask)
        for d in sample["car_det"].detections:
            back[instance_pixels(d, back.shape)] = d.value
        np.testing.assert_array_equal(back, sample["car"].mask)


def test_instances_are_one_per_region_by_default(labelled) -> None:
    sid = labelled.first().id
    assert len(_instances(labelled, sid, "dog")) == 2  # two dogs, two objects
    assert _instances(labelled, sid, "dog")[0].confidence == pytest.approx(0.8)
    rebuild_instances(labelled, "car", instances="class")
    assert len(_instances(labelled, sid, "dog")) == 1


# ------------------------------------------------------------------------------ fold back
def test_unedited_instances_fold_back_to_the_same_masks(labelled) -> None:
    before = {s.id: _mask(labelled, s.id) for s in labelled}
    out = apply_mask_edits(labelled, "car")
    assert (out.updated, out.unchanged) == (0, 2)
    for sid, mask in before.items():
        np.testing.assert_array_equal(_mask(labelled, sid), mask)


def test_an_inline_edit_changes_only_the_stroke_pixels(labelled) -> None:
    sid = labelled.first().id
    before = _mask(labelled, sid)
    sample = labelled[sid]
    cat = next(d for d in sample["car_det"].detections if d.label == "cat")
    pixels = instance_pixels(cat, before.shape)
    stroke = np.zeros_like(pixels)
    stroke[2:8, 20:40] = True  # painted up into the sky
    erased = np.zeros_like(pixels)
    ys, xs = np.nonzero(pixels)
    erased[ys.min() : ys.min() + 3, xs.min() : xs.min() + 4] = True  # and erased a corner
    _app_save(cat, (pixels | stroke) & ~erased)
    sample.save()
    out = apply_mask_edits(labelled, "car")
    assert out.updated == 1 and out.unchanged == 1 and out.trimmed == 1  # the sky lost pixels
    after = _mask(labelled, sid)
    expected = before.copy()
    expected[stroke] = 1
    expected[erased] = 0
    np.testing.assert_array_equal(after, expected)  # not one pixel elsewhere
    # the instance field agrees, so a second fold-back changes nothing
    assert apply_mask_edits(labelled, "car").updated == 0
    np.testing.assert_array_equal(_mask(labelled, sid), expected)
    edits = run_info(labelled, "car")
    assert edits is None or "mask_edits" in edits  # no run record here: written by hand


def test_file_backed_added_deleted_and_relabelled_instances(labelled, tmp_path: Path) -> None:
    sid = labelled.first().id
    before = _mask(labelled, sid)
    sample = labelled[sid]
    dets = sample["car_det"].detections
    sky = next(d for d in dets if d.label == "sky")
    sky.export_mask(str(tmp_path / "sky.png"), update=True)  # its mask now lives in a file
    assert sky.mask is None and sky.mask_path
    dogs = [d for d in dets if d.label == "dog"]
    dets.remove(dogs[0])  # deleted: its pixels become background
    dogs[1].label = "cow"  # relabelled to a class of the label schema the field never used
    drawn = fo.Detection(label="cat", bounding_box=[0.0, 0.0, 0.125, 0.125])  # added, on sky
    dets.append(drawn)
    sample.save()
    labelled.update_label_schema(
        "car_det", {**labelled.label_schemas["car_det"], "classes": ["cat", "dog", "sky", "cow"]}
    )
    out = apply_mask_edits(labelled, "car")
    assert out.new_classes == ["cow"] and labelled.mask_targets["car"][4] == "cow"
    after = _mask(labelled, sid)
    expected = before.copy()
    expected[instance_pixels(dogs[0], before.shape)] = 0
    expected[instance_pixels(dogs[1], before.shape)] = 4
    expected[:6, :8] = 1  # the drawn box wins over the sky
    np.testing.assert_array_equal(after, expected)
    assert "cow" in labelled.label_schemas["car_det"]["classes"]
    assert labelled[sid]["car"].kept == ["cat", "sky", "cow"]


def test_the_run_record_notes_folded_edits(make_dataset, tiny_config) -> None:
    ds = make_dataset(1)
    segment_collection(ds, QUERIES, label_field="car", config=tiny_config, progress=False,
                       outputs=["segmentation", "detections"])  # fmt: skip
    sample = ds.first()
    sample["car_det"].detections.append(
        fo.Detection(label="blue square", bounding_box=[0.0, 0.0, 0.5, 0.5])
    )
    sample.save()
    apply_mask_edits(ds, "car")
    (entry,) = run_info(ds, "car")["mask_edits"]
    assert entry["from_field"] == "car_det" and entry["samples_updated"] == 1
    assert (ds.first()["car"].mask[:24, :32] == 2).all()


# -------------------------------------------------------------------- the other direction
def test_class_edits_carry_over_to_the_instances_and_their_schema(labelled) -> None:
    edit_mask_classes(labelled, "car", rename={"dog": "puppy"})
    for sample in labelled:
        assert {d.label for d in sample["car_det"].detections} == {"cat", "puppy", "sky"}
        assert [c.label for c in sample["car_scores"].classifications] == [
            "cat", "puppy", "sky", "cow"
        ]  # fmt: skip
    classes = labelled.label_schemas["car_det"]["classes"]
    assert "puppy" in classes and "dog" not in classes
    # a stale 'dog' written back later is refused, not added as a second class
    sample = labelled.first()
    sample["car_det"].detections[0].label = "dog"
    sample.save()
    with pytest.raises(ConfigError, match="dog"):
        apply_mask_edits(labelled, "car")
    assert sorted(labelled.mask_targets["car"].values()) == ["cat", "puppy", "sky"]


# ------------------------------------------------------------------------------ bad input
def test_foreign_classes_are_refused_and_nothing_is_written(labelled) -> None:
    before = {s.id: _mask(labelled, s.id) for s in labelled}
    labelled.add_sample_field("other", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    sample = labelled.first()
    sample["other"] = fo.Detections(
        detections=[fo.Detection(label="zebra", bounding_box=[0.1, 0.1, 0.2, 0.2])]
    )
    sample.save()
    with pytest.raises(ConfigError, match=rf"zebra.*{sample.id}"):
        apply_mask_edits(labelled, "car", "other")
    for sid, mask in before.items():
        np.testing.assert_array_equal(_mask(labelled, sid), mask)
    assert labelled.mask_targets["car"] == TARGETS
    apply_mask_edits(labelled, "car", "other", allow_new_classes=True)
    assert labelled.mask_targets["car"][4] == "zebra"


def test_samples_without_instances_keep_their_mask(labelled) -> None:
    sid = labelled.first().id
    before = _mask(labelled, sid)
    sample = labelled[sid]
    sample["car_det"] = None  # the whole label deleted, not its instances
    sample.save()
    out = apply_mask_edits(labelled, "car")
    assert out.skipped == [sid]
    np.testing.assert_array_equal(_mask(labelled, sid), before)
    sample = labelled[sid]
    sample["car_det"] = fo.Detections(detections=[])  # every instance deleted
    sample.save()
    apply_mask_edits(labelled, "car")
    assert not _mask(labelled, sid).any()


def test_bad_fields_and_empty_views(labelled) -> None:
    labelled.add_sample_field("note", fo.StringField)
    with pytest.raises(ConfigError, match="not a Detections field"):
        apply_mask_edits(labelled, "car", "note")
    with pytest.raises(ConfigError, match="no field 'nope'"):
        apply_mask_edits(labelled, "car", "nope")
    with pytest.raises(ConfigError, match="no samples"):
        apply_mask_edits(labelled.limit(0), "car")
    with pytest.raises(ConfigError, match="not a Segmentation"):
        apply_mask_edits(labelled, "note", "car_det")


# ------------------------------------------------------------------- per-sample queries
@pytest.fixture
def tagged(make_dataset):
    ds = make_dataset(4)
    kinds = [
        ("cls", fo.Classification(label="red circle")),
        ("multi", fo.Classifications(classifications=[fo.Classification(label="blue square"),
                                                      fo.Classification(label="red circle")])),
        ("boxes", fo.Detections(detections=[fo.Detection(label="green triangle",
                                                         bounding_box=[0, 0, 1, 1])])),
    ]  # fmt: skip
    for sample, (tag, label) in zip(ds, kinds, strict=False):
        sample.tags = [tag.replace("cls", "red circle")]
        sample[f"lab_{tag}"] = label
        sample.save()
    return ds  # the fourth sample has no labels and no tags


@pytest.mark.parametrize("field", ["lab_cls", "lab_multi", "lab_boxes", "tags"])
def test_each_sample_is_queried_for_its_own_labels(tagged, tiny_config, field) -> None:
    summary = segment_collection(tagged, queries_from=field, config=tiny_config, progress=False,
                                 label_field="own")  # fmt: skip
    own = {
        "lab_cls": [["red circle"]],
        "lab_multi": [["blue square", "red circle"]],
        "lab_boxes": [["green triangle"]],
        "tags": [["red circle"], ["multi"], ["boxes"]],
    }[field]
    targets = tagged.mask_targets["own"]
    car = get_car(tiny_config)
    done = tagged.exists("own")
    assert len(done) == len(own) and summary.processed == len(own)
    assert summary.skipped == 4 - len(own) and len(summary.no_queries) == 4 - len(own)
    assert set(summary.no_queries).isdisjoint(done.values("id"))
    for sample, queries in zip(done, own, strict=True):
        direct = car.segment(sample.filepath, queries)
        lut = np.array([0] + [{n: v for v, n in targets.items()}[q] for q in queries])
        np.testing.assert_array_equal(sample["own"].mask, lut[direct.label_map])
        assert [c.label for c in sample["own_scores"].classifications] == queries
    assert run_info(tagged, "own")["queries_from"] == field


def test_per_sample_queries_plus_free_text_share_one_set_of_values(tagged, tiny_config) -> None:
    segment_collection(tagged, ["sky"], queries_from="lab_multi", config=tiny_config,
                       progress=False, label_field="mix")  # fmt: skip
    assert tagged.mask_targets["mix"] == {1: "blue square", 2: "red circle", 3: "sky"}
    queried = {
        s.id: [c.label for c in s["mix_scores"].classifications] for s in tagged.exists("mix")
    }
    assert sorted(map(tuple, queried.values())) == [
        ("blue square", "red circle", "sky"),
        ("sky",),
        ("sky",),
        ("sky",),
    ]


def test_per_sample_queries_bad_input(tagged, tiny_config) -> None:
    with pytest.raises(ConfigError, match="queries_from='nope'"):
        segment_collection(tagged, queries_from="nope", config=tiny_config, progress=False)
    empty = fo.Dataset(f"cliprnn-test-{uuid.uuid4().hex[:8]}")
    try:
        empty.add_samples([fo.Sample(filepath=tagged.first().filepath)])
        with pytest.raises(QueryError, match="no sample has labels in 'tags'"):
            segment_collection(empty, queries_from="tags", config=tiny_config, progress=False)
    finally:
        empty.delete()


def test_labels_that_are_not_strings() -> None:
    from cliprnn.fiftyone.queries import _as_names

    assert _as_names(["cat", None, "  ", 3, 2.5, True, [["dog"]]]) == [
        "cat", "3", "2.5", "true", "dog"
    ]  # fmt: skip
    assert _as_names(None) == []
    with pytest.raises(QueryError, match="must be a string"):
        _as_names([{"label": "cat"}])


def test_skipped_samples_are_recorded_in_the_run(tagged, tiny_config) -> None:
    segment_collection(tagged, queries_from="lab_cls", config=tiny_config, progress=False,
                       label_field="rec")  # fmt: skip
    results = tagged.load_run_results("cliprnn_rec")
    assert len(results.no_queries) == 3 and results.skipped == 3 and results.processed == 1
    assert "rec_error" not in tagged.get_field_schema()  # skipped, not failed


# ------------------------------------------------------- stale copies and unapplied edits
def _stroke_cat(ds: fo.Dataset, sid: str, rows: slice, cols: slice) -> None:
    """Paint the first cat of sample ``sid`` over ``rows``/``cols`` as the App saves it."""
    sample = ds[sid]
    cat = next(d for d in sample["car_det"].detections if d.label == "cat")
    pixels = instance_pixels(cat, (48, 64))
    pixels[rows, cols] = True
    _app_save(cat, pixels)
    sample.save()


def _old_copy(ds: fo.Dataset, sid: str) -> fo.Detections:
    """The instances of ``sid`` as an App page that loaded them now would hold them."""
    return fo.Detections.from_dict(ds[sid]["car_det"].to_dict())


def _write_back(ds: fo.Dataset, sid: str, labels: fo.Detections) -> None:
    sample = ds[sid]
    sample["car_det"] = labels
    sample.save()


def _check_ok(ds: fo.Dataset) -> None:
    from cliprnn.fiftyone.check import check_field

    report = check_field(ds, "car")
    assert report.ok, report.broken


def test_a_stale_copy_written_back_after_a_trim_is_refused(labelled) -> None:
    sid = labelled.first().id
    stale = _old_copy(labelled, sid)
    _stroke_cat(labelled, sid, slice(2, 8), slice(20, 40))  # up into the sky
    out = apply_mask_edits(labelled, "car")
    assert out.trimmed == 1 and out.updated_ids == [sid]
    folded = _mask(labelled, sid)
    seg = labelled[sid]["car"]  # the fingerprints are kept out of the App's sight
    assert set(seg.to_dict()) <= {"_id", "_cls", "tags", "mask", "kept", "edited"}
    # a page still showing the untrimmed sky saves it back, with a new stroke on the cat
    cat = next(d for d in stale.detections if d.label == "cat")
    pixels = instance_pixels(cat, (48, 64))
    pixels[44:47, 2:20] = True
    _app_save(cat, pixels)
    _write_back(labelled, sid, stale)
    out = apply_mask_edits(labelled, "car")
    assert list(out.refused) == [sid] and out.updated == 0 and "sky" in out.refused[sid]
    assert "REFUSED" in out.message("car") and sid in out.message("car")
    np.testing.assert_array_equal(_mask(labelled, sid), folded)  # nothing folded in
    # the way out the message gives: rebuild the sample's instances, then edit again
    rebuild_instances(labelled.select(sid), "car", discard_edits=True)
    _stroke_cat(labelled, sid, slice(44, 47), slice(2, 20))
    assert apply_mask_edits(labelled, "car").updated_ids == [sid]
    assert (_mask(labelled, sid)[44:47, 2:20] == 1).all()
    _check_ok(labelled)


def test_a_stale_copy_written_back_after_a_rebuild_is_refused(labelled) -> None:
    sid = labelled.first().id
    stale = _old_copy(labelled, sid)
    out = rebuild_instances(labelled, "car")
    assert out.updated == 2 and not out.discarded
    assert not {d.id for d in labelled[sid]["car_det"].detections} & {
        d.id for d in stale.detections
    }
    _write_back(labelled, sid, stale)  # all four old instances back (the App's copy)
    out = apply_mask_edits(labelled, "car")
    assert list(out.refused) == [sid] and out.updated == 0


def test_a_stale_copy_written_back_after_a_class_edit_is_refused(labelled) -> None:
    sid = labelled.first().id
    stale = _old_copy(labelled, sid)
    edit_mask_classes(labelled, "car", delete=["sky"])
    _write_back(labelled, sid, stale)  # the deleted sky instance comes back
    out = apply_mask_edits(labelled, "car")  # refused for this sample, not a ConfigError
    assert list(out.refused) == [sid]
    assert "sky" not in labelled.mask_targets["car"].values()


def test_a_rebuild_refuses_to_discard_unapplied_edits(labelled) -> None:
    s0, s1 = labelled.values("id")
    _stroke_cat(labelled, s1, slice(44, 47), slice(2, 20))
    ids = {s: [d.id for d in labelled[s]["car_det"].detections] for s in (s0, s1)}
    with pytest.raises(ConfigError, match=rf"1 sample.*{s1}.*discard_edits=True"):
        rebuild_instances(labelled, "car")
    assert {s: [d.id for d in labelled[s]["car_det"].detections] for s in (s0, s1)} == ids
    assert unapplied_edits(labelled, "car") == [s1]
    out = rebuild_instances(labelled.select(s0), "car")  # the other sample alone: fine
    assert out.updated_ids == [s0] and [d.id for d in labelled[s1]["car_det"].detections] == ids[s1]
    out = rebuild_instances(labelled, "car", discard_edits=True)
    assert out.discarded == [s1] and unapplied_edits(labelled, "car") == []
    _check_ok(labelled)


def _values_agree(ds: fo.Dataset) -> None:
    by_name = {n: int(v) for v, n in ds.mask_targets["car"].items()}
    for sample in ds:
        for det in sample["car_det"].detections:
            assert det.value == by_name[det.label], (det.label, det.value)


def test_value_follows_the_class_after_every_operation(labelled) -> None:
    sid = labelled.first().id
    sample = labelled[sid]
    dets = sample["car_det"].detections
    dog = next(d for d in dets if d.label == "dog")
    dog.label = "cat"  # relabelled: still carries the dog's value
    dets.append(fo.Detection(label="sky", bounding_box=[0.0, 0.9, 0.1, 0.1]))  # drawn: no value
    sample.save()
    out = apply_mask_edits(labelled, "car")
    assert out.values_fixed == 2
    _values_agree(labelled)
    _check_ok(labelled)
    edit_mask_classes(labelled, "car", merge={"pet": ["cat", "dog"]})
    _values_agree(labelled)
    for s in labelled:  # a merged class is listed once, with its best score
        assert [(c.label, c.confidence) for c in s["car_scores"].classifications] == [
            ("pet", pytest.approx(0.9)), ("sky", pytest.approx(0.7)), ("cow", 0.0)
        ]  # fmt: skip
    _check_ok(labelled)
    edit_mask_classes(labelled, "car", rename={"sky": "air"})
    _values_agree(labelled)
    rebuild_instances(labelled, "car")
    _values_agree(labelled)
    _check_ok(labelled)


_KILLED_EDIT = """
import fiftyone as fo
from cliprnn.fiftyone import edit_mask_classes
ds = fo.load_dataset({name!r})
edit_mask_classes(ds, "car", merge={{"pet": ["cat", "dog"]}})
"""


def _class_dataset(make_dataset, tmp_path: Path, n: int = 6) -> fo.Dataset:
    """``n`` samples of ``labelled``'s kind, persistent (another process edits it); every
    other sample keeps its semantic mask in a PNG file."""
    from PIL import Image

    tmp_path.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(3, persistent=True)
    ds.add_samples([fo.Sample(filepath=s.filepath) for s in ds] * (n // 3 - 1))
    for i, sample in enumerate(ds):
        mask = _label_map(i)
        if i % 2:
            path = tmp_path / f"mask_{i}.png"
            Image.fromarray(mask).save(path)
            sample["car"] = fo.Segmentation(mask_path=str(path))
        else:
            sample["car"] = fo.Segmentation(mask=mask)
        sample["car_scores"] = fo.Classifications(
            classifications=[fo.Classification(label=n, confidence=c)
                             for n, c in (("cat", 0.9), ("dog", 0.8), ("sky", 0.7))]
        )  # fmt: skip
        sample.save()
    ds.mask_targets = {"car": dict(TARGETS)}
    ds.save()
    rebuild_instances(ds, "car")
    return ds


@pytest.mark.slow
def test_a_killed_class_edit_never_misnames_and_is_finished_by_the_next_call(
    make_dataset, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from cliprnn.fiftyone.edits import PENDING

    ds = _class_dataset(make_dataset, tmp_path / "a")
    ref = _class_dataset(make_dataset, tmp_path / "b")
    originals = {s.id: s["car"].get_mask().copy() for s in ds}
    merged = {"cat": "pet", "dog": "pet", "sky": "sky"}
    env = {**os.environ, "CLIPRNN_KILL_AT": "class_edit_sample:4"}
    script = _KILLED_EDIT.format(name=ds.name)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    ds.reload()
    assert ds.info[PENDING]["car"]["request"]["merge"] == {"pet": ["cat", "dog"]}
    # part done, yet every pixel of every sample names the class it will have
    targets = ds.mask_targets["car"]
    rewritten = 0
    for sample in ds:
        ds_mask, orig = sample["car"].get_mask(), originals[sample.id]
        rewritten += not np.array_equal(ds_mask, orig)
        for value in np.unique(orig[orig > 0]):
            names = {targets[int(v)] for v in np.unique(ds_mask[orig == value])}
            assert names == {merged[TARGETS[int(value)]]}, (sample.id, value, names)
    assert 0 < rewritten < len(ds)  # the kill came part way
    # the interrupted call again: it finishes the edit, as if never interrupted
    targets = edit_mask_classes(ds, "car", merge={"pet": ["cat", "dog"]})
    want = edit_mask_classes(ref, "car", merge={"pet": ["cat", "dog"]})
    assert targets == want == {1: "pet", 3: "sky"} and PENDING not in ds.info
    for a, b in zip(ds, ref, strict=True):
        np.testing.assert_array_equal(a["car"].get_mask(), b["car"].get_mask())
        assert [(d.label, d.value) for d in a["car_det"].detections] == [
            (d.label, d.value) for d in b["car_det"].detections
        ]
        assert [c.label for c in a["car_scores"].classifications] == ["pet", "sky"]
        assert not a["car"].has_field("class_edit")  # a merge needs no marker: idempotent
    _check_ok(ds)


# ------------------------------------------------------------ the operators' forms and runs
URI = "@cliprnn/clip-as-rnn/apply_mask_edits"


def _form(ds: fo.Dataset, params: dict, uri: str = URI, **request) -> dict:
    """The form's properties of operator ``uri`` (default Apply mask edits) for ``params``
    (``request``: current_sample, selected, active_fields as the App sends them)."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext({"dataset_name": ds.name, "params": params, **request}, operator_uri=uri)
    return foo.get_operator(uri).resolve_input(ctx).type.properties


def _label(prop) -> str:
    return getattr(prop.view, "label", "") or ""


def _run(ds: fo.Dataset, params: dict, **request) -> tuple[dict, list[dict]]:
    import fiftyone.operators as foo

    out = foo.execute_operator(URI, dict(dataset=ds, params=params, **request)).to_json()
    assert not out["error"], out["error"]
    return out["result"], out["executor"]["requests"]


def test_apply_says_in_a_warning_when_nothing_was_folded(labelled) -> None:
    sid = labelled.first().id
    result, requests = _run(labelled, {"label_field": "car"}, current_sample=sid)
    assert result["variant"] == "warning" and "Nothing was folded" in result["message"]
    assert [r["params"]["variant"] for r in requests if r["operator_uri"] == "notify"] == [
        "warning"
    ]
    assert not any(r["operator_uri"].endswith("refresh_samples") for r in requests)


def test_apply_has_the_app_refresh_exactly_the_samples_it_rewrote(labelled) -> None:
    s0, s1 = labelled.values("id")
    _stroke_cat(labelled, s1, slice(44, 47), slice(2, 20))
    params = {"label_field": "car", "scope": "target"}
    result, requests = _run(labelled, params, current_sample=s0)
    assert result["variant"] == "success" and result["updated"] == 1
    called = [r["operator_uri"] for r in requests]
    assert called.index("close_sample") < called.index("@cliprnn/clip-as-rnn/refresh_samples")
    (refresh,) = [r["params"] for r in requests if r["operator_uri"].endswith("refresh_samples")]
    assert refresh == {"ids": [s1], "reopen": s0}
    assert "reload the page" not in result["message"]


def test_the_forms_say_what_they_touch_and_default_to_the_open_sample(labelled) -> None:
    s0, s1 = labelled.values("id")
    props = _form(labelled, {"direction": "to_detections"}, current_sample=s0)
    assert "on the open sample" in _label(props["touches"])
    assert props["scope"].default == "sample"
    props = _form(labelled, {"direction": "to_detections", "scope": "target"}, current_sample=s0)
    assert "the whole dataset (2 samples)" in _label(props["touches"])
    assert "'car_det'" in _label(props["touches"]) and "'car'" in _label(props["touches"])
    # unapplied edits on the other sample: named, and Execute refused until allowed
    _stroke_cat(labelled, s1, slice(44, 47), slice(2, 20))
    params = {"direction": "to_detections", "scope": "target"}
    props = _form(labelled, params, current_sample=s0)
    assert props["unapplied"].invalid and s1 in _label(props["unapplied"])
    props = _form(labelled, {**params, "discard_edits": True}, current_sample=s0)
    assert "unapplied" not in props
    # the open sample alone has none: nothing to refuse
    assert "unapplied" not in _form(labelled, {"direction": "to_detections"}, current_sample=s0)


def test_apply_preselects_the_pair_edited_last(labelled) -> None:
    for sample in labelled:
        sample["car_2"] = fo.Segmentation(mask=sample["car"].get_mask())
        sample.save()
    labelled.mask_targets = {**labelled.mask_targets, "car_2": dict(TARGETS)}
    labelled.save()
    rebuild_instances(labelled, "car_2")
    s1 = labelled.values("id")[1]
    assert _form(labelled, {}, current_sample=s1)["label_field"].default == "car"
    sample = labelled[s1]
    cat = next(d for d in sample["car_2_det"].detections if d.label == "cat")
    pixels = instance_pixels(cat, (48, 64))
    pixels[44:47, 2:20] = True
    _app_save(cat, pixels)
    sample.save()
    props = _form(labelled, {}, current_sample=s1)  # the open sample's edited pair
    assert props["label_field"].default == "car_2"
    assert props["detections_field"].default == "car_2_det"
    assert _form(labelled, {})["label_field"].default == "car_2"  # the last modified sample's
    result, _ = _run(labelled, {"label_field": "car_2", "detections_field": "car_2_det"})
    assert result["updated"] == 1 and result["variant"] == "success"


def test_rename_onto_an_existing_class_says_it_merges(labelled) -> None:
    uri = "@cliprnn/clip-as-rnn/edit_mask_classes"
    params = {"label_field": "car", "action": "rename", "classes": ["dog"], "new_name": "cat"}
    props = _form(labelled, params, uri)
    assert "merges them into 'cat'" in _label(props["merge_warning"])
    assert "merge_warning" not in _form(labelled, {**params, "new_name": "puppy"}, uri)
    assert "'car_det'" in _label(props["scope"]) and "2 with 'car'" in _label(props["scope"])


def test_apply_on_a_video_dataset_says_frame_fields_are_unsupported(tmp_path: Path) -> None:
    ds = fo.Dataset(f"cliprnn-test-{uuid.uuid4().hex[:8]}")
    try:
        ds.add_sample(fo.Sample(filepath=str(tmp_path / "clip.mp4")))
        props = _form(ds, {})
        assert props["video"].invalid and "frame fields" in _label(props["video"])
    finally:
        ds.delete()


def test_a_swap_of_two_class_names_killed_part_way_is_finished_once(
    make_dataset, tmp_path: Path
) -> None:
    import subprocess
    import sys

    ds = _class_dataset(make_dataset, tmp_path)
    script = (
        "import fiftyone as fo\n"
        "from cliprnn.fiftyone import edit_mask_classes\n"
        f"ds = fo.load_dataset({ds.name!r})\n"
        "edit_mask_classes(ds, 'car', rename={'cat': 'dog', 'dog': 'cat'})\n"
    )
    env = {**os.environ, "CLIPRNN_KILL_AT": "class_edit_sample:4"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    ds.reload()
    edit_mask_classes(ds, "car", rename={"cat": "dog", "dog": "cat"})  # finishes, not re-swaps
    assert ds.mask_targets["car"] == {1: "dog", 2: "cat", 3: "sky"}
    for sample in ds:
        by_value = {d.value: d.label for d in sample["car_det"].detections}
        assert by_value == {1: "dog", 2: "cat", 3: "sky"}, sample.id
    _check_ok(ds)
