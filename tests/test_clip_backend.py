"""ClipBackend: loading errors, tokenizer, preprocessing and tower passes on a tiny random CLIP."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from cliprnn.clip_backend import CLIP_MEAN, CLIP_STD, ClipBackend, resolve_device
from cliprnn.errors import ConfigError, ModelLoadError


@pytest.fixture(scope="module")
def backend(tiny_clip_dir: Path) -> ClipBackend:
    return ClipBackend.load(tiny_clip_dir)


@pytest.fixture(scope="module")
def clean_backend(tiny_clip_dir: Path) -> ClipBackend:
    return ClipBackend.load(tiny_clip_dir, faithful=False)


def _normalised_pixel(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.array([(v / 255 - m) / s for v, m, s in zip(rgb, CLIP_MEAN, CLIP_STD, strict=True)])


# ---------------------------------------------------------------- tokenizer
def test_tokenize_matches_openai_ids(backend: ClipBackend) -> None:
    assert len(backend.tokenizer) == 49408
    ids = backend.tokenize(["a photo of a cat"])
    assert ids.shape == (1, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[0, 7:].eq(0).all()


def test_tokenize_truncates_with_eot_last(backend: ClipBackend) -> None:
    ids = backend.tokenize([" ".join(["cat"] * 100)])
    assert ids.shape == (1, 77)
    assert ids[0, 0] == 49406 and ids[0, 76] == 49407
    assert ids[0, 1:76].eq(2368).all()


# ---------------------------------------------------------------- loading errors
def test_missing_folder_raises_with_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as err:
        ClipBackend.load(str(missing), role="classifier")
    assert str(missing) in str(err.value)
    assert "classifier" in str(err.value)


def test_offline_hub_name_raises_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "openai/clip-vit-nonexistent-patch99"
    with pytest.raises(ModelLoadError) as err:
        ClipBackend.load(name, role="proposal")
    message = str(err.value)
    assert name in message and "proposal" in message
    assert "convert_openai_checkpoint" in message and "cache" in message


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "weights.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a CLIP checkpoint"):
        ClipBackend.load(tmp_path)


def test_folder_with_other_model_type_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="'bert'"):
        ClipBackend.load(tmp_path)


def test_checkpoint_file_points_to_converter(tmp_path: Path) -> None:
    file = tmp_path / "ViT-B-16.pt"
    file.write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="convert_openai_checkpoint"):
        ClipBackend.load(file)


def test_junk_tokenizer_is_rejected(tiny_clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "junk-tok"
    shutil.copytree(tiny_clip_dir, folder)
    (folder / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(ModelLoadError, match="49408"):
        ClipBackend.load(folder)


def test_folder_without_tokenizer_uses_bundled_one(tiny_clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-tok"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(tiny_clip_dir / name, folder / name)
    loaded = ClipBackend.load(folder)
    assert len(loaded.tokenizer) == 49408
    assert loaded.tokenize(["a photo of a cat"])[0, :7].tolist()[-1] == 49407


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ConfigError):
        resolve_device("not-a-device")


# ---------------------------------------------------------------- text
def test_encode_text_matches_hf_and_caches(backend: ClipBackend) -> None:
    texts = ["a photo of a cat", "a clean origami dog."]
    feats = backend.encode_text(texts)
    assert feats.shape == (2, backend.model.config.projection_dim)
    ids = backend.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = backend.model.get_text_features(input_ids=ids).pooler_output
    ref = ref / ref.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=0)
    assert set(texts) <= set(backend._text_cache)
    again = backend.encode_text(texts[::-1])
    assert torch.equal(again, feats.flip(0))


def test_encode_text_without_cache_recomputes(tiny_clip_dir: Path) -> None:
    b = ClipBackend.load(tiny_clip_dir, cache_text=False)
    calls = []
    original = b._encode_uncached
    b._encode_uncached = lambda texts: calls.append(list(texts)) or original(texts)  # type: ignore[method-assign]
    b.encode_text(["cat"])
    b.encode_text(["cat"])
    assert calls == [["cat"], ["cat"]] and not b._text_cache


def test_text_ensemble_is_renormalised_mean(backend: ClipBackend) -> None:
    one = backend.text_ensemble(["cat", "dog"], ["a {}."])
    torch.testing.assert_close(one, backend.encode_text(["a cat.", "a dog."]), atol=1e-6, rtol=0)
    two = backend.text_ensemble(["cat"], ["a {}.", "the {}"])
    e = backend.encode_text(["a cat.", "the cat"])
    expected = (e[0] + e[1]) / (e[0] + e[1]).norm()
    torch.testing.assert_close(two[0], expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- preprocessing
def test_cam_input_rounds_sides_up_and_normalises(backend: ClipBackend) -> None:
    image = np.full((40, 50, 3), (200, 100, 50), dtype=np.uint8)
    x = backend.cam_input(image, 16)
    assert x.shape == (1, 3, 48, 64)
    expected = _normalised_pixel((200, 100, 50))
    np.testing.assert_allclose(x[0, :, 20, 30].numpy(), expected, atol=1e-6)
    assert backend.cam_input(image, 8).shape == (1, 3, 40, 56)


def test_cam_input_keeps_exact_multiples_bitwise(backend: ClipBackend) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    x = backend.cam_input(image, 16)[0].permute(1, 2, 0).numpy()
    expected = (image / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(x, expected, atol=1e-6)


def test_classifier_center_crop_rounds_half_to_even(backend: ClipBackend) -> None:
    # short side already 32 (= image_size): no resize; offset int(round(15 / 2)) = 8, not 7
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 47, 3), dtype=np.uint8)
    x = backend.classifier_input([image])[0].permute(1, 2, 0).numpy()
    expected = (image[:, 8:40] / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(x, expected, atol=1e-6)


def test_classifier_resizes_short_side(backend: ClipBackend) -> None:
    image = np.full((64, 100, 3), 90, dtype=np.uint8)  # -> 32 x int(32*100/64)=50, crop 32
    x = backend.classifier_input([image, image[:50, :40]])
    assert x.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(x[0, :, 5, 5].numpy(), _normalised_pixel((90, 90, 90)), atol=1e-6)


def test_classifier_pad_crop_keeps_whole_image(backend: ClipBackend) -> None:
    image = np.zeros((16, 32, 3), dtype=np.uint8)  # pad to 32x32: 8 rows of mean colour above
    x = backend.classifier_input([image], crop="pad")[0]
    assert x.shape == (3, 32, 32)
    assert x[:, :8].abs().max() < 0.01  # mean colour normalises to ~0
    np.testing.assert_allclose(
        x[:, 8:24, 3].t().numpy()[0], _normalised_pixel((0, 0, 0)), atol=1e-6
    )
    with pytest.raises(ConfigError):
        backend.classifier_input([image], crop="stretch")


# ---------------------------------------------------------------- image tower
@contextmanager
def _patched_posemb(b: ClipBackend, patch_values: torch.Tensor, cls_value: float) -> Iterator[None]:
    """Temporarily overwrite the position embedding (CLS row and patch rows)."""
    weight = b.model.vision_model.embeddings.position_embedding.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0] = cls_value
        weight[1:] = patch_values
    b._posemb_cache.clear()
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)
        b._posemb_cache.clear()


def test_position_embedding_bilinear_resize_by_hand(clean_backend: ClipBackend) -> None:
    # 4x4 grid whose value is the column index, resized to 4x8 (align_corners=False):
    # source column of output j is j/2 - 1/4, clamped to [0, 3]
    columns = torch.arange(4, dtype=torch.float32).repeat(4)[:, None].expand(-1, 64)
    with _patched_posemb(clean_backend, columns, 1 / 3):
        pos = clean_backend.position_embedding(4, 8)
        assert pos.shape == (1 + 32, 64)
        assert pos[0, 0].item() == pytest.approx(1 / 3, abs=1e-7)
        row = pos[1:9, 0].tolist()
        assert row == pytest.approx([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], abs=1e-6)


def test_position_embedding_fp16_rounding_when_faithful(backend: ClipBackend) -> None:
    with _patched_posemb(backend, torch.full((16, 64), 0.1), 1 / 3):
        pos = backend.position_embedding(4, 4)
        assert pos[0, 0].item() == torch.tensor(1 / 3).half().item() != pytest.approx(1 / 3, 1e-6)
        assert pos[1, 0].item() == torch.tensor(0.1).half().item()


def test_dense_pass_matches_hf_forward(clean_backend: ClipBackend) -> None:
    b = clean_backend
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dense = b.dense_pass(x, cam_layer=-1, affinity_layers=8)
    with torch.no_grad():
        out = b.model.vision_model(pixel_values=x, output_hidden_states=True,
                                   output_attentions=True)  # fmt: skip
    assert dense.grid_hw == (4, 4) and dense.input_hw == (32, 32) and dense.cam_layer == 1
    torch.testing.assert_close(dense.tokens, out.hidden_states[-2], atol=1e-5, rtol=0)
    attn = torch.stack([a.mean(dim=1)[0] for a in out.attentions]).mean(0)[1:, 1:]
    torch.testing.assert_close(dense.affinity, attn, atol=1e-6, rtol=0)
    first = b.dense_pass(x, cam_layer=0, affinity_layers=1)
    torch.testing.assert_close(first.tokens, out.hidden_states[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(first.affinity, out.attentions[-1].mean(1)[0, 1:, 1:])
    with pytest.raises(ConfigError):
        b.dense_pass(x, cam_layer=2)


def test_image_embeddings_truncated_and_full(clean_backend: ClipBackend) -> None:
    b = clean_backend
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = b.model.vision_model(pixel_values=x, output_hidden_states=True)
        trunc = b.model.visual_projection(b.model.vision_model.post_layernorm(
            out.hidden_states[-2][:, 0]))  # fmt: skip
        full = b.model.get_image_features(pixel_values=x).pooler_output
    for truncated, ref in ((True, trunc), (False, full)):
        got = b.image_embeddings(x, truncated=truncated)
        torch.testing.assert_close(got, ref / ref.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)
        assert got.norm(dim=-1).sub(1).abs().max() < 1e-5


def test_cam_head_is_softmax_of_scaled_cosine(backend: ClipBackend) -> None:
    tokens = torch.randn(1, 17, 64, generator=torch.Generator().manual_seed(2))
    texts = backend.encode_text(["cat", "dog", "sky"])
    probs = backend.cam_head(tokens, texts)
    assert probs.shape == (1, 3)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    m = backend.model
    feat = m.visual_projection(m.vision_model.post_layernorm(tokens)[:, 1:].mean(1))
    cos = (feat / feat.norm()) @ texts.t()
    assert backend.logit_scale == pytest.approx(float(m.logit_scale.exp()), rel=1e-6)
    # the same formula in another order: cosines a few ulp apart, times the logit scale of 100
    expected = (backend.logit_scale * cos).softmax(-1)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


def test_float16_autocast_is_noop_on_cpu(tiny_clip_dir: Path) -> None:
    b = ClipBackend.load(tiny_clip_dir, dtype=torch.float16)
    with b.autocast():
        assert b.encode_text(["cat"]).dtype == torch.float32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert next(b.model.parameters()).dtype == torch.float32


def test_bfloat16_autocasts_on_cpu_with_fp32_weights_and_outputs(tiny_clip_dir: Path) -> None:
    b = ClipBackend.load(tiny_clip_dir, dtype=torch.bfloat16)
    with b.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert next(b.model.parameters()).dtype == torch.float32
    exact = ClipBackend.load(tiny_clip_dir)
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    low = b.image_embeddings(b.classifier_input([image]), truncated=True)
    ref = exact.image_embeddings(exact.classifier_input([image]), truncated=True)
    assert low.dtype == torch.float32
    assert not torch.equal(low, ref)  # it really ran in reduced precision
    torch.testing.assert_close(low, ref, atol=0.05, rtol=0)
