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
    text_width: int | None = None,
) -> CLIPConfig:
    """A CLIPConfig in OpenAI's layout: quick_gelu, head dim 64, context 77, the CLIP BPE vocab.

    ``text_width`` defaults to ``width`` (both towers equally wide).
    """
    text_width = text_width or width
    return clip_config(
        vision_width=width,
        vision_layers=vision_layers,
        patch_size=patch_size,
        image_size=image_size,
        text_width=text_width,
        text_layers=text_layers,
        projection_dim=projection_dim,
        vision_heads=width // HEAD_DIM,
        text_heads=text_width // HEAD_DIM,
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


def grow_vision_tower(
    source: CLIPModel, vision_layers: int, image_size: int, patch_size: int | None = None
) -> CLIPModel:
    """A deeper, higher-resolution copy of ``source`` that computes the same embeddings.

    The text tower, patch embedding, LayerNorms and projections are copied; the position grid
    is resized bilinearly (as the engine does for larger inputs); blocks past the source's
    depth start as the identity (their attention output and MLP output weights are zero), so
    the final CLS and the penultimate CLS of the grown tower both equal the source's final CLS
    at step 0. The starting point for training a larger classifier model (train.py --init).
    """
    src_v = source.config.vision_config
    patch_size = patch_size or src_v.patch_size
    if patch_size != src_v.patch_size:
        raise ValueError("the patch embedding is copied: keep the source's patch size")
    if vision_layers < src_v.num_hidden_layers:
        raise ValueError(f"cannot shrink {src_v.num_hidden_layers} blocks to {vision_layers}")
    config = CLIPConfig.from_dict(source.config.to_dict())
    config.vision_config.num_hidden_layers = vision_layers
    config.vision_config.image_size = image_size
    grown = CLIPModel(config)
    state = source.state_dict()
    target = grown.state_dict()
    key = "vision_model.embeddings.position_embedding.weight"
    pos = state[key]
    old, new = src_v.image_size // patch_size, image_size // patch_size
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(
        grid.float(), size=(new, new), mode="bilinear", align_corners=False
    )
    state = dict(state)
    state[key] = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1)], dim=0)
    state.pop("vision_model.embeddings.position_ids", None)
    for name in target:
        if name in state and state[name].shape == target[name].shape:
            target[name] = state[name].clone()
    for i in range(src_v.num_hidden_layers, vision_layers):
        prefix = f"vision_model.encoder.layers.{i}."
        for part in ("self_attn.out_proj", "mlp.fc2"):
            target[prefix + part + ".weight"].zero_()
            target[prefix + part + ".bias"].zero_()
    grown.load_state_dict(target)
    return grown


def widen_vision_tower(
    source: CLIPModel, width: int, noise: float = 0.0, seed: int = 0
) -> CLIPModel:
    """A copy of ``source`` whose image tower is ``width`` wide (more heads), same embeddings.

    ``width`` must be a multiple k of the source's width. The residual stream holds k copies of
    the source's; every head and MLP unit is copied k times and every input-side weight divided
    by k, so each copy computes what the source did (LayerNorm of k equal copies is the copy of
    the LayerNorm). Copies get identical gradients, so ``noise`` (a fraction of each weight
    matrix's standard deviation, seeded) breaks the symmetry; with ``noise=0`` the embeddings
    are the source's. The text tower is copied unchanged.
    """
    src_v = source.config.vision_config
    old = src_v.hidden_size
    if width % old or width < old:
        raise ValueError(f"width {width} must be a multiple of the source's width {old}")
    k = width // old
    config = CLIPConfig.from_dict(source.config.to_dict())
    config.vision_config.hidden_size = width
    config.vision_config.intermediate_size = src_v.intermediate_size * k
    config.vision_config.num_attention_heads = width // HEAD_DIM
    wide = CLIPModel(config)
    gen = torch.Generator().manual_seed(seed)
    state = source.state_dict()
    target = wide.state_dict()
    for name, new in target.items():
        old_t = state[name]
        if not name.startswith(("vision_model.", "visual_projection.")) or old_t.shape == new.shape:
            target[name] = old_t.clone()
            continue
        reps = [n // o for n, o in zip(new.shape, old_t.shape, strict=True)]
        t = old_t.float().repeat(*reps)
        # a weight reading the widened stream (or hidden units) sums k copies: divide by k
        if t.ndim == 2 and reps[1] > 1 and "embedding" not in name:
            t = t / reps[1]
        if noise > 0 and t.ndim >= 2:
            t = t + noise * t.std() * torch.randn(t.shape, generator=gen)
        target[name] = t.to(new.dtype)
    wide.load_state_dict(target)
    return wide


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m cliprnn.dev.mini_clip.model grow SRC DST --vision-layers 6 --image-size 96``
    or ``... widen SRC DST --width 128`` (more heads in the image tower)."""
    import argparse

    from cliprnn.assets import tokenizer_dir

    ap = argparse.ArgumentParser(description="grow a miniature CLIP's image tower")
    ap.add_argument("command", choices=("grow", "widen"))
    ap.add_argument("source", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--vision-layers", type=int, help="grow: blocks of the image tower")
    ap.add_argument("--image-size", type=int, help="grow: input side of the image tower")
    ap.add_argument("--width", type=int, help="widen: width of the image tower")
    ap.add_argument("--noise", type=float, default=0.01, help="widen: symmetry-breaking noise")
    args = ap.parse_args(argv)
    source = CLIPModel.from_pretrained(args.source, dtype=torch.float32)
    if args.command == "grow":
        if args.vision_layers is None or args.image_size is None:
            ap.error("grow needs --vision-layers and --image-size")
        model = grow_vision_tower(source, args.vision_layers, args.image_size)
        what = f"{args.vision_layers} blocks at {args.image_size} px"
    else:
        if args.width is None:
            ap.error("widen needs --width")
        model = widen_vision_tower(source, args.width, noise=args.noise)
        what = f"image tower {args.width} wide ({args.width // HEAD_DIM} heads)"
    save_clip_folder(model, args.dest, tokenizer_dir(), dtype=torch.float32)
    print(f"saved {args.dest}: {what}")


if __name__ == "__main__":
    main()
