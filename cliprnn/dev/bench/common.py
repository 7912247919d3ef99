"""What bench-speed and the throughput benchmark share: models, image, queries, schedule.

Imports point one way: ``cliprnn.dev.bench.speed`` imports ``cliprnn.dev.bench.throughput`` and this
module; ``cliprnn.dev.bench.throughput`` imports only this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cliprnn.config import VOC_CLASSES, CaRConfig

#: Every optimisation switch; the baseline turns them all off (the reference's schedule).
SPEED_SWITCHES = (
    "reuse_dense_pass",
    "batched_cam",
    "cache_text",
    "classifier_single_pass",
    "reuse_unchanged_prompts",
    "skip_single_query_classifier",
    "early_stop_clean",
    "compact_weights",
    "group_templates",
)
IMAGE_HW = (375, 500)


def drop_schedule(queries: int, steps: int) -> list[int]:
    """Queries kept after each step: shrink to half over steps-1 steps, then confirm."""
    if steps < 2:
        return [queries]
    half = max(1, queries // 2)
    shrinking = np.linspace(queries, half, steps - 1).round().astype(int).tolist()
    shrinking[-1] = half
    return [*shrinking, half]


def bench_image(seed: int = 0) -> np.ndarray:
    """A 500×375 generated scene (or seeded noise if the scene generator is unavailable)."""
    try:
        from cliprnn.dev.scenes import generate_scene

        return generate_scene(seed, size=IMAGE_HW).image
    except ImportError:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)


#: The paper's backbones: (proposal CLIP, classifier CLIP).
PAPER_ARCHS: tuple[str, str] = ("ViT-B/16", "ViT-L/14")


def arch_names(archs: tuple[Any, Any]) -> list[str]:
    """Each architecture's name, or "custom" for one given as a dict."""
    return [a if isinstance(a, str) else "custom" for a in archs]


def build_car(
    device: str = "cpu",
    optimised: bool = True,
    archs: tuple[Any, Any] = PAPER_ARCHS,
    dtype: str | None = None,
    text_cache_dir: str | None = None,
) -> Any:
    """A VOC-preset CaR over random-weight CLIPs of ``archs`` (names or architecture dicts).

    ``optimised`` turns every speed switch on (the default config) or off (the reference's
    schedule). ``dtype`` defaults to float16 autocast on CUDA and fp32 on a CPU.
    ``text_cache_dir`` is the on-disk text cache (None: none, so that runs are comparable).
    """
    import torch
    from transformers import CLIPTokenizer

    from cliprnn.assets import tokenizer_dir
    from cliprnn.car import CaR
    from cliprnn.clip_backend import ClipBackend, resolve_device
    from cliprnn.dev.random_clip import random_clip_model

    names = arch_names(archs)
    switches = dict.fromkeys(SPEED_SWITCHES, optimised)
    config = CaRConfig.preset(
        "voc", device=device, max_image_side=None, proposal_model=f"random:{names[0]}",
        classifier_model=f"random:{names[1]}",
        dtype=dtype or ("float16" if "cuda" in device else "float32"),
        text_cache_dir=text_cache_dir, **switches,
    )  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir()))
    dev = resolve_device(device)
    dtype = getattr(torch, config.dtype)
    car = CaR(config)
    # the larger classifier first: its fp32 build transient then meets the smaller model only
    for role, arch, name, seed in reversed(
        list(zip(("proposal", "classifier"), archs, names, (0, 1), strict=True))
    ):
        # fp16 values, as OpenAI released CLIP: compact_weights then holds them in 16 bits
        model = random_clip_model(arch, seed=seed, fp16_values=True)
        model = model.to(dev).eval().requires_grad_(False)
        backend = ClipBackend(
            model, tokenizer, device=dev, dtype=dtype, role=role, name=f"random:{name}",
            faithful=config.faithful, cache_text=config.cache_text,
            compact_weights=config.compact_weights, group_templates=config.group_templates,
            text_cache_dir=config.text_cache_dir,
        )  # fmt: skip
        setattr(car, f"_{role}_backend", backend)
    return car


def query_names(queries: int) -> list[str]:
    """The first ``queries`` VOC class names (numbered objects beyond 20)."""
    if queries <= len(VOC_CLASSES):
        return list(VOC_CLASSES[:queries])
    return [f"object {i}" for i in range(queries)]
