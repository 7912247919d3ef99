"""Convert an OpenAI-layout CLIP state dict into a Hugging Face ``CLIPModel`` folder."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from cliprnn.errors import ModelLoadError

VOCAB_SIZE = 49408
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_REQUIRED_KEYS = (
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
    "text_projection",
    "ln_final.weight",
    "logit_scale",
)
_BLOCK_NAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)$")


def clip_config(
    *,
    vision_width: int,
    vision_layers: int,
    patch_size: int,
    image_size: int,
    text_width: int,
    text_layers: int,
    projection_dim: int,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    vision_mlp: int | None = None,
    text_mlp: int | None = None,
    context_length: int = 77,
    vocab_size: int = VOCAB_SIZE,
    logit_scale: float = 4.605170249938965,
    pad_token_id: int = 0,
) -> Any:
    """A ``CLIPConfig`` in OpenAI's conventions (QuickGELU, head dim 64, eps 1e-5, EOT pooling)."""
    from transformers import CLIPConfig

    common = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=projection_dim)
    text = dict(
        common,
        hidden_size=text_width,
        intermediate_size=text_mlp or 4 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads or max(1, text_width // 64),
        max_position_embeddings=context_length,
        vocab_size=vocab_size,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
    )
    vision = dict(
        common,
        hidden_size=vision_width,
        intermediate_size=vision_mlp or 4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads or max(1, vision_width // 64),
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
    )
    return CLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=projection_dim,
        logit_scale_init_value=float(logit_scale),
    )


def copy_tokenizer_files(folder: str | Path) -> None:
    """Copy the bundled CLIP tokenizer files into ``folder``."""
    from cliprnn.assets import tokenizer_dir

    source = tokenizer_dir()
    missing = [n for n in TOKENIZER_FILES if not (source / n).is_file()]
    if missing:
        raise ModelLoadError(
            f"the bundled CLIP tokenizer files {missing} are missing from {source}; "
            "regenerate them with scripts/make_tokenizer_files.py"
        )
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, Path(folder) / name)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def load_openai_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or ``torch.save`` checkpoint (TorchScript is refused)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"cannot read safetensors file {path}: {exc}") from exc
    if _is_torchscript(path):
        raise ModelLoadError(
            f"{path} is a TorchScript (JIT) archive, which is not supported. Save its plain "
            "state dict first, e.g. torch.save(torch.jit.load(path, map_location='cpu')"
            ".state_dict(), 'clip_state_dict.pt'), or clip.load(name, jit=False), and convert "
            "that file."
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path} as a PyTorch state dict: {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_architecture(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """Keyword arguments of :func:`clip_config` read off an OpenAI state dict's shapes."""
    if any(k.startswith("visual.layer1.") for k in sd):
        raise ValueError(f"{source}: ResNet CLIP image towers are not supported (ViT only)")
    missing = [k for k in _REQUIRED_KEYS if k not in sd]
    if missing:
        raise ValueError(f"{source} is not an OpenAI CLIP ViT state dict: missing {missing}")
    conv = sd["visual.conv1.weight"]
    n_pos = sd["visual.positional_embedding"].shape[0] - 1
    grid = round(n_pos**0.5)
    if grid * grid != n_pos:
        raise ValueError(f"{source}: {n_pos} patch positions do not form a square grid")
    arch = dict(
        vision_width=conv.shape[0],
        patch_size=conv.shape[-1],
        image_size=conv.shape[-1] * grid,
        vision_layers=_count_blocks(sd, "visual."),
        text_width=sd["ln_final.weight"].shape[0],
        text_layers=_count_blocks(sd, ""),
        projection_dim=sd["text_projection"].shape[1],
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        vision_mlp=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        text_mlp=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        logit_scale=float(sd["logit_scale"].float()),
    )
    if arch["vision_layers"] == 0 or arch["text_layers"] == 0:
        raise ValueError(f"{source}: no transformer blocks found")
    return arch


def openai_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split/transpose where needed) OpenAI CLIP tensors to HF ``CLIPModel`` keys."""
    out: dict[str, torch.Tensor] = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].t().contiguous(),
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].t().contiguous(),
        "logit_scale": sd["logit_scale"].reshape(()),
    }
    for key, tensor in sd.items():
        match = _BLOCK_KEY.match(key)
        if not match:
            if ".resblocks." in key:
                raise ValueError(f"unexpected tensor {key!r} in the OpenAI CLIP state dict")
            continue
        visual, index, name, kind = match.groups()
        base = f"{'vision' if visual else 'text'}_model.encoder.layers.{index}."
        if name == "attn.in_proj" and key.endswith("_" + kind):
            for proj, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                out[f"{base}self_attn.{proj}_proj.{kind}"] = chunk.contiguous()
        elif name in _BLOCK_NAMES and key.endswith("." + kind):
            out[f"{base}{_BLOCK_NAMES[name]}.{kind}"] = tensor
        else:
            raise ValueError(f"unexpected tensor {key!r} in the OpenAI CLIP state dict")
    return out


def convert_openai_checkpoint(src: str | Path, dst_folder: str | Path) -> Path:
    """Write an OpenAI CLIP ViT checkpoint as a Hugging Face ``CLIPModel`` folder.

    ``src`` is a state dict in OpenAI's layout (``.safetensors``, or ``.pt``/``.pth`` saved with
    ``torch.save``; TorchScript archives are refused). Weights keep their stored dtype; the folder
    also receives the CLIP tokenizer files. Returns the folder's resolved path.
    """
    from transformers import CLIPModel

    path = Path(src).expanduser().resolve()
    if not path.exists():
        raise ModelLoadError(f"OpenAI CLIP checkpoint not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"OpenAI CLIP checkpoint {path} is not a file")
    sd = load_openai_state_dict(path)
    arch = infer_architecture(sd, str(path))
    if arch["vocab_size"] != VOCAB_SIZE:
        raise ValueError(
            f"{path}: vocabulary of {arch['vocab_size']} tokens; only OpenAI's {VOCAB_SIZE}-token "
            "BPE vocabulary is supported"
        )
    hf = openai_to_hf(sd)
    dtypes = {t.dtype for t in hf.values()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    config = clip_config(**arch)
    with torch.device("meta"):
        model = CLIPModel(config)
    model.load_state_dict({k: v.to(dtype) for k, v in hf.items()}, strict=True, assign=True)
    dst = Path(dst_folder).expanduser().resolve()
    dst.mkdir(parents=True, exist_ok=True)
    model.config.dtype = dtype
    model.save_pretrained(dst, safe_serialization=True)
    copy_tokenizer_files(dst)
    return dst
