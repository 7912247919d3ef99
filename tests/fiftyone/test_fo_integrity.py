"""An operation changes only what it targets: subset overwrites keep the field's classes, runs
decide under the field's lock, and check_field finds every sample whose labels disagree."""

from __future__ import annotations

import pytest
from meaning import class_pixels, field_targets

from cliprnn.errors import ConfigError
from cliprnn.fiftyone import SegmentationRun, segment_collection
from cliprnn.fiftyone.check import check_field

pytestmark = [pytest.mark.fiftyone]

FIRST = ["red circle", "blue square", "green triangle", "yellow star", "purple cross"]
SECOND = ["orange diamond", "blue square", "cyan ring"]
OUTPUTS = ["segmentation", "detections"]


def meanings(ds, field: str) -> dict[str, dict[str, int]]:
    """Per sample: class name -> pixel count of its semantic mask, read through mask_targets
    (what the user sees when hovering)."""
    targets = field_targets(ds, field)
    return {
        sid: class_pixels(seg.get_mask(), targets)
        for sid, seg in zip(*ds.values(["id", field]), strict=True)
        if seg is not None
    }


def run(coll, queries, tiny_config, **kw):
    return segment_collection(
        coll, queries, label_field="car", config=tiny_config, outputs=OUTPUTS, progress=False, **kw
    )


def test_overwrite_on_one_sample_keeps_every_other_sample_meaning(make_dataset, tiny_config):
    ds = make_dataset(4)
    run(ds, FIRST, tiny_config)
    before = meanings(ds, "car")
    old_targets = dict(ds.mask_targets["car"])
    target = ds.first().id

    run(ds.select(target), SECOND, tiny_config, overwrite=True)

    ds.reload()
    after = meanings(ds, "car")
    for sid, classes in before.items():
        if sid != target:
            assert after[sid] == classes, sid
    targets = ds.mask_targets["car"]
    for value, name in old_targets.items():  # old classes keep their values
        assert targets[value] == name
    assert set(targets.values()) == set(FIRST) | set(SECOND)
    assert set(after.get(target, {})) <= set(SECOND)
    assert set(ds.classes["car_det"]) == set(FIRST) | set(SECOND)
    report = check_field(ds, "car")
    assert report.ok, report.summary()
    assert report.checked == 4


def test_overwrite_of_every_sample_replaces_the_classes(make_dataset, tiny_config):
    ds = make_dataset(2)
    run(ds, FIRST, tiny_config)
    run(ds, SECOND, tiny_config, overwrite=True)
    ds.reload()
    assert sorted(ds.mask_targets["car"].values()) == sorted(SECOND)
    assert check_field(ds, "car").ok


def test_a_run_planned_before_another_wrote_the_field_refuses_to_overwrite_it(
    make_dataset, tiny_config
):
    ds = make_dataset(3)
    late = SegmentationRun(ds, FIRST, label_field="car", config=tiny_config, load_model=False)
    run(ds, SECOND, tiny_config)  # written between the late run's checks and its lock
    written = meanings(ds, "car")
    with pytest.raises(ConfigError, match="already exists"):
        list(late)
    ds.reload()
    assert meanings(ds, "car") == written


def test_a_run_planned_before_another_filled_a_disjoint_subset_keeps_its_classes(
    make_dataset, tiny_config
):
    ds = make_dataset(4)
    ids = ds.values("id")
    late = SegmentationRun(
        ds.select(ids[:2]),
        FIRST,
        label_field="car",
        config=tiny_config,
        outputs=OUTPUTS,
        skip_existing=True,
    )
    run(ds.select(ids[2:]), SECOND, tiny_config)
    other = meanings(ds, "car")
    late.run(progress=False)
    ds.reload()
    after = meanings(ds, "car")
    for sid in ids[2:]:
        assert after[sid] == other[sid]
    assert set(ds.mask_targets["car"].values()) == set(FIRST) | set(SECOND)
    assert check_field(ds, "car").ok


def test_check_field_reports_each_kind_of_broken_sample(make_dataset, tiny_config):
    import fiftyone as fo

    ds = make_dataset(4)
    run(ds, FIRST, tiny_config)
    samples = list(ds)
    assert check_field(ds, "car").ok
    # (a) a mask value that no class names
    mask = samples[0]["car"].get_mask().copy()
    mask[0, 0] = 200
    samples[0]["car"] = fo.Segmentation(mask=mask)
    samples[0].save()
    # (a) an instance whose value is not its class's
    det = samples[1]["car_det"].detections[0]
    det["value"] = int(det["value"]) + 1
    samples[1].save()
    # (b) instances and semantic mask disagree (an unapplied stroke)
    samples[2]["car_det"].detections = samples[2]["car_det"].detections[1:]
    samples[2].save()
    report = check_field(ds, "car")
    assert set(report.broken) == {s.id for s in samples[:3]}
    assert "not classes of the field" in " ".join(report.broken[samples[0].id])
    assert "value" in " ".join(report.broken[samples[1].id])
    assert "disagree" in " ".join(report.broken[samples[2].id])
    assert samples[0].id in report.summary()


def test_specks_are_merged_into_their_surroundings_in_mask_and_instances(make_dataset, tiny_config):
    import fiftyone as fo

    from cliprnn.fiftyone.engine import get_car
    from cliprnn.fiftyone.instances import instance_pixels
    from cliprnn.regions import merge_small_regions

    config = tiny_config.replace(min_region_pixels=16)
    ds = make_dataset(3)
    segment_collection(ds, FIRST, label_field="car", config=config, outputs=OUTPUTS,
                       progress=False)  # fmt: skip
    car = get_car(tiny_config)
    raw_regions = 0
    for sample in ds:
        direct = car.segment(sample.filepath, FIRST)
        raw = fo.Segmentation(mask=direct.label_map.astype("uint8")).to_detections(
            mask_targets={i + 1: q for i, q in enumerate(FIRST)}, mask_types="thing"
        )
        raw_regions += len(raw.detections)
        merged = merge_small_regions(direct.label_map, 16)
        assert (sample["car"].get_mask() == merged).all()
        hw = merged.shape
        sizes = [int(instance_pixels(d, hw).sum()) for d in sample["car_det"].detections]
        assert min(sizes, default=16) >= 16
    assert raw_regions > len(ds.values("car_det.detections", unwind=True))
    assert check_field(ds, "car").ok


def test_an_old_copy_of_instances_an_overwrite_replaced_is_refused_by_the_fold_back(
    make_dataset, tiny_config
):
    import fiftyone as fo

    from cliprnn.fiftyone import apply_mask_edits

    ds = make_dataset(2)
    run(ds, FIRST, tiny_config)
    sample = ds.first()
    stale = sample["car_det"].to_dict()  # what an App page opened before the overwrite holds
    run(ds.select(sample.id), SECOND, tiny_config, overwrite=True)
    written = meanings(ds, "car")
    sample.reload()
    sample["car_det"] = fo.Detections.from_dict(stale)  # the App saves its old copy back
    sample.save()
    result = apply_mask_edits(ds, "car")
    assert sample.id in result.refused
    ds.reload()
    assert meanings(ds, "car") == written


def test_the_scores_field_is_unticked_in_the_app_by_default(make_dataset, tiny_config):
    ds = make_dataset(1)
    run(ds, FIRST, tiny_config)
    segment_collection(ds, FIRST[:2], label_field="car_b", config=tiny_config, progress=False)
    ds.reload()
    active = ds.app_config.active_fields
    assert active.exclude and {"car_scores", "car_b_scores"} <= set(active.paths)
    assert "car" not in active.paths and "car_det" not in active.paths
