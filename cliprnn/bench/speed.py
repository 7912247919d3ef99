"""`python -m cliprnn bench-speed`: seconds per image at the paper's model sizes.

Builds the paper's architectures (ViT-B/16 proposal CLIP, ViT-L/14 classifier CLIP) with random
weights — speed does not depend on weight values, and nothing is downloaded — and runs the VOC
preset on one 500×375 image with the 20 VOC class names. Random weights make the real drop
schedule arbitrary, so the recurrence follows a fixed schedule. Each measured configuration runs
in its own subprocess so that its peak RSS is its own. Reported: seconds per image in the
steady state of a dataset run (text cache filled) and cold, seconds per stage (dense, text, cam,
affinity, prompts, classifier, crf), peak RSS, the 1-query time and the cost of each further
query, and the same for the baseline (every speed switch off) with the ratio and whether the
label maps are identical. See docs/speed.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
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
    "compact_weights",
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
) -> Any:
    """A VOC-preset CaR over random-weight CLIPs of ``archs`` (names or architecture dicts).

    ``optimised`` turns every speed switch on (the default config) or off (the reference's
    schedule). ``dtype`` defaults to float16 autocast on CUDA and fp32 on a CPU.
    """
    import torch
    from transformers import CLIPTokenizer

    from cliprnn.assets import tokenizer_dir
    from cliprnn.car import CaR
    from cliprnn.clip_backend import ClipBackend, resolve_device
    from cliprnn.random_clip import random_clip_model

    names = arch_names(archs)
    switches = dict.fromkeys(SPEED_SWITCHES, optimised)
    config = CaRConfig.preset(
        "voc", device=device, max_image_side=None, proposal_model=f"random:{names[0]}",
        classifier_model=f"random:{names[1]}",
        dtype=dtype or ("float16" if "cuda" in device else "float32"), **switches,
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
            compact_weights=config.compact_weights,
        )  # fmt: skip
        setattr(car, f"_{role}_backend", backend)
    return car


def query_names(queries: int) -> list[str]:
    """The first ``queries`` VOC class names (numbered objects beyond 20)."""
    if queries <= len(VOC_CLASSES):
        return list(VOC_CLASSES[:queries])
    return [f"object {i}" for i in range(queries)]


def measure(
    *, queries: int, steps: int, device: str, optimised: bool, repeats: int = 1,
    archs: tuple[Any, Any] = PAPER_ARCHS, dtype: str | None = None,
    labels_out: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run CaR in this process: seconds, stage timings, peak RSS and the outputs' digest.

    The first call on the bench image is the cold figure (``first_image_seconds``: text
    embeddings not cached yet); ``seconds_per_image`` is the best of ``repeats`` further calls,
    the steady state of a dataset run. ``repeats=0`` reports the cold call only.
    ``labels_out`` saves the label map there (``.npy``).
    """
    car = build_car(device, optimised, archs, dtype)
    image = bench_image()
    names = query_names(queries)
    car.forced_schedule = drop_schedule(len(names), steps)
    car.segment(image[:64, :64], ["a", "b"][: min(2, len(names))])  # kernels, allocator
    runs = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        result = car.segment(image, names)
        runs.append((time.perf_counter() - start, result))
    cold = runs[0][0]
    seconds, result = min(runs[1:] or runs, key=lambda r: r[0])
    digest = hashlib.sha256(result.label_map.astype(np.int32).tobytes()).hexdigest()
    if labels_out:
        np.save(labels_out, result.label_map.astype(np.int32))
    return {
        "seconds_per_image": seconds,
        "first_image_seconds": cold,
        "stages": {k: round(v, 3) for k, v in result.timings.items()},
        "steps": result.steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "label_map_sha256": digest,
        "kept": list(result.kept),
        "scores": [round(float(s), 7) for s in result.scores],
        "threads": _threads(),
    }


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


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


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def run_speed_benchmark(
    *, queries: int = 20, steps: int = 2, dataset: int = 0, device: str = "cpu",
    baseline: bool = True, archs: tuple[Any, Any] = PAPER_ARCHS, repeats: int = 1,
    bf16: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The full report of bench-speed (see the module docstring).

    ``bf16`` adds a run under bfloat16 autocast (not output-identical: it reports the share of
    pixels whose label matches the float32 run).
    """
    common = dict(steps=steps, device=device, archs=archs)
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="cliprnn-bench-") as workdir:
        fp32_labels, bf16_labels = (os.path.join(workdir, f"{d}.npy") for d in ("fp32", "bf16"))
        opt = _measure_in_subprocess(
            queries=queries, optimised=True, repeats=repeats,
            labels_out=fp32_labels if bf16 else None, **common,
        )  # fmt: skip
        if bf16:
            low = _measure_in_subprocess(
                queries=queries, optimised=True, repeats=repeats, dtype="bfloat16",
                labels_out=bf16_labels, **common,
            )  # fmt: skip
            agreement = float(np.mean(np.load(fp32_labels) == np.load(bf16_labels)))
    one = _measure_in_subprocess(queries=1, optimised=True, repeats=repeats, **common)
    marginal = (opt["seconds_per_image"] - one["seconds_per_image"]) / max(1, queries - 1)
    report: dict[str, Any] = {
        "device": device,
        "archs": arch_names(archs),
        "queries": queries,
        "schedule": drop_schedule(queries, steps),
        "seconds_per_image": opt["seconds_per_image"],
        "first_image_seconds": opt["first_image_seconds"],
        "stages": opt["stages"],
        "steps": opt["steps"],
        "peak_rss_mb": round(opt["peak_rss_mb"], 1),
        "threads": opt["threads"],
        "first_query_seconds": one["seconds_per_image"],
        "marginal_query_seconds": marginal,
        "marginal_over_first": marginal / one["seconds_per_image"],
    }
    if baseline:
        # the baseline caches nothing, so its first call is its steady state
        base = _measure_in_subprocess(queries=queries, optimised=False, repeats=0, **common)
        report.update(
            baseline_seconds_per_image=base["seconds_per_image"],
            baseline_stages=base["stages"],
            baseline_steps=base["steps"],
            baseline_peak_rss_mb=round(base["peak_rss_mb"], 1),
            speedup=base["seconds_per_image"] / opt["seconds_per_image"],
            identical=base["label_map_sha256"] == opt["label_map_sha256"]
            and base["kept"] == opt["kept"],
            max_score_difference=float(
                np.max(np.abs(np.subtract(base["scores"], opt["scores"])), initial=0.0)
            ),
        )
    if bf16:
        report.update(
            bf16_seconds_per_image=low["seconds_per_image"],
            bf16_stages=low["stages"],
            bf16_speedup=opt["seconds_per_image"] / low["seconds_per_image"],
            bf16_pixel_agreement=agreement,
            bf16_peak_rss_mb=round(low["peak_rss_mb"], 1),
        )
    if dataset:
        from cliprnn.bench.throughput import dataset_throughput

        report["dataset"] = dataset_throughput(
            dataset, device=device, queries=queries, steps=steps, archs=archs
        )
        report["dataset_over_single"] = (
            report["dataset"]["images_per_second"] * report["seconds_per_image"]
        )
    report["load_average"] = {"before": load_before, "after": _load_average()}
    return report


def format_table(report: dict[str, Any]) -> str:
    """A human-readable summary of a bench-speed report."""
    rows = [
        ("device / threads", f"{report['device']} / {report.get('threads', '?')}"),
        ("models", " + ".join(report.get("archs", []))),
        ("queries / schedule", f"{report['queries']} / {report['schedule']}"),
        ("seconds per image", f"{report['seconds_per_image']:.2f}"),
        ("first image (cold text cache)", f"{report['first_image_seconds']:.2f}"),
        ("peak RSS (MB)", f"{report['peak_rss_mb']:.0f}"),
        ("one query (s)", f"{report['first_query_seconds']:.2f}"),
        ("each further query (s)", f"{report['marginal_query_seconds']:.2f}"),
        ("further / first", f"{report['marginal_over_first']:.2f}"),
    ]
    if "speedup" in report:
        rows += [
            ("baseline seconds per image", f"{report['baseline_seconds_per_image']:.2f}"),
            ("baseline peak RSS (MB)", f"{report['baseline_peak_rss_mb']:.0f}"),
            ("speedup", f"{report['speedup']:.1f}x"),
            ("identical label maps", str(report["identical"])),
            ("max score difference", f"{report['max_score_difference']:.1e}"),
        ]
    if "bf16_seconds_per_image" in report:
        rows += [
            ("bf16 seconds per image", f"{report['bf16_seconds_per_image']:.2f}"),
            ("bf16 speedup over fp32", f"{report['bf16_speedup']:.1f}x"),
            ("bf16 pixels equal to fp32", f"{100 * report['bf16_pixel_agreement']:.2f} %"),
        ]
    if "dataset" in report:
        data = report["dataset"]
        rows.append(("dataset images per second", f"{data['images_per_second']:.4f}"))
        rows.append(("dataset / single image", f"{report['dataset_over_single']:.2f}"))
        if data.get("fiftyone_images_per_second") is not None:
            rows.append(
                ("segment_collection images/s", f"{data['fiftyone_images_per_second']:.4f}")
            )
    rows += [(f"stage: {k}", f"{v:.2f}") for k, v in report["stages"].items()]
    if "baseline_stages" in report:
        rows += [(f"baseline stage: {k}", f"{v:.2f}") for k, v in report["baseline_stages"].items()]
    rows.append(("load average before / after", f"{report['load_average']}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
