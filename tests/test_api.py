"""The public engine API: config resolution, the default preset, model sharing, segment_many.

``segment_many`` must give what ``segment`` gives image by image, whether the CRFs overlap the
next image's model passes or not, and name the image that fails.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from cliprnn import CaR, CaRConfig, CaRResult
from cliprnn.car import set_forced_schedule
from cliprnn.cli import build_parser
from cliprnn.config import DEFAULT_PRESET, PRESETS
from cliprnn.dev.scenes import generate_scene
from cliprnn.errors import ConfigError, ImageError, QueryError

QUERIES = ["cat", "dog", "car", "tree"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list:
    """Every input kind: arrays (one above max_image_side), a file path and a PIL image."""
    sizes = [(40, 48), (64, 80), (36, 44), (44, 36)]
    arrays = [generate_scene(30 + i, size=hw).image for i, hw in enumerate(sizes)]
    path = tmp_path_factory.mktemp("api") / "scene.png"
    Image.fromarray(arrays[2]).save(path)
    return [arrays[0], arrays[1], str(path), Image.fromarray(arrays[3])]


@pytest.fixture(scope="module")
def one_by_one(tiny_car: CaR, images: list) -> list[CaRResult]:
    return [tiny_car.segment(image, QUERIES) for image in images]


def _same(a: CaRResult, b: CaRResult) -> None:
    np.testing.assert_array_equal(a.label_map, b.label_map)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.soft_masks, b.soft_masks)
    assert (a.queries, a.kept, a.steps, a.warnings) == (b.queries, b.kept, b.steps, b.warnings)


# ---------------------------------------------------------------------- configuration
def test_one_default_preset_everywhere() -> None:
    assert DEFAULT_PRESET in PRESETS
    assert CaRConfig.resolve() == CaRConfig.preset(DEFAULT_PRESET) == CaRConfig()
    assert CaR().config == CaRConfig()  # nothing loads until first use
    args = build_parser().parse_args(["segment", "image.png", "cat"])
    assert args.preset == DEFAULT_PRESET


def test_resolve_takes_every_config_form() -> None:
    base = CaRConfig.preset("coco_object")
    assert CaRConfig.resolve(base) is base
    assert CaRConfig.resolve(base, max_steps=3) == base.replace(max_steps=3)
    assert CaRConfig.resolve("coco_object") == base
    assert CaRConfig.resolve({"preset": "coco_object", "max_steps": 3}) == base.replace(max_steps=3)
    assert CaRConfig.resolve({"max_steps": 3}) == CaRConfig(max_steps=3)  # the default preset
    assert CaRConfig.resolve({"preset": None}) == CaRConfig()
    # overrides go last, over the preset and the mapping; None is a value
    assert CaRConfig.resolve({"max_steps": 3}, max_steps=4).max_steps == 4
    assert CaRConfig.resolve("voc", max_image_side=None).max_image_side is None
    assert CaR({"preset": "coco_object"}, max_steps=2).config == base.replace(max_steps=2)


@pytest.mark.parametrize(
    ("config", "overrides", "match"),
    [
        (3, {}, "config must be"),
        ("no_such_preset", {}, "unknown preset"),
        ({"preset": 5}, {}, "preset must be"),
        (None, {"no_such_field": 1}, "unknown CaRConfig parameter"),
        ({"max_steps": 0}, {}, "max_steps"),
    ],
)
def test_resolve_refuses_bad_configs(config: object, overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CaRConfig.resolve(config, **overrides)  # type: ignore[arg-type]


def test_importing_the_library_loads_no_torch() -> None:
    code = "import sys, cliprnn, cliprnn.car, cliprnn.cli; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------- sharing models
def test_sharing_models_reuses_the_clips_and_matches_a_fresh_engine(tiny_car: CaR, images) -> None:
    twin = tiny_car.sharing_models(confidence_threshold=0.5, max_steps=2)
    assert twin is not tiny_car
    assert twin.proposal_backend is tiny_car.proposal_backend
    assert twin.classifier_backend is tiny_car.classifier_backend
    assert twin.config == tiny_car.config.replace(confidence_threshold=0.5, max_steps=2)
    fresh = CaR(twin.config)
    _same(twin.segment(images[0], QUERIES), fresh.segment(images[0], QUERIES))


@pytest.mark.parametrize("field", ["proposal_model", "classifier_model", "dtype", "device"])
def test_sharing_models_refuses_other_models(tiny_car: CaR, field: str) -> None:
    value = {"dtype": "bfloat16", "device": "cuda"}.get(field, "openai/clip-vit-base-patch32")
    with pytest.raises(ConfigError, match=field):
        tiny_car.sharing_models(**{field: value})


def test_clean_twin_shares_models_and_the_forced_schedule(tiny_car: CaR) -> None:
    twin = tiny_car.clean_twin()
    assert not twin.config.faithful and twin.proposal_backend is tiny_car.proposal_backend
    assert twin.config == tiny_car.config.replace(faithful=False)
    assert not hasattr(tiny_car, "forced_schedule")  # a benchmark hook, off the public class
    try:
        set_forced_schedule(tiny_car, [2, 1])
        assert tiny_car.clean_twin()._forced_schedule == [2, 1]
    finally:
        set_forced_schedule(tiny_car, None)
    assert tiny_car.clean_twin()._forced_schedule is None


# ---------------------------------------------------------------------- segment_many
@pytest.mark.parametrize("crf_workers", [0, 2])
def test_segment_many_equals_segment_per_image(tiny_car, images, one_by_one, crf_workers) -> None:
    engine = tiny_car.sharing_models(crf_workers=crf_workers)
    results = list(engine.segment_many(images, QUERIES))
    assert len(results) == len(images)
    for got, expected in zip(results, one_by_one, strict=True):
        _same(got, expected)


def test_segment_many_reads_images_lazily(tiny_car, images, one_by_one) -> None:
    read: list[int] = []

    def stream() -> Iterator:
        for i, image in enumerate(images):
            read.append(i)
            yield image

    results = tiny_car.segment_many(stream(), QUERIES)
    assert read == []  # nothing runs before the first result is asked for
    _same(next(results), one_by_one[0])
    results.close()
    assert len(read) <= 2


@pytest.mark.parametrize("crf_workers", [0, 2])
def test_segment_many_names_the_image_that_fails(tiny_car, images, one_by_one, crf_workers) -> None:
    engine = tiny_car.sharing_models(crf_workers=crf_workers)
    inputs = [images[0], images[1], "/no/such/image.png", images[2]]
    results = engine.segment_many(inputs, QUERIES)
    _same(next(results), one_by_one[0])  # every image before the failing one comes first
    _same(next(results), one_by_one[1])
    with pytest.raises(ImageError, match=r"images\[2\] \(/no/such/image.png\): ") as caught:
        next(results)
    assert isinstance(caught.value.__cause__, ImageError)
    assert "image file not found" in str(caught.value)
    with pytest.raises(StopIteration):
        next(results)


def test_segment_many_keeps_the_class_of_other_errors(tiny_car, images, monkeypatch) -> None:
    engine = tiny_car.sharing_models()
    segment = engine.segment

    def failing(image, queries, **kwargs):
        if isinstance(image, Image.Image):
            raise RuntimeError("out of memory")
        return segment(image, queries, **kwargs)

    monkeypatch.setattr(engine, "segment", failing)
    with pytest.raises(RuntimeError, match="out of memory") as caught:
        list(engine.segment_many(images, QUERIES))
    assert any("images[3] (PIL image 36×44)" in note for note in caught.value.__notes__)


def test_segment_many_checks_queries_before_reading_images(tiny_car) -> None:
    read: list[int] = []

    def stream() -> Iterator:
        read.append(0)
        yield np.zeros((32, 32, 3), np.uint8)

    with pytest.raises(QueryError):
        next(tiny_car.segment_many(stream(), "cat"))  # type: ignore[arg-type]
    with pytest.raises(QueryError):
        next(tiny_car.segment_many(stream(), []))
    assert read == []
