"""FiftyOne test fixtures: the plugin in a private plugins dir, small datasets of scenes."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_URI = "@cliprnn/clip-as-rnn"


def _plugins_dir() -> Path:
    """A folder holding only a link to this checkout, so FiftyOne finds exactly one plugin."""
    base = Path(os.environ.get("FIFTYONE_DATABASE_DIR", "/tmp")).parent / "plugins"
    base.mkdir(parents=True, exist_ok=True)
    link = base / "clip-as-rnn"
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return base


if "fiftyone" not in sys.modules:
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(_plugins_dir())
os.environ.setdefault("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", "true")

fo = pytest.importorskip("fiftyone")


@pytest.fixture(scope="session")
def plugins_dir() -> Path:
    path = Path(fo.config.plugins_dir)
    assert (path / "clip-as-rnn" / "fiftyone.yml").exists(), path
    return path


@pytest.fixture(scope="session")
def tiny_config(tiny_clip_dir: Path):
    """The VOC preset on the tiny random CLIP (both stages), CRF on, small images, every
    region kept (so stored masks equal the engine's label maps)."""
    from cliprnn import CaRConfig

    return CaRConfig.preset(
        "voc",
        proposal_model=str(tiny_clip_dir),
        classifier_model=str(tiny_clip_dir),
        crf=True,
        device="cpu",
        max_image_side=64,
        min_region_pixels=0,
    )


@pytest.fixture(scope="session")
def scene_files(tmp_root: Path) -> list[Path]:
    """Six generated 48×64 scenes saved as PNG (the images a dataset points at)."""
    from PIL import Image

    from cliprnn.dev.scenes import generate_scene

    folder = tmp_root / "fo-scenes"
    folder.mkdir(exist_ok=True)
    paths = []
    for seed in range(6):
        scene = generate_scene(1000 + seed, size=(48, 64))
        path = folder / f"scene_{seed}.png"
        Image.fromarray(scene.image).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def make_dataset(scene_files: list[Path]):
    """Factory: a fresh dataset over the first ``n`` scenes; deleted after the test."""
    made = []

    def make(n: int = 3, persistent: bool = False, files: list[Path] | None = None):
        ds = fo.Dataset(f"cliprnn-test-{uuid.uuid4().hex[:10]}", persistent=persistent)
        ds.add_samples([fo.Sample(filepath=str(p)) for p in (files or scene_files[:n])])
        made.append(ds)
        return ds

    yield make
    for ds in made:
        if fo.dataset_exists(ds.name):
            fo.delete_dataset(ds.name)


@pytest.fixture(scope="session")
def scenes_dataset():
    """Factory: ``scenes_dataset(folder, seeds, (H, W), name)``, see :func:`_scenes_dataset`."""
    return _scenes_dataset


def _scenes_dataset(folder: Path, seeds, size: tuple[int, int], name: str):
    """A persistent dataset of generated scenes (PNG files in ``folder``, ``size`` = (H, W))
    with their exact ``ground_truth`` masks and its mask targets (the App needs it saved)."""
    import numpy as np
    from PIL import Image

    from cliprnn.dev.scenes import CLASSES, generate_scene

    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for seed in seeds:
        scene = generate_scene(seed, size=size)
        path = folder / f"scene_{seed}.png"
        Image.fromarray(scene.image).save(path)
        gt = fo.Segmentation(mask=scene.label_map.astype(np.uint8))
        samples.append(fo.Sample(filepath=str(path), ground_truth=gt))
    ds = fo.Dataset(f"{name}-{uuid.uuid4().hex[:8]}", persistent=True)
    ds.add_samples(samples)
    ds.mask_targets = {"ground_truth": {i + 1: n for i, n in enumerate(CLASSES)}}
    ds.save()
    return ds
