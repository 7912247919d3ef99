"""segment_collection decodes images on prefetch threads and writes results in batches."""

from __future__ import annotations

import threading

import fiftyone as fo
import pytest

import cliprnn.fiftyone.run as run_module
import cliprnn.fiftyone.stores as stores
from cliprnn.fiftyone import SampleError, segment_collection

pytestmark = pytest.mark.fiftyone

QUERIES = ["red circle", "blue square"]


def test_decoding_runs_ahead_on_threads_and_writes_are_batched(
    make_dataset, tiny_config, monkeypatch, tmp_path, scene_files
) -> None:
    missing = tmp_path / "gone.png"
    ds = make_dataset(files=[*scene_files[:2], missing, *scene_files[2:4]])
    ids = ds.values("id")
    decoded_on: list[str] = []
    real_load = run_module.load_image

    def spy_load(path, max_pixels=None):
        decoded_on.append(threading.current_thread().name)
        return real_load(path, max_pixels)

    writes: list[tuple[str, int]] = []  # (field, samples) of each batch write
    real_write = stores.write_whole

    def spy_write(coll, labels):
        writes.extend((field, len(values)) for field, values in labels.items())
        return real_write(coll, labels)

    def no_save(self, *args, **kwargs):
        raise AssertionError("a per-sample save() during a run")

    monkeypatch.setattr(run_module, "load_image", spy_load)
    monkeypatch.setattr(stores, "write_whole", spy_write)
    monkeypatch.setattr(fo.Sample, "save", no_save)

    s = segment_collection(
        ds, QUERIES, label_field="car", outputs=["segmentation"], config=tiny_config,
        batch_size=2, skip_failures=True, progress=False,
    )  # fmt: skip

    assert (s.processed, s.failed) == (4, 1)
    assert len(decoded_on) == 5
    assert all(name.startswith("cliprnn-prefetch") for name in decoded_on), decoded_on
    # 5 samples in batches of 2: three writes (each sample's fields together), of 2, 2 and 1
    assert [n for f, n in writes if f == "car"] == [2, 2, 1]
    assert [n for f, n in writes if f == "car_error"] == [2, 1]  # from the failing batch on
    error = dict(zip(ids, ds.values("car_error"), strict=True))[ids[2]]
    assert "ImageError" in error and str(missing) in error
    assert ds.count("car") == 4


def test_load_error_without_skip_names_the_sample_and_keeps_the_batch_before(
    make_dataset, tiny_config, tmp_path, scene_files
) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    ds = make_dataset(files=[scene_files[0], scene_files[1], scene_files[2], not_image])
    ids = ds.values("id")
    with pytest.raises(SampleError) as info:
        segment_collection(ds, QUERIES, label_field="car", config=tiny_config, batch_size=2,
                           progress=False)  # fmt: skip
    assert info.value.sample_id == ids[3] and info.value.filepath == str(not_image)
    assert ids[3] in str(info.value) and str(not_image) in str(info.value)
    # the first batch and the finished sample of the failing batch are kept
    assert ds.exists("car").values("id") == ids[:3]
