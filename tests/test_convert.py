"""convert_openai_checkpoint: OpenAI CLIP state dicts -> HF CLIPModel folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cliprnn.clip_backend import ClipBackend
from cliprnn.convert import convert_openai_checkpoint
from cliprnn.errors import ModelLoadError


# ---------------------------------------------------------------- an OpenAI-layout CLIP
def make_openai_state_dict(
    *, vision_width: int = 128, text_width: int = 64, layers: int = 1, patch: int = 8,
    grid: int = 2, embed: int = 32, dtype: torch.dtype = torch.float32, seed: int = 0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Random tensors with the names and shapes of OpenAI's ``CLIP.state_dict()``."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    def blocks(prefix: str, w: int) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(layers):
            p = f"{prefix}transformer.resblocks.{i}."
            out |= {
                p + "attn.in_proj_weight": rnd(3 * w, w), p + "attn.in_proj_bias": rnd(3 * w),
                p + "attn.out_proj.weight": rnd(w, w), p + "attn.out_proj.bias": rnd(w),
                p + "ln_1.weight": 1 + rnd(w), p + "ln_1.bias": rnd(w),
                p + "ln_2.weight": 1 + rnd(w), p + "ln_2.bias": rnd(w),
                p + "mlp.c_fc.weight": rnd(4 * w, w), p + "mlp.c_fc.bias": rnd(4 * w),
                p + "mlp.c_proj.weight": rnd(w, 4 * w), p + "mlp.c_proj.bias": rnd(w),
            }  # fmt: skip
        return out

    vw, tw = vision_width, text_width
    sd = {
        "token_embedding.weight": rnd(49408, tw, scale=0.5),
        "positional_embedding": rnd(77, tw, scale=0.2),
        "ln_final.weight": 1 + rnd(tw), "ln_final.bias": rnd(tw),
        "text_projection": rnd(tw, embed, scale=0.2),
        "visual.conv1.weight": rnd(vw, 3, patch, patch),
        "visual.class_embedding": rnd(vw, scale=0.5),
        "visual.positional_embedding": rnd(grid * grid + 1, vw, scale=0.2),
        "visual.ln_pre.weight": 1 + rnd(vw), "visual.ln_pre.bias": rnd(vw),
        "visual.ln_post.weight": 1 + rnd(vw), "visual.ln_post.bias": rnd(vw),
        "visual.proj": rnd(vw, embed, scale=0.2),
        "logit_scale": torch.tensor(4.6052).to(dtype),
    }  # fmt: skip
    return sd | blocks("", tw) | blocks("visual.", vw)


def _ln(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], 1e-5)


def _resblock(x: torch.Tensor, sd: dict, p: str, mask: torch.Tensor | None) -> torch.Tensor:
    """OpenAI ResidualAttentionBlock on [L, B, W] with the fused in_proj weights."""
    width = x.shape[-1]
    h = _ln(x, sd, p + "ln_1")
    attn, _ = F.multi_head_attention_forward(
        h, h, h, width, width // 64 or 1, sd[p + "attn.in_proj_weight"],
        sd[p + "attn.in_proj_bias"], None, None, False, 0.0, sd[p + "attn.out_proj.weight"],
        sd[p + "attn.out_proj.bias"], training=False, need_weights=False, attn_mask=mask,
    )  # fmt: skip
    x = x + attn
    h = F.linear(_ln(x, sd, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
    h = h * torch.sigmoid(1.702 * h)
    return x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])


def _n_blocks(sd: dict, prefix: str) -> int:
    return len({k for k in sd if k.startswith(prefix + "transformer.resblocks.")
                and k.endswith("attn.in_proj_weight")})  # fmt: skip


def openai_text_features(sd: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """OpenAI ``CLIP.encode_text`` written against the OpenAI key names."""
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    x = x.permute(1, 0, 2)
    mask = torch.full((77, 77), float("-inf")).triu_(1)
    for i in range(_n_blocks(sd, "")):
        x = _resblock(x, sd, f"transformer.resblocks.{i}.", mask)
    x = _ln(x.permute(1, 0, 2), sd, "ln_final")
    return x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ sd["text_projection"]


def openai_image_features(sd: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """OpenAI ``VisionTransformer.forward`` at the training resolution."""
    conv = sd["visual.conv1.weight"]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(len(pixels), 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _ln(x, sd, "visual.ln_pre").permute(1, 0, 2)
    for i in range(_n_blocks(sd, "visual.")):
        x = _resblock(x, sd, f"visual.transformer.resblocks.{i}.", None)
    return _ln(x.permute(1, 0, 2)[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def _check_features(folder: Path, sd: dict[str, torch.Tensor], image_size: int) -> None:
    from transformers import CLIPModel

    sd = {k: v.float() for k, v in sd.items()}
    model = CLIPModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    backend = ClipBackend.load(folder)
    ids = backend.tokenize(["a photo of a cat", "a clean origami tvmonitor screen."])
    pixels = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hf_text = model.get_text_features(input_ids=ids).pooler_output
        hf_image = model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(hf_text, openai_text_features(sd, ids), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(hf_image, openai_image_features(sd, pixels), atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------- conversions
def test_convert_pt_state_dict(tmp_path: Path) -> None:
    sd = make_openai_state_dict()
    src = tmp_path / "clip.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, src)
    out = convert_openai_checkpoint(src, tmp_path / "hf")
    assert out == (tmp_path / "hf").resolve()
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
        assert (out / name).is_file()
    from transformers import CLIPConfig

    cfg = CLIPConfig.from_pretrained(out)
    v, t = cfg.vision_config, cfg.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (128, 1, 2)
    assert (v.patch_size, v.image_size, v.intermediate_size) == (8, 16, 512)
    assert (t.hidden_size, t.num_attention_heads, t.max_position_embeddings) == (64, 1, 77)
    assert (t.vocab_size, t.eos_token_id, cfg.projection_dim) == (49408, 49407, 32)
    assert v.hidden_act == t.hidden_act == "quick_gelu"
    assert v.layer_norm_eps == t.layer_norm_eps == 1e-5
    _check_features(out, sd, image_size=16)


def test_convert_fp16_safetensors_keeps_stored_values(tmp_path: Path) -> None:
    sd = make_openai_state_dict(dtype=torch.float16, seed=1)
    src = tmp_path / "clip16.safetensors"
    save_file(sd, str(src))
    out = convert_openai_checkpoint(str(src), tmp_path / "hf16")
    stored = load_file(str(out / "model.safetensors"))
    assert stored["logit_scale"].dtype == torch.float16
    q, k, v = sd["visual.transformer.resblocks.0.attn.in_proj_weight"].chunk(3)
    layer = "vision_model.encoder.layers.0.self_attn."
    assert torch.equal(stored[layer + "q_proj.weight"], q)
    assert torch.equal(stored[layer + "k_proj.weight"], k)
    assert torch.equal(stored[layer + "v_proj.weight"], v)
    assert torch.equal(stored["visual_projection.weight"], sd["visual.proj"].t())
    _check_features(out, sd, image_size=16)


@pytest.mark.golden
def test_convert_golden_tiny_clip(golden_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPModel

    src = golden_dir / "tiny_clip_seed1_fp16.safetensors"
    out = convert_openai_checkpoint(src, tmp_path / "golden-hf")
    model = CLIPModel.from_pretrained(out, dtype=torch.float32)
    assert model.logit_scale.item() == 4.60546875
    cfg = model.config
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size) == (64, 8)
    assert cfg.vision_config.num_attention_heads == cfg.text_config.num_attention_heads == 2
    assert cfg.vision_config.num_hidden_layers == cfg.text_config.num_hidden_layers == 4
    assert cfg.projection_dim == 128
    sd = load_file(str(src))
    bias = sd["transformer.resblocks.3.attn.in_proj_bias"].float()
    torch.testing.assert_close(
        model.text_model.encoder.layers[3].self_attn.v_proj.bias.detach(),
        bias[256:],
        atol=0,
        rtol=0,
    )
    torch.testing.assert_close(
        model.text_projection.weight.detach(), sd["text_projection"].float().t(), atol=0, rtol=0
    )
    _check_features(out, sd, image_size=64)


# ---------------------------------------------------------------- refusals
def test_missing_source_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelLoadError, match="not found") as err:
        convert_openai_checkpoint(missing, tmp_path / "out")
    assert str(missing) in str(err.value)


def test_directory_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a file"):
        convert_openai_checkpoint(tmp_path, tmp_path / "out")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(src))
    with pytest.raises(ModelLoadError, match="TorchScript"):
        convert_openai_checkpoint(src, tmp_path / "out")


def test_state_dict_that_is_not_clip_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2, 2)}, src)
    with pytest.raises(ValueError, match="not an OpenAI CLIP") as err:
        convert_openai_checkpoint(src, tmp_path / "out")
    assert str(src) in str(err.value)


def test_resnet_clip_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "rn50.safetensors"
    save_file({"visual.layer1.0.conv1.weight": torch.zeros(1)}, str(src))
    with pytest.raises(ValueError, match="ResNet"):
        convert_openai_checkpoint(src, tmp_path / "out")


def test_converted_folder_loads_in_backend(tmp_path: Path) -> None:
    sd = make_openai_state_dict(layers=2)
    src = tmp_path / "clip.safetensors"
    save_file(sd, str(src))
    backend = ClipBackend.load(convert_openai_checkpoint(src, tmp_path / "hf"))
    assert (backend.image_size, backend.patch_size, backend.num_layers) == (16, 8, 2)
    assert backend.logit_scale == pytest.approx(float(np.exp(np.float32(4.6052))), rel=1e-6)
