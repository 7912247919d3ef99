"""Exemplar queries through segment_collection and sharded runs (the SDK side of #13)."""

from __future__ import annotations

import numpy as np
import pytest

from cliprnn.errors import QueryError
from cliprnn.exemplars import Exemplars
from cliprnn.fiftyone import queue_sharded_run, run_info, segment_collection
from cliprnn.fiftyone.shards import run_shard

pytestmark = [pytest.mark.fiftyone]


def _mascot(scene_files, name: str = "mascot") -> Exemplars:
    return Exemplars(name, [str(scene_files[4]), str(scene_files[5])],
                     boxes=[[0.1, 0.1, 0.5, 0.6], None])  # fmt: skip


def test_mask_targets_name_the_exemplar_query_and_the_record_says_where(
    make_dataset, scene_files, tiny_config
) -> None:
    ds = make_dataset(3)
    summary = segment_collection(
        ds, ["red circle", _mascot(scene_files), "blue square"], label_field="car",
        config=tiny_config, outputs=["segmentation", "detections"],
    )  # fmt: skip
    assert summary.processed == 3 and summary.failed == 0
    assert ds.mask_targets["car"] == {1: "red circle", 2: "mascot", 3: "blue square"}
    assert "mascot" in ds.classes["car_det"]
    assert ds.count("car") == 3
    values = set(np.unique(np.concatenate([s.car.mask.ravel() for s in ds.select_fields("car")])))
    assert values <= {0, 1, 2, 3}
    record = run_info(ds, "car")
    assert record["exemplars"]["mascot"]["images"] == 2
    assert record["exemplars"]["mascot"]["paths"] == [str(scene_files[4]), str(scene_files[5])]
    assert record["queries"] == ["red circle", "mascot", "blue square"]


def test_exemplar_names_may_not_shadow_any_text_query(make_dataset, scene_files, tiny_config):
    ds = make_dataset(2)
    with pytest.raises(QueryError, match="name of a text query"):
        segment_collection(ds, ["mascot", _mascot(scene_files)], config=tiny_config)
    ds.default_mask_targets = {1: "Mascot", 2: "dog"}
    ds.save()
    with pytest.raises(QueryError, match="classes of 'default_mask_targets'"):
        segment_collection(ds, [_mascot(scene_files)], classes_from="default_mask_targets",
                           config=tiny_config)  # fmt: skip
    sample = ds.first()
    sample.tags.append("mascot")
    sample.save()
    with pytest.raises(QueryError, match="labels in 'tags'"):
        segment_collection(ds, [_mascot(scene_files)], queries_from="tags", config=tiny_config)
    assert "cliprnn" not in ds.get_field_schema()  # nothing written


def test_a_sharded_run_carries_the_exemplars_to_its_shards(
    make_dataset, scene_files, tiny_config
) -> None:
    ds = make_dataset(4, persistent=True)
    queries = ["red circle", _mascot(scene_files)]
    segment_collection(ds, queries, label_field="ref", config=tiny_config)
    plan = queue_sharded_run(ds, 2, queue=False, queries=queries, label_field="car",
                             config=tiny_config)  # fmt: skip
    for shard in range(2):
        assert run_shard(ds, plan.run_id, shard)["state"] == "completed"
    ds.reload()
    assert ds.mask_targets["car"] == ds.mask_targets["ref"] == {1: "red circle", 2: "mascot"}
    for sample in ds.select_fields(["car", "ref"]):
        np.testing.assert_array_equal(sample.car.mask, sample.ref.mask)
    # exemplars held only in memory cannot travel to another process
    pixels = Exemplars("pixels", [np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(QueryError, match="in-memory image"):
        queue_sharded_run(ds, 2, queue=False, queries=["dog", pixels], label_field="other",
                          config=tiny_config)  # fmt: skip
