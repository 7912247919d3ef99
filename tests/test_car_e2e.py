"""CaR.segment end to end on small random CLIP models loaded the way users load theirs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cliprnn import CaR, CaRConfig, CaRResult
from cliprnn.config import VOC_CLASSES


@pytest.fixture(scope="module")
def car(tiny_clip_dir) -> CaR:
    cfg = CaRConfig.preset(
        "voc", proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir), device="cpu"
    )
    return CaR(cfg)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(7)
    img = np.full((375, 500, 3), (70, 130, 180), np.uint8)  # "sky"
    img[200:, :] = (60, 160, 60)  # "grass"
    img[120:300, 80:220] = (200, 40, 40)
    img[50:150, 300:460] = (240, 220, 30)
    noise = rng.integers(-10, 11, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def result(car: CaR, image: np.ndarray) -> CaRResult:
    return car.segment(image, list(VOC_CLASSES), trace=True)


def test_500x375_with_20_queries(result: CaRResult):
    assert result.label_map.shape == (375, 500)
    assert result.label_map.dtype == np.int32
    assert result.masks.shape == (20, 375, 500) and result.masks.dtype == bool
    assert result.scores.shape == (20,) and result.scores.dtype == np.float32
    assert result.soft_masks.shape == (20, 375, 500)
    assert result.queries == list(VOC_CLASSES)


def test_result_invariants(result: CaRResult):
    assert result.label_map.min() >= 0 and result.label_map.max() <= 20
    assert 1 <= len(result.kept) <= 20
    assert 2 <= result.steps <= CaRConfig().max_steps  # faithful: always a confirmation step
    for i, query in enumerate(result.queries):
        if query not in result.kept:
            assert not result.masks[i].any()
        # the label map paints a query only where its mask is set
        assert not np.any((result.label_map == i + 1) & ~result.masks[i])
    dropped_scores = result.scores[[q not in result.kept for q in result.queries]]
    assert np.all(dropped_scores == 0) or not result.kept
    assert np.all((result.scores >= 0) & (result.scores <= 1))
    # the recurrence only ever shrinks the live set
    live_sizes = [len(t.queries) for t in result.trace]
    assert live_sizes == sorted(live_sizes, reverse=True) and live_sizes[0] == 20
    for prev, cur in zip(result.trace, result.trace[1:], strict=False):
        assert cur.queries == prev.kept


def test_deterministic(car: CaR, image: np.ndarray, result: CaRResult):
    again = car.segment(image, list(VOC_CLASSES))
    np.testing.assert_array_equal(again.label_map, result.label_map)
    np.testing.assert_array_equal(again.scores, result.scores)


def test_loaded_models_are_fp32_on_cpu(car: CaR):
    import torch

    model = car.proposal_backend.model
    assert all(p.device.type == "cpu" for p in model.parameters())
    # layers compute with fp32 weights (compact_weights may store exact ones in 16 bits)
    for module in model.modules():
        for name in ("weight", "bias"):
            value = getattr(module, name, None)
            assert not isinstance(value, torch.Tensor) or value.dtype == torch.float32
    assert car.classifier_backend is car.proposal_backend  # one folder -> one model in memory


def test_path_input_equals_array_input(car: CaR, image: np.ndarray, tmp_path):
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    a = car.segment(path, ["cat", "dog", "sky"])
    b = car.segment(image, ["cat", "dog", "sky"])
    c = car.segment(Image.fromarray(image), ["cat", "dog", "sky"])
    np.testing.assert_array_equal(a.label_map, b.label_map)
    np.testing.assert_array_equal(b.label_map, c.label_map)


def test_max_image_side_returns_full_resolution(tiny_clip_dir, image: np.ndarray):
    cfg = CaRConfig.preset(
        "voc", proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir),
        max_image_side=128, device="cpu",
    )  # fmt: skip
    res = CaR(cfg).segment(image, ["cat", "dog"], trace=True)
    assert res.label_map.shape == (375, 500)
    assert res.masks.shape == (2, 375, 500)
    assert res.trace[0].proposals.shape[1:] == (96, 128)  # inference ran at the capped size


def test_import_does_not_pull_fiftyone_or_torch():
    code = "import sys, cliprnn; print('fiftyone' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
