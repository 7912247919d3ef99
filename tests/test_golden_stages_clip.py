"""Stage-isolated parity of the CLIP stages with the reference CaR outputs (golden README §4-6).

Each test feeds a stage the reference's own inputs from ``expected.npz`` and compares with the
tolerances of the golden README section 6.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cliprnn.clip_backend import ClipBackend
from cliprnn.config import BACKGROUND_WORDS, CaRConfig
from cliprnn.convert import convert_openai_checkpoint
from cliprnn.proposals import (
    ProposalGenerator,
    boxes_to_mask,
    gradcam,
    refine,
    scoremap2bbox,
    sinkhorn_affinity,
)

pytestmark = pytest.mark.golden
CASES = (1, 2, 3)
LAMBDA = 0.4  # clipes_threshold of every golden case


@pytest.fixture(scope="session")
def golden_backend(golden_dir: Path, tmp_root: Path) -> ClipBackend:
    """The golden weights converted once per session, loaded in faithful mode."""
    folder = tmp_root / "golden-tiny-clip-hf"
    if not (folder / "model.safetensors").is_file():
        convert_openai_checkpoint(golden_dir / "tiny_clip_seed1_fp16.safetensors", folder)
    return ClipBackend.load(folder, faithful=True)


@pytest.fixture(scope="session")
def golden_cases(golden_dir: Path) -> dict[int, dict[str, Any]]:
    out = {}
    for case in CASES:
        folder = golden_dir / f"case_{case}"
        with np.load(folder / "expected.npz") as data:
            arrays = {k: data[k] for k in data.files}
        arrays["image"] = np.asarray(Image.open(folder / "image.png").convert("RGB"))
        out[case] = arrays
    return out


def _json(d: dict[str, Any], key: str) -> Any:
    return json.loads(str(d[key]))


def _steps(d: dict[str, Any]) -> range:
    return range(int(d["n_steps"]))


@pytest.mark.parametrize("case", CASES)
def test_tokens_exact(golden_backend: ClipBackend, golden_cases: dict, case: int) -> None:
    d = golden_cases[case]
    ids = golden_backend.tokenize(_json(d, "token_strings")).numpy()
    np.testing.assert_array_equal(ids, d["tokens"])


@pytest.mark.parametrize("case", CASES)
def test_cam_input(golden_backend: ClipBackend, golden_cases: dict, case: int) -> None:
    d = golden_cases[case]
    x = golden_backend.cam_input(d["image"], 16).cpu().numpy()
    assert x.shape == d["cam_input"].shape
    np.testing.assert_allclose(x, d["cam_input"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_cam_text_features(golden_backend: ClipBackend, golden_cases: dict, case: int) -> None:
    d = golden_cases[case]
    bg = golden_backend.text_ensemble(BACKGROUND_WORDS, ["a clean origami {}."]).cpu().numpy()
    np.testing.assert_allclose(bg, d["cam_bg_text_features"], atol=1e-5, rtol=0)
    for i in _steps(d):
        fg = golden_backend.encode_text(_json(d, f"step{i}_cam_text")).cpu().numpy()
        np.testing.assert_allclose(fg, d[f"step{i}_cam_fg_text_features"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_dense_pass(golden_backend: ClipBackend, golden_cases: dict, case: int) -> None:
    d = golden_cases[case]
    dense = golden_backend.dense_pass(torch.from_numpy(d["cam_input"]), affinity_layers=8)
    tokens = dense.tokens[0].cpu().numpy()
    np.testing.assert_allclose(tokens, d["cam_tokens_pre_last_block"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(dense.affinity.cpu().numpy(), d["affinity_attn"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_gradcam_and_cam_probs(golden_backend: ClipBackend, golden_cases: dict, case: int) -> None:
    d = golden_cases[case]
    dense = golden_backend.dense_pass(torch.from_numpy(d["cam_input"]))
    bg = torch.from_numpy(d["cam_bg_text_features"])
    for i in _steps(d):
        fg = torch.from_numpy(d[f"step{i}_cam_fg_text_features"])
        texts = torch.cat([fg, bg])
        cams, probs = gradcam(golden_backend, dense, texts, range(len(fg)), batched=True)
        np.testing.assert_allclose(probs.cpu().numpy(), d[f"step{i}_cam_probs"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(cams, d[f"step{i}_gradcam_raw"], atol=2e-5, rtol=0)
        assert not d[f"step{i}_cam_fg_only_fallback"].any()


@pytest.mark.parametrize("case", CASES)
def test_boxes_and_box_mask_exact(golden_cases: dict, case: int) -> None:
    d = golden_cases[case]
    for i in _steps(d):
        raw = d[f"step{i}_gradcam_raw"]
        boxes = [scoremap2bbox(cam, LAMBDA) for cam in raw]
        assert [[list(b) for b in bs] for bs in boxes] == _json(d, f"step{i}_boxes")
        mask = np.stack([boxes_to_mask(b, *raw.shape[1:]) for b in boxes])
        np.testing.assert_array_equal(mask, d[f"step{i}_box_mask"])


@pytest.mark.parametrize("case", CASES)
def test_refined_proposals(golden_cases: dict, case: int) -> None:
    """Proposals from the reference gradcam_raw, box_mask and affinity_attn.

    The refinement's min-max rescaling divides by a range of 0.3-2 % of the map's maximum, so
    float32 reassociation in the Sinkhorn/matrix products moves a few pixels past 1e-4: on
    case 3 step 0 an exact float64 evaluation of the same formula is itself 1.46e-4 from the
    reference. Hence: 99.9 % of pixels within 1e-4 and all within 2e-4.
    """
    d = golden_cases[case]
    affinity2 = sinkhorn_affinity(torch.from_numpy(d["affinity_attn"]), rounds=3)
    h, w = d["image"].shape[:2]
    for i in _steps(d):
        out = refine(d[f"step{i}_gradcam_raw"], affinity2, d[f"step{i}_box_mask"], (h, w))
        err = np.abs(out - d[f"step{i}_proposals"])
        assert err.max() < 2e-4
        assert np.mean(err > 1e-4) < 1e-3


@pytest.mark.parametrize("case", CASES)
def test_classifier_input(golden_backend: ClipBackend, golden_cases: dict, case: int) -> None:
    d = golden_cases[case]
    for i in _steps(d):
        x = golden_backend.classifier_input(list(d[f"step{i}_prompted_images"]), crop="center")
        np.testing.assert_allclose(x.cpu().numpy(), d[f"step{i}_cls_input"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_template_probs_from_truncated_tower(
    golden_backend: ClipBackend, golden_cases: dict, case: int
) -> None:
    d = golden_cases[case]
    for i in _steps(d):
        images = golden_backend.image_embeddings(
            torch.from_numpy(d[f"step{i}_cls_input"]), truncated=True
        )
        texts = torch.stack([golden_backend.encode_text(t) for t in _json(d, f"step{i}_cls_texts")])
        cos = torch.einsum("nd,tqd->tnq", images, texts)
        probs = (golden_backend.logit_scale * cos).softmax(dim=-1).cpu().numpy()
        np.testing.assert_allclose(probs, d[f"step{i}_template_probs"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_proposal_generator_end_to_end(
    golden_backend: ClipBackend, golden_cases: dict, case: int
) -> None:
    """Image -> proposals through ProposalGenerator, with the end-to-end tolerances."""
    d = golden_cases[case]
    config = CaRConfig(proposal_model="unused", classifier_model="unused", clipes_threshold=LAMBDA)
    generator = ProposalGenerator(golden_backend, config)
    state = generator.prepare(d["image"])
    for i in _steps(d):
        cam_texts = _json(d, f"step{i}_cam_text")
        proposals, extras = generator.propose(
            state, cam_texts, list(config.background_words), trace=True
        )
        np.testing.assert_allclose(extras["gradcam_raw"], d[f"step{i}_gradcam_raw"], atol=2e-5)
        np.testing.assert_array_equal(extras["box_mask"], d[f"step{i}_box_mask"])
        np.testing.assert_allclose(extras["cam_probs"], d[f"step{i}_cam_probs"], atol=1e-5)
        np.testing.assert_allclose(proposals, d[f"step{i}_proposals"], atol=5e-4)
