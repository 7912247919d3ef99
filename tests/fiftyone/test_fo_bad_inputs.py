"""Odd and hostile inputs to a FiftyOne run: each gets a clear error before anything is
written, or is handled; files follow the umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliprnn.errors import ConfigError, ImageError, QueryError
from cliprnn.fiftyone import segment_collection
from cliprnn.fiftyone.check import check_field

pytestmark = [pytest.mark.fiftyone]

QUERIES = ["red circle", "blue square"]


def _fields(ds) -> set[str]:
    ds.reload()
    return set(ds.get_field_schema())


@pytest.mark.parametrize("shape", [(1, 40), (40, 1), (1, 1)])
def test_images_one_pixel_wide_or_high_get_instances(shape, make_dataset, tiny_config, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "thin.png"
    Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)
    ds = make_dataset(files=[path])
    summary = segment_collection(
        ds, QUERIES, label_field="car", config=tiny_config,
        outputs=["segmentation", "detections"], progress=False,
    )  # fmt: skip
    assert (summary.processed, summary.failed) == (1, 0)
    sample = ds.first()
    assert sample["car"].get_mask().shape == shape
    assert check_field(ds, "car").ok


@pytest.mark.parametrize("name", ["car\n", "x" * 300, "car det", "1car", ""])
def test_a_bad_field_name_is_refused_before_any_field_is_made(name, make_dataset, tiny_config):
    ds = make_dataset(1)
    before = _fields(ds)
    with pytest.raises(ConfigError, match="label_field"):
        segment_collection(ds, QUERIES, label_field=name, config=tiny_config, progress=False)
    assert _fields(ds) == before


@pytest.mark.parametrize("query", ["red\x00circle", "blue\nsquare", "tab\there"])
def test_a_query_with_a_control_character_is_refused_before_any_field_is_made(
    query, make_dataset, tiny_config, tmp_path
):
    ds = make_dataset(1)
    before = _fields(ds)
    with pytest.raises(QueryError, match="control character"):
        segment_collection(
            ds, ["red circle", query], label_field="car", config=tiny_config,
            outputs=["segmentation", "heatmaps"], output_dir=str(tmp_path), progress=False,
        )  # fmt: skip
    assert _fields(ds) == before


def test_mask_and_heatmap_files_follow_the_umask(make_dataset, tiny_config, tmp_path):
    ds = make_dataset(1)
    old = os.umask(0o022)
    try:
        segment_collection(
            ds, QUERIES, label_field="car", config=tiny_config,
            outputs=["segmentation", "heatmaps"], output_dir=str(tmp_path), progress=False,
        )  # fmt: skip
    finally:
        os.umask(old)
    files = list(tmp_path.rglob("*.png"))
    assert files
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_an_image_over_the_pixel_budget_fails_alone_and_named(make_dataset, tiny_config, tmp_path):
    import fiftyone as fo

    from cliprnn.dev.bench.memory import bomb_png

    bomb = tmp_path / "bomb.png"
    bomb_png(bomb, 8000, 8000)  # 64 Mpx: over the budget, under Pillow's own bomb limit
    ds = make_dataset(2)
    ds.add_sample(fo.Sample(filepath=str(bomb)))
    summary = segment_collection(
        ds, QUERIES, label_field="car", config=tiny_config, skip_failures=True, progress=False
    )
    assert (summary.processed, summary.failed) == (2, 1)
    message = summary.errors[0][1]
    assert str(bomb) in message and "pixel budget of 40 Mpx" in message


def test_an_over_budget_file_is_refused_from_its_header_without_decoding(tmp_path):
    """In a fresh process: refusing a 400 Mpx gray PNG (400 MB decoded) costs < 50 MB."""
    from cliprnn.dev.bench.memory import bomb_png

    bomb = tmp_path / "bomb.png"
    bomb_png(bomb, 20_000, 20_000)
    probe = """
import json, resource, sys
from cliprnn.errors import ImageError
from cliprnn.imageio import load_image
import PIL.Image
PIL.Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb guard off: the budget must stop it
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_image(sys.argv[1], 40_000_000)
    error = None
except ImageError as e:
    error = str(e)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"error": error, "grew_kb": grew}))
"""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run(
        [sys.executable, "-c", probe, str(bomb)], env=env, capture_output=True, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] and "pixel budget" in result["error"]
    assert result["grew_kb"] < 50 * 1024


def test_load_image_refuses_arrays_and_pil_images_over_the_budget():
    from cliprnn.imageio import load_image

    with pytest.raises(ImageError, match="pixel budget"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)
    with pytest.raises(ImageError, match="pixel budget"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5000)
    assert load_image(np.zeros((50, 100, 3), np.uint8), max_pixels=5000).shape == (50, 100, 3)


def test_a_model_config_declaring_huge_dimensions_is_refused_before_loading(tmp_path):
    from cliprnn.clip_backend import ClipBackend
    from cliprnn.errors import ModelLoadError

    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "clip",
                "text_config": {"hidden_size": 512},
                "vision_config": {"hidden_size": 65536, "num_hidden_layers": 12},
            }
        )
    )
    with pytest.raises(ModelLoadError, match=r"vision_config\.hidden_size"):
        ClipBackend.load(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "clip",
                "vision_config": {
                    "hidden_size": 4096,
                    "intermediate_size": 16384,
                    "num_hidden_layers": 64,
                },
            }
        )
    )
    with pytest.raises(ModelLoadError, match="billion parameters"):
        ClipBackend.load(tmp_path)
