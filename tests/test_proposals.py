"""Proposal generator: Sinkhorn affinity, boxes, refinement and Grad-CAM on a tiny random CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cliprnn import proposals as prop
from cliprnn.clip_backend import ClipBackend
from cliprnn.config import CaRConfig
from cliprnn.proposals import (
    ProposalGenerator,
    boxes_to_mask,
    gradcam,
    min_max,
    refine,
    scoremap2bbox,
    sinkhorn_affinity,
)


@pytest.fixture(scope="module")
def backend(tiny_clip_dir: Path) -> ClipBackend:
    return ClipBackend.load(tiny_clip_dir)


@pytest.fixture(scope="module")
def config(tiny_clip_dir: Path) -> CaRConfig:
    return CaRConfig(proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)
    img[8:24, 10:30] = (250, 20, 20)
    return img


# ---------------------------------------------------------------- Sinkhorn
def test_sinkhorn_one_round_by_hand() -> None:
    # columns sum to 4 -> /4; rows then sum to 1/2, 1, 3/2 -> D = [[1/2,0,1/2],[1/4,1/2,1/4],
    # [1/3,1/3,1/3]]; S = (D+D^T)/2 = [[1/2,1/8,5/12],[1/8,1/2,7/24],[5/12,7/24,1/3]]; S@S * 576:
    w = torch.tensor([[1.0, 0.0, 1.0], [1.0, 2.0, 1.0], [2.0, 2.0, 2.0]])
    expected = torch.tensor([[253.0, 142.0, 221.0], [142.0, 202.0, 170.0], [221.0, 170.0, 213.0]])
    torch.testing.assert_close(sinkhorn_affinity(w, rounds=1) * 576, expected, atol=1e-4, rtol=0)


def test_sinkhorn_doubly_stochastic_input_by_hand() -> None:
    # equal column and row sums: every round leaves W/4; squared: [[6,5,5],[5,6,5],[5,5,6]]/16
    w = torch.tensor([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    expected = torch.tensor([[6.0, 5.0, 5.0], [5.0, 6.0, 5.0], [5.0, 5.0, 6.0]]) / 16
    torch.testing.assert_close(sinkhorn_affinity(w), expected, atol=1e-7, rtol=0)


# ---------------------------------------------------------------- boxes
def _two_blobs() -> np.ndarray:
    cam = np.zeros((6, 8), dtype=np.float32)
    cam[1:3, 1:3] = 1.0  # uint8 255
    cam[3:6, 5:8] = 0.6  # uint8 153, touching the bottom-right corner
    return cam


def test_scoremap2bbox_faithful_clips_last_row_and_column() -> None:
    # threshold int(0.4 * 255) = 102: both blobs survive
    boxes = sorted(scoremap2bbox(_two_blobs(), 0.4))
    assert boxes == [(1, 1, 3, 3), (5, 3, 7, 5)]
    clean = sorted(scoremap2bbox(_two_blobs(), 0.4, faithful=False))
    assert clean == [(1, 1, 3, 3), (5, 3, 8, 6)]


def test_scoremap2bbox_threshold_drops_weak_blob() -> None:
    # int(0.7 * 255) = 178 > 153
    assert scoremap2bbox(_two_blobs(), 0.7) == [(1, 1, 3, 3)]


def test_scoremap2bbox_lowers_threshold_when_nothing_survives() -> None:
    # lambda 1.0: nothing is > 255; retried at 0.9 -> int(229.5) = 229: only the strong blob
    assert scoremap2bbox(_two_blobs(), 1.0) == [(1, 1, 3, 3)]


def test_scoremap2bbox_uses_every_contour_of_the_tree() -> None:
    ring = np.zeros((7, 7), dtype=np.float32)
    ring[1:6, 1:6] = 1.0
    ring[3, 3] = 0.0  # a hole: RETR_TREE also returns the inner contour
    assert sorted(scoremap2bbox(ring, 0.4)) == [(1, 1, 6, 6), (2, 2, 5, 5)]


def test_scoremap2bbox_empty_map() -> None:
    assert scoremap2bbox(np.zeros((4, 4), np.float32), 0.4) == [(0, 0, 0, 0)]


def test_boxes_to_mask_fills_half_open_ranges() -> None:
    mask = boxes_to_mask([(1, 1, 3, 3), (0, 3, 2, 4)], 5, 4)
    expected = np.array(
        [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.uint8
    )
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == np.uint8
    assert not boxes_to_mask([(0, 0, 0, 0)], 3, 3).any()


# ---------------------------------------------------------------- refinement
def test_min_max_by_hand() -> None:
    np.testing.assert_allclose(min_max(np.array([2.0, 4.0, 6.0])), [0.0, 0.5, 1.0], atol=1e-12)
    assert not min_max(np.full(3, 7.0)).any()


def test_refine_identity_affinity_masks_sources() -> None:
    cams = np.array([[[1.0, 0.5], [0.25, 0.0]]], dtype=np.float32)
    box = np.array([[[1, 1], [0, 0]]], dtype=np.uint8)
    out = refine(cams, torch.eye(4), box, (2, 2))
    np.testing.assert_allclose(out[0], [[1.0, 0.5], [0.0, 0.0]], atol=1e-6)


def test_refine_resizes_bilinearly_by_hand() -> None:
    cams = np.array([[[1.0, 0.0], [1.0, 0.0]]], dtype=np.float32)
    box = np.ones((1, 2, 2), dtype=np.uint8)
    out = refine(cams, torch.eye(4), box, (3, 4))
    assert out.shape == (1, 3, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[1.0, 0.75, 0.25, 0.0]] * 3, atol=1e-6)


def test_refine_propagates_only_in_box_sources() -> None:
    # A2 sends source 0 -> targets 0 and 3; source 1 is outside the box
    a2 = torch.tensor([[1.0, 0.0, 0, 0], [0.0, 0.0, 0, 0], [0.0, 1.0, 0, 0], [0.5, 0.0, 0, 0]])
    cams = np.array([[[1.0, 1.0], [0.0, 0.0]]], dtype=np.float32)
    box = np.array([[[1, 0], [0, 0]]], dtype=np.uint8)
    out = refine(cams, a2, box, (2, 2))
    np.testing.assert_allclose(out[0], [[1.0, 0.0], [0.0, 0.5]], atol=1e-6)


# ---------------------------------------------------------------- Grad-CAM
def _hf_gradcam(
    backend: ClipBackend, pixels: torch.Tensor, texts: torch.Tensor, j: int
) -> np.ndarray:
    """Grad-CAM through HF's own vision forward, with a hook on the last layer_norm1."""
    model = backend.model
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        captured["act"] = output

    handle = model.vision_model.encoder.layers[-1].layer_norm1.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            model.requires_grad_(False)
            out = model.vision_model(pixel_values=pixels.requires_grad_(True))
            probs = backend.cam_head(out.last_hidden_state, texts)
            probs[0, j].backward()
    finally:
        handle.remove()
    act = captured["act"][0, 1:].detach()
    grad = captured["act"].grad[0, 1:]
    cam = torch.relu(act @ grad.mean(dim=0)).reshape(4, 4).numpy()
    return min_max(min_max(cam))


def test_gradcam_matches_hf_forward_with_hooks(tiny_clip_dir: Path) -> None:
    b = ClipBackend.load(tiny_clip_dir, faithful=False)
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    texts = b.encode_text(["a red square", "grass", "sky", "a dog"])
    dense = b.dense_pass(pixels)
    cams, head = gradcam(b, dense, texts, [0, 1])
    assert cams.shape == (2, 4, 4) and cams.dtype == np.float32
    assert head.sum().item() == pytest.approx(1.0, abs=1e-6)
    for j in (0, 1):
        np.testing.assert_allclose(cams[j], _hf_gradcam(b, pixels.clone(), texts, j), atol=1e-5)


def test_batched_and_per_query_gradcam_agree(backend: ClipBackend, image: np.ndarray) -> None:
    texts = backend.encode_text(["red", "noise", "cat", "ground", "sky"])
    for cam_layer in (-1, 0):
        dense = backend.dense_pass(backend.cam_input(image), cam_layer=cam_layer)
        batched, head_b = gradcam(backend, dense, texts, [0, 1, 2], batched=True)
        single, head_s = gradcam(backend, dense, texts, [0, 1, 2], batched=False)
        assert batched.max() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(batched, single, atol=1e-6)
        torch.testing.assert_close(head_b, head_s, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- generator
def test_propose_shapes_and_trace(
    backend: ClipBackend, config: CaRConfig, image: np.ndarray
) -> None:
    gen = ProposalGenerator(backend, config)
    state = gen.prepare(image)
    assert state.pixel_values.shape == (1, 3, 48, 48)
    assert state.dense is not None and state.affinity2 is not None
    assert state.affinity2.shape == (36, 36)
    queries = ["red square", "noise"]
    props, extras = gen.propose(state, queries, ["ground", "sky"], trace=True)
    assert props.shape == (2, 36, 44) and props.dtype == np.float32
    assert props.min() >= 0 and props.max() <= 1 + 1e-6
    assert extras["gradcam_raw"].shape == (2, 6, 6)
    assert extras["box_mask"].shape == (2, 6, 6) and extras["box_mask"].dtype == np.uint8
    assert not extras["box_mask"][:, -1].any() and not extras["box_mask"][:, :, -1].any()
    assert extras["cam_probs"].shape == (4,) and extras["fg_only_fallback"].tolist() == [False] * 2
    assert extras["cam_fg_text_features"].shape == (2, 64)
    assert len(extras["boxes"]) == 2
    bg = backend.encode_text(["a clean origami ground.", "a clean origami sky."])
    texts = torch.cat([backend.encode_text(queries), bg])
    cams, head = gradcam(backend, state.dense, texts, [0, 1])
    np.testing.assert_allclose(extras["gradcam_raw"], cams, atol=1e-6)
    np.testing.assert_allclose(extras["cam_probs"], head.numpy(), atol=1e-6)
    no_trace = gen.propose(state, queries, ["ground", "sky"])
    assert set(no_trace[1]) == {"timings"}  # stage seconds only, no intermediates
    np.testing.assert_allclose(no_trace[0], props, atol=1e-6)


def test_speed_switches_do_not_change_proposals(
    backend: ClipBackend, config: CaRConfig, image: np.ndarray
) -> None:
    queries, bg = ["red square", "noise", "dog"], ["ground", "sky"]
    fast = ProposalGenerator(backend, config)
    slow = ProposalGenerator(backend, config.replace(reuse_dense_pass=False, batched_cam=False))
    slow_state = slow.prepare(image)
    assert slow_state.dense is None
    p_fast, x_fast = fast.propose(fast.prepare(image), queries, bg, trace=True)
    p_slow, x_slow = slow.propose(slow_state, queries, bg, trace=True)
    np.testing.assert_allclose(x_fast["gradcam_raw"], x_slow["gradcam_raw"], atol=1e-6)
    np.testing.assert_array_equal(x_fast["box_mask"], x_slow["box_mask"])
    # the refinement's min-max rescaling amplifies float reassociation ~100x
    np.testing.assert_allclose(p_fast, p_slow, atol=2e-4)


def test_all_zero_cam_is_recomputed_against_foreground_only(
    backend: ClipBackend, config: CaRConfig, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, list[int]]] = []
    real = prop.gradcam

    def fake(b, dense, texts, targets, **kwargs):
        cams, head = real(b, dense, texts, targets, **kwargs)
        calls.append((texts.shape[0], list(targets)))
        if len(calls) == 1:
            cams[1] = 0.0  # pretend query 1's CAM came out empty
        return cams, head

    monkeypatch.setattr(prop, "gradcam", fake)
    gen = ProposalGenerator(backend, config)
    _, extras = gen.propose(gen.prepare(image), ["red square", "noise"], ["sky"], trace=True)
    assert calls == [(3, [0, 1]), (2, [1])]
    assert extras["fg_only_fallback"].tolist() == [False, True]
    assert extras["gradcam_raw"][1].max() > 0


def test_plain_gradcam_ablation_skips_the_affinity(tiny_clip_dir):
    """refine_affinity=False: proposals are the raw Grad-CAM maps, bilinearly resized."""
    import cv2

    from cliprnn import CaR, CaRConfig

    cfg = CaRConfig.preset(
        "voc", proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir),
        device="cpu", refine_affinity=False,
    )  # fmt: skip
    image = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    res = CaR(cfg).segment(image, ["cat", "dog"], trace=True)
    step = res.trace[0]
    raw = step.extras["gradcam_raw"]
    expected = np.stack(
        [cv2.resize(m.astype(np.float32), (56, 40), interpolation=cv2.INTER_LINEAR) for m in raw]
    )
    np.testing.assert_array_equal(step.proposals, expected)
    refined = CaR(cfg.replace(refine_affinity=True)).segment(image, ["cat", "dog"], trace=True)
    assert not np.allclose(refined.trace[0].proposals, step.proposals)
