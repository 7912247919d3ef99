"""Architecture of the miniature CLIP (a scaled-down OpenAI ViT CLIP) and how it is saved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
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
    common = dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_attention_heads=width // HEAD_DIM,
        hidden_act="quick_gelu",
        projection_dim=projection_dim,
        layer_norm_eps=1e-5,
    )
    return CLIPConfig(
        text_config=dict(
            common,
            num_hidden_layers=text_layers,
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=CONTEXT_LENGTH,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
        ),
        vision_config=dict(
            common, num_hidden_layers=vision_layers, image_size=image_size, patch_size=patch_size
        ),
        projection_dim=projection_dim,
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
