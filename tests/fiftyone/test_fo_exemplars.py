"""Queries made of pictures on a real FiftyOne database: exemplar sets from views and patches,
stored by id on the dataset (listed, renamed, deleted, reloaded in a new process), clear errors
for deleted samples and unknown names, the ``exemplar_sets`` operator and the segment form,
and a segmentation run whose mask targets name the set."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionContext
from fresh_process import probe_json

from cliprnn.errors import ConfigError, QueryError
from cliprnn.exemplars import Exemplars, pixel_box
from cliprnn.fiftyone.exemplar_sets import (
    STORE,
    delete_exemplar_set,
    exemplars_from,
    list_exemplar_sets,
    load_exemplar_set,
    rename_exemplar_set,
    save_exemplar_set,
)

pytestmark = pytest.mark.fiftyone

URI = "@cliprnn/clip-as-rnn"
OPERATOR = f"{URI}/exemplar_sets"
SEGMENT = f"{URI}/segment"
OBJECTS = "objects"  # the scenes' instances, a Detections field with masks


@pytest.fixture
def scenes(tmp_path: Path, scenes_dataset):
    """Four persistent 48×64 scenes with their instances in ``objects`` (masks in the boxes)."""
    ds = scenes_dataset(tmp_path / "scenes", range(3000, 3004), (48, 64), "cliprnn-exemplars")
    targets = ds.mask_targets["ground_truth"]
    gts = ds.values("ground_truth")
    ds.set_values(OBJECTS, [gt.to_detections(mask_targets=targets) for gt in gts])
    yield ds
    if fo.dataset_exists(ds.name):
        fo.delete_dataset(ds.name)


def _masks(exemplars: Exemplars) -> list:
    return [None if m is None else np.asarray(m).tolist() for m in exemplars.masks]


# ------------------------------------------------------------------------ stored sets, SDK
def test_a_selection_is_stored_listed_renamed_and_deleted(scenes) -> None:
    ids = scenes.values("id")
    chosen = scenes.select(ids[1:3])
    info = save_exemplar_set(scenes, " mascot ", chosen)
    assert (info["count"], info["samples"], info["source"], info["field"]) == (
        2,
        2,
        "samples",
        None,
    )
    assert dt.datetime.fromisoformat(info["created_at"]).tzinfo is not None
    assert list_exemplar_sets(scenes) == {"mascot": info}

    ex = load_exemplar_set(scenes, "mascot")
    assert isinstance(ex, Exemplars) and ex.name == "mascot"
    assert list(ex.images) == chosen.values("filepath") and ex.boxes is None and ex.masks is None

    assert rename_exemplar_set(scenes, "mascot", "pet") == info
    assert list(list_exemplar_sets(scenes)) == ["pet"]
    assert list(load_exemplar_set(scenes, "pet").images) == chosen.values("filepath")
    delete_exemplar_set(scenes, "pet")
    assert list_exemplar_sets(scenes) == {}


_PROBE = """
import json, sys
import fiftyone as fo
from cliprnn.fiftyone.exemplar_sets import list_exemplar_sets, load_exemplar_set
ds = fo.load_dataset(sys.argv[1])
ex = load_exemplar_set(ds, "mascot")
print(json.dumps({"sets": list(list_exemplar_sets(ds)), "images": [str(i) for i in ex.images]}))
"""


def test_a_stored_set_survives_a_reload_and_a_new_process_and_sees_moved_files(
    scenes, tmp_path: Path
) -> None:
    save_exemplar_set(scenes, "mascot", scenes.limit(2))
    first, second = scenes.limit(2)
    moved = tmp_path / "moved.png"
    shutil.copy(first.filepath, moved)
    first.filepath = str(moved)
    first.save()
    scenes.reload()
    fresh = fo.load_dataset(scenes.name)
    assert list(load_exemplar_set(fresh, "mascot").images) == [str(moved), second.filepath]
    got = probe_json(_PROBE, scenes.name)
    assert got == {"sets": ["mascot"], "images": [str(moved), second.filepath]}


def test_patches_give_boxes_and_masks(scenes) -> None:
    patches = scenes.to_patches(OBJECTS)
    chosen = patches.skip(1).limit(3)
    dets = chosen.values(OBJECTS)
    ex = exemplars_from(chosen, "blob")
    assert [list(b) for b in ex.boxes] == [d.bounding_box for d in dets]
    assert _masks(ex) == [d.mask.tolist() for d in dets]
    assert list(ex.images) == chosen.values("filepath")

    info = save_exemplar_set(scenes, "blob", chosen)
    assert (info["count"], info["source"], info["field"]) == (3, "patches", OBJECTS)
    assert info["samples"] == len(set(chosen.values("sample_id")))
    loaded = load_exemplar_set(scenes, "blob")
    assert [list(b) for b in loaded.boxes] == [list(b) for b in ex.boxes]
    assert _masks(loaded) == _masks(ex) and loaded.images == ex.images
    # each crop is its box, in pixels (the engine fills pixels outside the mask)
    for crop, box, det in zip(loaded.crops(), loaded.boxes, dets, strict=True):
        x0, y0, x1, y1 = pixel_box(box, (48, 64), "test")
        assert crop.shape == (y1 - y0, x1 - x0, 3)
        assert det.mask.any()

    # the labels' current boxes are used: an edited box is seen at the next load
    edited = chosen.first()[OBJECTS].id
    sample = scenes[chosen.first().sample_id]
    for det in sample[OBJECTS].detections:
        if det.id == edited:
            det.bounding_box = [0.0, 0.0, 0.5, 0.5]
            det.mask = None
    sample.save()
    again = load_exemplar_set(scenes, "blob")
    assert list(again.boxes[0]) == [0.0, 0.0, 0.5, 0.5] and again.masks[0] is None


def test_deleted_samples_and_labels_are_named(scenes) -> None:
    ids = scenes.values("id")
    save_exemplar_set(scenes, "whole", scenes)
    patches = scenes.to_patches(OBJECTS)
    parts = patches.limit(2)
    assert ids[3] not in parts.values("sample_id")
    save_exemplar_set(scenes, "parts", parts)
    scenes.delete_samples(ids[3])
    with pytest.raises(
        QueryError, match=f"1 of its samples was deleted since it was saved: {ids[3]}"
    ):
        load_exemplar_set(scenes, "whole")
    assert len(load_exemplar_set(scenes, "parts").images) == 2  # its samples are all there

    label, owner = parts.values("id")[1], parts.values("sample_id")[1]
    scenes.delete_labels(ids=[label], fields=OBJECTS)
    with pytest.raises(
        QueryError, match=rf"1 of its labels of 'objects' was deleted .*: {label} \(sample {owner}"
    ):
        load_exemplar_set(scenes, "parts")
    assert set(list_exemplar_sets(scenes)) == {"whole", "parts"}  # listed until deleted
    save_exemplar_set(scenes, "whole", scenes, overwrite=True)  # saved again: loads
    assert len(load_exemplar_set(scenes, "whole").images) == 3


def test_empty_views_videos_and_blank_names_are_refused(scenes) -> None:
    for bad in ("", "   ", None):
        with pytest.raises(QueryError, match="non-empty name"):
            exemplars_from(scenes, bad)
        with pytest.raises(QueryError, match="non-empty name"):
            save_exemplar_set(scenes, bad, scenes)
    with pytest.raises(QueryError, match="'x': the view has no samples; select some"):
        save_exemplar_set(scenes, "x", scenes.limit(0))
    with pytest.raises(QueryError, match="the view has no patches"):
        exemplars_from(scenes.to_patches(OBJECTS).limit(0), "x")
    video = fo.Dataset()
    other = fo.Dataset()
    try:
        video.add_sample(fo.Sample(filepath="/nonexistent/clip.mp4"))
        with pytest.raises(QueryError, match="media type is 'video'"):
            exemplars_from(video, "x")
        other.add_sample(fo.Sample(filepath=scenes.first().filepath))
        with pytest.raises(QueryError, match=f"belongs to dataset '{other.name}'"):
            save_exemplar_set(scenes, "x", other.view())
        assert list_exemplar_sets(other) == {}
    finally:
        video.delete()
        other.delete()
    assert list_exemplar_sets(scenes) == {}


def test_unknown_and_taken_names_list_the_known_sets(scenes) -> None:
    save_exemplar_set(scenes, "a", scenes.limit(1))
    save_exemplar_set(scenes, "b", scenes.limit(2))
    unknown = f"dataset '{scenes.name}' has no exemplar set 'zzz'; its sets: 'a', 'b'"
    for call in (load_exemplar_set, delete_exemplar_set):
        with pytest.raises(QueryError, match=unknown):
            call(scenes, "zzz")
    with pytest.raises(QueryError, match=unknown):
        rename_exemplar_set(scenes, "zzz", "c")
    with pytest.raises(QueryError, match="set 'b' exists; choose a name not among 'a', 'b'"):
        rename_exemplar_set(scenes, "a", "B")  # queries are told apart without case
    with pytest.raises(QueryError, match="already has an exemplar set 'a'"):
        save_exemplar_set(scenes, "A", scenes)
    assert list_exemplar_sets(scenes)["a"]["count"] == 1  # unchanged
    save_exemplar_set(scenes, "A", scenes, overwrite=True)
    rename_exemplar_set(scenes, "b", "B")  # a set may change its own case
    sets = list_exemplar_sets(scenes)
    assert list(sets) == ["A", "B"] and sets["A"]["count"] == 4


def test_sets_follow_a_rename_and_a_clone_and_go_with_their_dataset(scenes) -> None:
    from fiftyone.operators.store import ExecutionStore

    save_exemplar_set(scenes, "mascot", scenes.limit(2))
    scenes.name = f"{scenes.name}-renamed"  # the sets follow the dataset's id, not its name
    assert list(list_exemplar_sets(fo.load_dataset(scenes.name))) == ["mascot"]
    clone = scenes.clone()
    try:
        assert (
            load_exemplar_set(clone, "mascot").images == load_exemplar_set(scenes, "mascot").images
        )  # a clone keeps sample ids, and the sets with them
        delete_exemplar_set(clone, "mascot")
        assert list(list_exemplar_sets(scenes)) == ["mascot"]
    finally:
        clone_id = clone._doc.id
        clone.delete()
    scenes_id = scenes._doc.id
    scenes.delete()  # a deleted dataset takes its sets along
    for gone in (clone_id, scenes_id):
        assert ExecutionStore.create(STORE, dataset_id=gone).list_keys() == []


# ------------------------------------------------------------------------------- operator
def _form(uri: str, coll, params: dict, selected: list[str] | None = None) -> dict:
    view = coll.view() if isinstance(coll, fo.Dataset) else coll
    req = dict(dataset_name=view._root_dataset.name, view=view._serialize(), params=params,
               selected=selected or [])  # fmt: skip
    return foo.get_operator(uri).resolve_input(ExecutionContext(request_params=req)).type.properties


def _run(coll, params: dict, selected: list[str] | None = None) -> dict:
    key = "dataset" if isinstance(coll, fo.Dataset) else "view"
    ctx = {key: coll, "selected": selected or [], "params": params}
    return foo.execute_operator(OPERATOR, ctx=ctx).result


def test_the_operator_stores_the_selection_renames_and_deletes(scenes) -> None:
    ids = scenes.values("id")
    out = _run(scenes, dict(name="mascot"), ids[1:3])
    assert out["message"] == "Stored the exemplar set mascot (2 samples)"
    assert list(load_exemplar_set(scenes, "mascot").images) == scenes.select(ids[1:3]).values(
        "filepath"
    )
    # in a patches view the App's selection is patch ids
    patches = scenes.to_patches(OBJECTS)
    pids = patches.values("id")[2:4]
    out = _run(patches, dict(action="save", name="parts"), pids)
    assert out["message"] == "Stored the exemplar set parts (2 patches of 'objects')"
    assert out["sets"] == ["mascot", "parts"]
    boxes = patches.select(pids).values(f"{OBJECTS}.bounding_box")
    assert [list(b) for b in load_exemplar_set(scenes, "parts").boxes] == boxes

    out = _run(scenes, dict(action="rename", set_name="mascot", new_name="pet"))
    assert out["sets"] == ["parts", "pet"]
    out = _run(scenes, dict(action="delete", set_name="parts"))
    assert out["message"] == "Deleted the exemplar set 'parts'" and out["sets"] == ["pet"]
    with pytest.raises(Exception, match="set 'pet' exists: tick Replace"):  # the form refuses
        _run(scenes, dict(name="PET"), ids[:1])


def test_the_form_asks_for_a_selection_and_a_free_name_and_lists_the_sets(scenes) -> None:
    ids = scenes.values("id")
    props = _form(OPERATOR, scenes, {})
    assert props["no_selection"].invalid and "Select samples in the grid" in (
        props["no_selection"].error_message
    )
    assert "name" not in props and "action" not in props  # nothing stored: only Save
    props = _form(OPERATOR, scenes, {"name": "mascot"}, ids[:2])
    assert props["selection"].view.label == "Exemplars: the 2 samples selected"
    assert props["name"].required and not [p for p in props.values() if p.invalid]
    props = _form(OPERATOR, scenes.to_patches(OBJECTS), {}, [])
    assert "Select patches of 'objects'" in props["no_selection"].error_message

    save_exemplar_set(scenes, "mascot", scenes.limit(1))
    props = _form(OPERATOR, scenes, {"name": " MASCOT"}, ids[:2])
    assert "mascot (1 sample)" in props["stored_sets"].default
    assert [c.value for c in props["action"].view.choices] == ["save", "rename", "delete"]
    assert props["name_error"].invalid and "'mascot' exists" in props["name_error"].error_message
    props = _form(OPERATOR, scenes, {"name": "mascot", "overwrite": True}, ids[:2])
    assert "name_error" not in props and props["overwrite"].type is not None
    props = _form(OPERATOR, scenes, {"name": "  "}, ids[:2])
    assert props["name_error"].invalid

    save_exemplar_set(scenes, "other", scenes.limit(2))
    props = _form(OPERATOR, scenes, {"action": "rename", "set_name": "mascot",
                                     "new_name": "Other"})  # fmt: skip
    assert props["name_error"].invalid and "'other' exists" in props["name_error"].error_message
    props = _form(OPERATOR, scenes, {"action": "rename", "set_name": "mascot",
                                     "new_name": "Mascot"})  # fmt: skip
    assert "name_error" not in props and "name" not in props
    assert [c.label for c in props["set_name"].view.choices] == [
        "mascot (1 sample)",
        "other (2 samples)",
    ]
    props = _form(OPERATOR, scenes, {"action": "delete", "set_name": "other"})
    assert "'other'" in props["delete_warning"].view.label


def test_the_form_refuses_a_video_dataset() -> None:
    video = fo.Dataset()
    try:
        video.add_sample(fo.Sample(filepath="/nonexistent/clip.mp4"))
        props = _form(OPERATOR, video, {}, [video.first().id])
        assert props["source_error"].invalid and "video" in props["source_error"].error_message
    finally:
        video.delete()


def test_segment_form_offers_stored_sets_and_text_becomes_optional(scenes) -> None:
    from operators.segment_params import run_kwargs

    props = _form(SEGMENT, scenes, {"preset": "mini"})
    assert "exemplar_sets" not in props  # none stored: the form is as before
    ids = scenes.values("id")
    save_exemplar_set(scenes, "mascot", scenes.select(ids[:2]))
    props = _form(SEGMENT, scenes, {"preset": "mini"})
    assert [c.label for c in props["exemplar_sets"].view.choices] == ["mascot (2 samples)"]
    assert props["query_text"].required is True
    props = _form(SEGMENT, scenes, {"preset": "mini", "exemplar_sets": ["mascot"]})
    assert props["query_text"].required is False
    assert not [p for p in props.values() if p.invalid]

    kwargs = run_kwargs({"query_text": "sky", "exemplar_sets": ["mascot"]}, scenes)
    assert kwargs["queries"][0] == "sky" and kwargs["queries"][1].name == "mascot"
    with pytest.raises(ConfigError, match=r"exemplar sets \['mascot'\] need the dataset"):
        run_kwargs({"exemplar_sets": ["mascot"]})

    scenes.delete_samples(ids[1])
    props = _form(SEGMENT, scenes, {"preset": "mini", "exemplar_sets": ["mascot"]})
    assert props["exemplar_sets_error"].invalid and ids[1] in (
        props["exemplar_sets_error"].error_message
    )


def test_a_scheduled_run_carries_only_the_set_names(scenes) -> None:
    from fiftyone.operators.delegated import DelegatedOperationService

    save_exemplar_set(scenes, "mascot", scenes.limit(2))
    result = foo.get_operator(SEGMENT)(
        scenes, queries=["sky"], exemplar_sets=["mascot"], preset="mini", delegate=True
    )
    svc = DelegatedOperationService()
    try:
        params = svc.get(result.result["id"]).context.request_params["params"]
        assert params["exemplar_sets"] == ["mascot"]  # loaded by the worker, when it runs
        assert not [v for v in params.values() if "scene_" in json.dumps(v)]  # no file paths
    finally:
        svc.delete_operation(result.result["id"])
    # split into jobs: planned here, the set loaded from the dataset once, for every job
    from cliprnn.fiftyone import cancel_run

    # (into another field: the deleted run's reservation of 'car' holds for its grace period)
    plan = foo.get_operator(SEGMENT)(
        scenes, exemplar_sets=["mascot"], preset="mini", shards=2, delegate=True,
        label_field="sharded",
    ).result  # fmt: skip
    try:
        assert len(plan["operations"]) == 2
        scenes.reload()
        assert scenes.mask_targets["sharded"] == {1: "mascot"}
    finally:
        cancel_run(scenes, "sharded")


# ------------------------------------------------------------------------------ a real run
def test_a_run_with_a_stored_set_names_it_in_the_mask_targets(scenes) -> None:
    from cliprnn.fiftyone import segment_collection

    patches = scenes.to_patches(OBJECTS)
    label = patches.first()[OBJECTS].label  # the objects of one class are the exemplars
    save_exemplar_set(scenes, "mascot", patches.match(fo.ViewField(f"{OBJECTS}.label") == label))
    summary = segment_collection(
        scenes,
        queries=["blue square", load_exemplar_set(scenes, "mascot")],
        label_field="car",
        config="mini",
        outputs=["segmentation"],
        progress=False,
    )
    assert summary.processed == len(scenes)
    assert scenes.mask_targets["car"] == {1: "blue square", 2: "mascot"}
    assert scenes.count("car") == len(scenes)

    # the operator's path (the App's, and its SDK call): params name the set, it loads it
    foo.get_operator(SEGMENT)(
        scenes,
        queries=["blue square"],
        exemplar_sets=["mascot"],
        preset="mini",
        label_field="car_op",
        outputs=["segmentation"],
    )
    assert scenes.mask_targets["car_op"] == scenes.mask_targets["car"]
    for a, b in zip(scenes.values("car.mask"), scenes.values("car_op.mask"), strict=True):
        np.testing.assert_array_equal(a, b)
