"""The CUDA path on a tiny random CLIP (skipped without CUDA; scripts/gpu_check.sh runs it).

CUDA kernels round differently from the CPU's, so CUDA results are compared with the CPU's
within tolerances, and exactly only with other CUDA runs of the same computation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cliprnn import CaR, CaRConfig
from cliprnn.clip_backend import ClipBackend
from cliprnn.config import SEMANTIC_TEMPLATES
from cliprnn.dev.scenes import generate_scene
from cliprnn.pipeline import segment_stream

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
QUERIES = ["cat", "dog", "car", "tree"]


def _config(model: Path, **overrides) -> CaRConfig:
    return CaRConfig.preset(
        "voc", proposal_model=str(model), classifier_model=str(model), max_image_side=None,
        confidence_threshold=0.2, text_cache_dir=None, **overrides,
    )  # fmt: skip


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [generate_scene(20 + i, size=(48, 56)).image for i in range(4)]


def test_float32_on_cuda_matches_the_cpu(tiny_clip_dir: Path, images) -> None:
    cpu = CaR(_config(tiny_clip_dir, device="cpu"))
    gpu = CaR(_config(tiny_clip_dir, device="cuda"))
    assert gpu.device.startswith("cuda")
    for image in images:
        a, b = cpu.segment(image, QUERIES), gpu.segment(image, QUERIES)
        assert b.label_map.shape == a.label_map.shape and b.label_map.dtype == np.int32
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-3, rtol=0)
        assert np.mean(a.label_map == b.label_map) > 0.97


def test_float16_autocast_runs_on_cuda(tiny_clip_dir: Path, images) -> None:
    car = CaR(_config(tiny_clip_dir, device="cuda", dtype="float16"))
    result = car.segment(images[0], QUERIES)
    assert result.scores.dtype == np.float32 and np.isfinite(result.scores).all()
    assert set(np.unique(result.label_map)) <= set(range(len(QUERIES) + 1))


def test_grouped_templates_on_cuda(tiny_clip_dir: Path) -> None:
    grouped = ClipBackend.load(tiny_clip_dir, device="cuda")
    single = ClipBackend.load(tiny_clip_dir, device="cuda", group_templates=False)
    got = grouped.encode_templates(SEMANTIC_TEMPLATES, QUERIES)
    ref = single.encode_templates(SEMANTIC_TEMPLATES, QUERIES)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    alone = ClipBackend.load(tiny_clip_dir, device="cuda").encode_templates(
        SEMANTIC_TEMPLATES, ["dog"]
    )
    assert torch.equal(alone[0], got[1])


def test_disk_cache_is_kept_apart_from_the_cpus(tiny_clip_dir: Path, tmp_path: Path) -> None:
    gpu = ClipBackend.load(tiny_clip_dir, device="cuda", text_cache_dir=tmp_path)
    cpu = ClipBackend.load(tiny_clip_dir, device="cpu", text_cache_dir=tmp_path)
    first = gpu.encode_templates(SEMANTIC_TEMPLATES, ["cat"])
    cpu.encode_templates(SEMANTIC_TEMPLATES, ["cat"])
    assert cpu.disk_cache().hits == 0  # the CUDA entry is not the CPU's
    again = ClipBackend.load(tiny_clip_dir, device="cuda", text_cache_dir=tmp_path)
    assert torch.equal(again.encode_templates(SEMANTIC_TEMPLATES, ["cat"]), first)
    assert again.disk_cache().hits == 1


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_crf_overlap_on_cuda_is_identical_to_sequential(tiny_clip_dir: Path, images, dtype):
    car = CaR(_config(tiny_clip_dir, device="cuda", dtype=dtype))
    sequential = [car.segment(image, QUERIES) for image in images]
    out = list(segment_stream(car, list(enumerate(images)), QUERIES, crf_workers=2))
    assert [k for k, _ in out] == list(range(len(images)))
    for (_, got), want in zip(out, sequential, strict=True):
        np.testing.assert_array_equal(got.label_map, want.label_map)
        np.testing.assert_array_equal(got.scores, want.scores)
        assert got.kept == want.kept
