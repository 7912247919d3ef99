"""`python -m cliprnn bench-speed`: seconds per image at the paper's model sizes.

Builds the paper's architectures (ViT-B/16 proposal CLIP, ViT-L/14 classifier CLIP) with random
weights — speed does not depend on weight values, and nothing is downloaded — and runs the VOC
preset on one 500×375 image with the 20 VOC class names. Random weights make the real drop
schedule arbitrary, so the recurrence follows a fixed schedule. Each measured configuration runs
in its own subprocess so that its peak RSS is its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
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
        from cliprnn.scenes import generate_scene

        return generate_scene(seed, size=IMAGE_HW).image
    except ImportError:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)


def _build_car(device: str, optimised: bool) -> Any:
    import torch
    from transformers import CLIPTokenizer

    from cliprnn.assets import tokenizer_dir
    from cliprnn.car import CaR
    from cliprnn.clip_backend import ClipBackend, resolve_device
    from cliprnn.random_clip import random_clip_model

    switches = dict.fromkeys(SPEED_SWITCHES, optimised)
    config = CaRConfig.preset(
        "voc", device=device, max_image_side=None, proposal_model="random:ViT-B/16",
        classifier_model="random:ViT-L/14", dtype="float16" if "cuda" in device else "float32",
        **switches,
    )  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir()))
    dev = resolve_device(device)
    dtype = {"float32": torch.float32, "float16": torch.float16}[config.dtype]
    car = CaR(config)
    for role, arch, seed in (("proposal", "ViT-B/16", 0), ("classifier", "ViT-L/14", 1)):
        model = random_clip_model(arch, seed=seed).to(dev).eval().requires_grad_(False)
        backend = ClipBackend(
            model, tokenizer, device=dev, dtype=dtype, role=role, name=f"random:{arch}",
            faithful=config.faithful, cache_text=config.cache_text,
        )  # fmt: skip
        setattr(car, f"_{role}_backend", backend)
    return car


def measure(
    *, queries: int, steps: int, device: str, optimised: bool, repeats: int = 1
) -> dict[str, Any]:
    """Run CaR in this process and report seconds, stage timings, peak RSS and an output hash."""
    car = _build_car(device, optimised)
    image = bench_image()
    names = (
        list(VOC_CLASSES[:queries])
        if queries <= len(VOC_CLASSES)
        else [f"object {i}" for i in range(queries)]
    )
    car.forced_schedule = drop_schedule(len(names), steps)
    car.segment(image[:64, :64], names[:2])  # warm-up: allocator, kernels (not counted)
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = car.segment(image, names)
        seconds.append(time.perf_counter() - start)
    assert result is not None
    digest = hashlib.sha256(result.label_map.astype(np.int32).tobytes()).hexdigest()
    return {
        "seconds_per_image": min(seconds),
        "stages": {k: round(v, 3) for k, v in result.timings.items()},
        "steps": result.steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "label_map_sha256": digest,
        "scores": [round(float(s), 6) for s in result.scores],
    }


def _measure_in_subprocess(**kwargs: Any) -> dict[str, Any]:
    code = (
        "import json,sys; from cliprnn.bench.speed import measure; "
        f"print('@@' + json.dumps(measure(**{kwargs!r})))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker failed ({kwargs}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][2:])


def run_speed_benchmark(
    *, queries: int = 20, steps: int = 2, dataset: int = 0, device: str = "cpu",
    baseline: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """The full report of bench-speed (see the module docstring)."""
    opt = _measure_in_subprocess(queries=queries, steps=steps, device=device, optimised=True)
    one = _measure_in_subprocess(queries=1, steps=steps, device=device, optimised=True)
    report: dict[str, Any] = {
        "device": device,
        "queries": queries,
        "schedule": drop_schedule(queries, steps),
        "seconds_per_image": opt["seconds_per_image"],
        "stages": opt["stages"],
        "steps": opt["steps"],
        "peak_rss_mb": round(opt["peak_rss_mb"], 1),
        "first_query_seconds": one["seconds_per_image"],
        "marginal_query_seconds": (opt["seconds_per_image"] - one["seconds_per_image"])
        / max(1, queries - 1),
    }
    report["marginal_over_first"] = report["marginal_query_seconds"] / one["seconds_per_image"]
    if baseline:
        base = _measure_in_subprocess(queries=queries, steps=steps, device=device, optimised=False)
        report.update(
            baseline_seconds_per_image=base["seconds_per_image"],
            baseline_stages=base["stages"],
            baseline_peak_rss_mb=round(base["peak_rss_mb"], 1),
            speedup=base["seconds_per_image"] / opt["seconds_per_image"],
            identical=base["label_map_sha256"] == opt["label_map_sha256"],
            max_score_difference=float(
                np.max(np.abs(np.subtract(base["scores"], opt["scores"])), initial=0.0)
            ),
        )
    if dataset:
        from cliprnn.bench.throughput import dataset_throughput

        report["dataset"] = dataset_throughput(dataset, device=device)
    return report


def format_table(report: dict[str, Any]) -> str:
    """A human-readable summary of a bench-speed report."""
    rows = [
        ("device", report["device"]),
        ("queries / schedule", f"{report['queries']} / {report['schedule']}"),
        ("seconds per image", f"{report['seconds_per_image']:.2f}"),
        ("peak RSS (MB)", f"{report['peak_rss_mb']:.0f}"),
        ("first query (s)", f"{report['first_query_seconds']:.2f}"),
        ("marginal query (s)", f"{report['marginal_query_seconds']:.2f}"),
    ]
    if "speedup" in report:
        rows += [
            ("baseline seconds per image", f"{report['baseline_seconds_per_image']:.2f}"),
            ("speedup", f"{report['speedup']:.1f}x"),
            ("identical label maps", str(report["identical"])),
        ]
    rows += [(f"stage: {k}", f"{v:.2f}") for k, v in report["stages"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
