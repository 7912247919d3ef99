"""Model-level checks of a trained miniature CLIP, through the engine's own CLIP backend.

``prompted_top1``: a scene with CaR's visual prompts drawn around one object's true mask is
classified (15-template ensemble, the classifier's tower) as that object, among all classes.
``stuff_max_prob``: prompts drawn on a background region give no class a confident score.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from cliprnn.config import SEMANTIC_TEMPLATES
from cliprnn.dev.scenes import CLASSES, generate_scene


def prompt_classification(
    model_dir: str | Path,
    seeds: Iterable[int],
    prompts: Sequence[str] = ("circle", "blur"),
    truncated: bool = True,
) -> dict[str, float]:
    """Zero-shot metrics of prompted views of generated scenes (see the module docstring)."""
    from cliprnn.clip_backend import ClipBackend
    from cliprnn.visual_prompts import apply_visual_prompts

    backend = ClipBackend.load(str(model_dir), device="cpu")
    text = backend.text_ensemble(list(CLASSES), list(SEMANTIC_TEMPLATES))
    images, targets, stuff_images = [], [], []
    for seed in seeds:
        scene = generate_scene(seed)
        for obj in scene.objects:
            mask = scene.mask(obj.class_index).astype(np.float32)
            images.append(apply_visual_prompts(scene.image, mask, prompts, 0.5))
            targets.append(obj.class_index)
        background = (scene.label_map == 0).astype(np.float32)
        stuff_images.append(apply_visual_prompts(scene.image, background, prompts, 0.5))
    with torch.no_grad():
        feats = backend.image_embeddings(backend.classifier_input(images), truncated=truncated)
        probs = (backend.logit_scale * feats @ text.t()).softmax(-1).numpy()
        sfeats = backend.image_embeddings(
            backend.classifier_input(stuff_images), truncated=truncated
        )
        sprobs = (backend.logit_scale * sfeats @ text.t()).softmax(-1).numpy()
    top1 = float(np.mean(probs.argmax(1) == np.array(targets)))
    return {
        "prompted_top1": top1,
        "prompted_true_prob": float(np.mean(probs[np.arange(len(targets)), targets])),
        "stuff_max_prob": float(np.mean(sprobs.max(1))),
        "objects": len(targets),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="zero-shot checks of a miniature CLIP folder")
    ap.add_argument("model_dir", type=Path)
    # held-out scenes: pair seeds below TRAIN_SEED_LIMIT may have been trained on
    ap.add_argument("--seeds", default="70500000:70500060", help="START:END")
    ap.add_argument("--prompts", default="circle,blur", help="comma-separated visual prompts")
    args = ap.parse_args(argv)
    a, b = (int(x) for x in args.seeds.split(":"))
    prompts = tuple(args.prompts.split(","))
    out = {
        "faithful_tower": prompt_classification(args.model_dir, range(a, b), prompts),
        "full_tower": prompt_classification(args.model_dir, range(a, b), prompts, truncated=False),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
