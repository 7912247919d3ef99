"""Randomly initialised CLIP models with OpenAI's architecture conventions (tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cliprnn.convert import clip_config, copy_tokenizer_files
from cliprnn.errors import ConfigError

#: OpenAI CLIP image/text tower shapes, by the names OpenAI uses.
ARCHITECTURES: dict[str, dict[str, int]] = {
    "ViT-B/16": dict(width=768, layers=12, patch_size=16, image_size=224,
                     text_width=512, text_layers=12, projection_dim=512),
    "ViT-B/32": dict(width=768, layers=12, patch_size=32, image_size=224,
                     text_width=512, text_layers=12, projection_dim=512),
    "ViT-L/14": dict(width=1024, layers=24, patch_size=14, image_size=224,
                     text_width=768, text_layers=12, projection_dim=768),
}  # fmt: skip

_ARCH_KEYS = {
    "width", "layers", "patch_size", "image_size", "heads", "text_width", "text_layers",
    "projection_dim",
}  # fmt: skip


def _config(
    *,
    width: int,
    layers: int,
    patch_size: int,
    image_size: int,
    heads: int | None = None,
    text_width: int | None = None,
    text_layers: int | None = None,
    projection_dim: int | None = None,
) -> Any:
    if image_size % patch_size:
        raise ConfigError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    vision_heads = heads or max(1, width // 64)
    text_heads = vision_heads if text_width in (None, width) else max(1, text_width // 64)
    return clip_config(
        vision_width=width,
        vision_layers=layers,
        patch_size=patch_size,
        image_size=image_size,
        text_width=text_width or width,
        text_layers=text_layers or layers,
        projection_dim=projection_dim or width,
        vision_heads=vision_heads,
        text_heads=text_heads,
    )


def random_clip_model(
    arch: str | dict[str, int], seed: int = 0, *, fp16_values: bool = False
) -> Any:
    """An in-memory ``CLIPModel`` with seeded random weights (eager attention, fp32, eval).

    ``arch`` is a name from ARCHITECTURES ("ViT-B/16", "ViT-L/14", ...) or a dict with the
    keyword arguments of :func:`save_random_clip` other than ``folder`` and ``seed``. With
    ``fp16_values`` every weight is rounded to the nearest fp16 value (held in fp32), as in
    OpenAI's fp16 release of CLIP.
    """
    from transformers import CLIPModel

    if isinstance(arch, str):
        if arch not in ARCHITECTURES:
            raise ConfigError(
                f"unknown CLIP architecture {arch!r}; choose from {list(ARCHITECTURES)}"
            )
        arch = ARCHITECTURES[arch]
    unknown = sorted(set(arch) - _ARCH_KEYS)
    if unknown:
        raise ConfigError(f"unknown CLIP architecture keys {unknown}; use {sorted(_ARCH_KEYS)}")
    config = _config(**arch)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    if fp16_values:
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.half())
    return model.eval()


def save_random_clip(
    folder: str | Path,
    *,
    width: int,
    layers: int,
    patch_size: int,
    image_size: int,
    seed: int,
    heads: int | None = None,
    text_width: int | None = None,
    text_layers: int | None = None,
    projection_dim: int | None = None,
    fp16_values: bool = False,
) -> Path:
    """Save a seeded random ``CLIPModel`` (safetensors) and the CLIP tokenizer in ``folder``.

    Head dimension 64 (``heads = width // 64``) unless ``heads`` is given; text tower width,
    depth and projection size default to the image tower's width and depth. ``fp16_values``
    as in :func:`random_clip_model`.
    """
    arch = dict(width=width, layers=layers, patch_size=patch_size, image_size=image_size,
                heads=heads, text_width=text_width, text_layers=text_layers,
                projection_dim=projection_dim)  # fmt: skip
    arch = {k: v for k, v in arch.items() if v is not None}
    model = random_clip_model(arch, seed=seed, fp16_values=fp16_values)
    out = Path(folder).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    copy_tokenizer_files(out)
    return out
