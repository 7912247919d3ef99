"""`python -m cliprnn bench-speed`: seconds per image at the paper's model sizes.

Builds the paper's architectures (ViT-B/16 proposal CLIP, ViT-L/14 classifier CLIP) with random
weights — speed does not depend on weight values, and nothing is downloaded — and runs the VOC
preset on one 500×375 image with the 20 VOC class names. Random weights make the real drop
schedule arbitrary, so the recurrence follows a fixed schedule. Each measured configuration runs
in its own subprocess so that its peak RSS is its own. Reported: seconds per image in the
steady state of a dataset run (text cache filled), the first image of a cold run (empty on-disk
text cache) and of a warm one (a second process on the same cache), seconds per stage (dense,
text, cam, affinity, prompts, classifier, crf), peak RSS, the 1-query time and the cost of each
further query, and the same for the baseline (every speed switch off) with the ratio and
whether the label maps are identical. ``dataset`` adds images/s over generated JPEG files, with
and without the CRF overlap of ``cliprnn.pipeline.segment_stream``. See docs/speed.md.
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

from cliprnn.car import set_forced_schedule
from cliprnn.dev.bench.common import (
    IMAGE_HW,
    PAPER_ARCHS,
    SPEED_SWITCHES,
    arch_names,
    bench_image,
    build_car,
    drop_schedule,
    query_names,
)
from cliprnn.dev.bench.throughput import dataset_throughput

__all__ = [
    "IMAGE_HW",
    "PAPER_ARCHS",
    "SPEED_SWITCHES",
    "arch_names",
    "bench_image",
    "build_car",
    "dataset_throughput",
    "drop_schedule",
    "format_table",
    "measure",
    "query_names",
    "run_speed_benchmark",
]


def measure(
    *, queries: int, steps: int, device: str, optimised: bool, repeats: int = 1,
    archs: tuple[Any, Any] = PAPER_ARCHS, dtype: str | None = None,
    labels_out: str | None = None, text_cache_dir: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run CaR in this process: seconds, stage timings, peak RSS and the outputs' digest.

    The first call on the bench image is the cold figure (``first_image_seconds``: the class
    list's text embeddings not in memory yet, and read from ``text_cache_dir`` when it holds
    them); ``seconds_per_image`` is the best of ``repeats`` further calls, the steady state of
    a dataset run. ``repeats=0`` reports the cold call only. ``labels_out`` saves the label
    map there (``.npy``). ``text_cache`` counts the on-disk cache's hits, misses and writes;
    ``first_image_text_seconds`` is the first call's time in text embedding (passes and disk
    reads), the part of the first image a steady-state image does not spend.
    """
    car = build_car(device, optimised, archs, dtype, text_cache_dir=text_cache_dir)
    image = bench_image()
    names = query_names(queries)
    set_forced_schedule(car, drop_schedule(len(names), steps))
    car.segment(image[:64, :64], ["a", "b"][: min(2, len(names))])  # kernels, allocator
    backends = list({id(b): b for b in (car.proposal_backend, car.classifier_backend)}.values())
    runs = []
    text_seconds = []
    for _ in range(1 + repeats):
        text_before = sum(b.text_seconds for b in backends)
        start = time.perf_counter()
        result = car.segment(image, names)
        runs.append((time.perf_counter() - start, result))
        text_seconds.append(sum(b.text_seconds for b in backends) - text_before)
    cold = runs[0][0]
    seconds, result = min(runs[1:] or runs, key=lambda r: r[0])
    digest = hashlib.sha256(result.label_map.astype(np.int32).tobytes()).hexdigest()
    if labels_out:
        np.save(labels_out, result.label_map.astype(np.int32))
    return {
        "seconds_per_image": seconds,
        "first_image_seconds": cold,
        "first_image_text_seconds": text_seconds[0],
        "stages": {k: round(v, 3) for k, v in result.timings.items()},
        "steps": result.steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "label_map_sha256": digest,
        "kept": list(result.kept),
        "scores": [round(float(s), 7) for s in result.scores],
        "threads": _threads(),
        "text_cache": _disk_counts(car),
    }


def _disk_counts(car: Any) -> dict[str, int]:
    """Hits, misses, corrupt entries and writes of the models' on-disk text caches."""
    counts = dict.fromkeys(("hits", "misses", "corrupt", "writes"), 0)
    backends = {id(b): b for b in (car.proposal_backend, car.classifier_backend)}
    for backend in backends.values():
        disk = getattr(backend, "_disk", None)
        for name in counts:
            counts[name] += int(getattr(disk, name, 0))
    return counts


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _measure_in_subprocess(**kwargs: Any) -> dict[str, Any]:
    code = (
        "import json,sys; from cliprnn.dev.bench.speed import measure; "
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
    bf16: bool = False, crf_workers: int = 0, warm: bool = True, dtype: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The full report of bench-speed (see the module docstring).

    The optimised run starts on an empty on-disk text cache (``first_image_seconds``, cold);
    with ``warm`` a second process runs on the cache it filled (``first_image_seconds_warm``).
    Each ``first_over_steady`` divides a first image by the steady state of the same process.
    ``bf16`` adds a run under bfloat16 autocast (not output-identical: it reports the share of
    pixels whose label matches the float32 run). ``dataset`` images are also run through
    ``segment_stream`` with ``crf_workers`` when that is above 0. ``dtype`` (default: float16
    autocast on CUDA, float32 on a CPU) applies to every run but the bf16 one.
    """
    common = dict(steps=steps, device=device, archs=archs, dtype=dtype)
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="cliprnn-bench-") as workdir:
        fp32_labels, bf16_labels = (os.path.join(workdir, f"{d}.npy") for d in ("fp32", "bf16"))
        cache_dir = os.path.join(workdir, "text-cache")
        opt = _measure_in_subprocess(
            queries=queries, optimised=True, repeats=repeats, text_cache_dir=cache_dir,
            labels_out=fp32_labels if bf16 else None, **common,
        )  # fmt: skip
        hot = None
        if warm:
            hot = _measure_in_subprocess(
                queries=queries, optimised=True, repeats=max(1, repeats),
                text_cache_dir=cache_dir, **common,
            )  # fmt: skip
        if bf16:
            low = _measure_in_subprocess(
                queries=queries, optimised=True, repeats=repeats, labels_out=bf16_labels,
                **{**common, "dtype": "bfloat16"},
            )  # fmt: skip
            agreement = float(np.mean(np.load(fp32_labels) == np.load(bf16_labels)))
    one = _measure_in_subprocess(queries=1, optimised=True, repeats=repeats, **common)
    marginal = (opt["seconds_per_image"] - one["seconds_per_image"]) / max(1, queries - 1)
    report: dict[str, Any] = {
        "device": device,
        "dtype": dtype or ("float16" if "cuda" in device else "float32"),
        "archs": arch_names(archs),
        "queries": queries,
        "schedule": drop_schedule(queries, steps),
        "seconds_per_image": opt["seconds_per_image"],
        "first_image_seconds": opt["first_image_seconds"],
        "first_over_steady": opt["first_image_seconds"] / opt["seconds_per_image"],
        "first_image_text_seconds": opt["first_image_text_seconds"],
        "text_cache_cold": opt["text_cache"],
        "stages": opt["stages"],
        "steps": opt["steps"],
        "peak_rss_mb": round(opt["peak_rss_mb"], 1),
        "threads": opt["threads"],
        "first_query_seconds": one["seconds_per_image"],
        "marginal_query_seconds": marginal,
        "marginal_over_first": marginal / one["seconds_per_image"],
    }
    if hot is not None:
        report.update(
            first_image_seconds_warm=hot["first_image_seconds"],
            warm_seconds_per_image=hot["seconds_per_image"],
            first_over_steady_warm=hot["first_image_seconds"] / hot["seconds_per_image"],
            first_image_text_seconds_warm=hot["first_image_text_seconds"],
            text_cache_warm=hot["text_cache"],
            warm_identical=hot["label_map_sha256"] == opt["label_map_sha256"]
            and hot["kept"] == opt["kept"]
            and hot["scores"] == opt["scores"],
        )
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
        report["dataset"] = dataset_throughput(
            dataset, device=device, queries=queries, steps=steps, archs=archs,
            crf_workers=crf_workers, dtype=dtype,
        )  # fmt: skip
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
        ("first image, cold text cache (s)", f"{report['first_image_seconds']:.2f}"),
        ("first / steady, cold", f"{report.get('first_over_steady', float('nan')):.2f}"),
        (
            "first image's text embedding, cold (s)",
            f"{report.get('first_image_text_seconds', float('nan')):.2f}",
        ),
        ("peak RSS (MB)", f"{report['peak_rss_mb']:.0f}"),
        ("one query (s)", f"{report['first_query_seconds']:.2f}"),
        ("each further query (s)", f"{report['marginal_query_seconds']:.2f}"),
        ("further / first", f"{report['marginal_over_first']:.2f}"),
    ]
    if "first_image_seconds_warm" in report:
        rows += [
            ("first image, warm text cache (s)", f"{report['first_image_seconds_warm']:.2f}"),
            ("first / steady, warm", f"{report['first_over_steady_warm']:.2f}"),
            (
                "first image's text embedding, warm (s)",
                f"{report['first_image_text_seconds_warm']:.2f}",
            ),
            ("warm run identical to cold", str(report["warm_identical"])),
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
        if "overlap_images_per_second" in data:
            rows += [
                (f"with CRF overlap ({data['crf_workers']} workers) images/s",
                 f"{data['overlap_images_per_second']:.4f}"),
                ("CRF overlap speedup", f"{data['overlap_speedup']:.3f}x"),
                ("CRF overlap identical outputs", str(data["overlap_identical"])),
            ]  # fmt: skip
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
