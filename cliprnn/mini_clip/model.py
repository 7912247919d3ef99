"""Architecture of the miniature CLIP (a scaled-down OpenAI ViT CLIP) and how it is saved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from cliprnn.clip_backend import CLIP_MEAN, CLIP_STD
from cliprnn.convert import clip_config

HEAD_DIM = 64


def mini_clip_config(
    width: int = 64,
    vision_layers: int = 4,
    text_layers: int = 4,
    patch_size: int = 8,
    image_size: int = 64,
    projection_dim: int = 64,
) -> CLIPConfig:
    """A CLIPConfig in OpenAI's layout: quick_gelu, head dim 64, context 77, the CLIP BPE vocab."""
    return clip_config(
        vision_width=width,
        vision_layers=vision_layers,
        patch_size=patch_size,
        image_size=image_size,
        text_width=width,
        text_layers=text_layers,
        projection_dim=projection_dim,
        vision_heads=width // HEAD_DIM,
        text_heads=width // HEAD_DIM,
        pad_token_id=1,  # what the shipped model was trained with (EOT pooling ignores it)
    )


def preprocessor_config(image_size: int) -> dict:
    """CLIPImageProcessor settings of OpenAI's checkpoints, at this model's input size."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }


def save_clip_folder(
    model: CLIPModel,
    folder: str | Path,
    tokenizer_dir: str | Path,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Save a CLIPModel (weights in ``dtype``) with tokenizer and preprocessor files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    export = CLIPModel(model.config)
    export.load_state_dict(model.state_dict())
    export.to(dtype).save_pretrained(folder, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        src = Path(tokenizer_dir) / name
        if src.exists():
            shutil.copyfile(src, folder / name)
    image_size = model.config.vision_config.image_size
    (folder / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(image_size), indent=2)
    )
    return folder
