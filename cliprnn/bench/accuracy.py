"""Accuracy benchmark: CaR and its ablations on generated scenes with exact ground truth.

Every image is queried with the whole class list (as the paper does on VOC). mIoU comes from
one confusion matrix over the split, background included (label 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from cliprnn.config import CaRConfig
from cliprnn.metrics import ConfusionMatrix
from cliprnn.scenes import CLASSES, DEFAULT_SIZE, generate_scene

#: Held out from training (training pairs use seeds below 1,000,000).
DEFAULT_SEEDS = range(10_000_000, 10_000_032)

#: Benchmark rows: name -> config overrides of the full CaR run.
VARIANTS: dict[str, dict[str, Any]] = {
    "car": {},
    "single_step": {"max_steps": 1},
    "no_crf": {"crf": False},
    "gradcam": {"refine_affinity": False},
    "affinity": {"refine_affinity": True},
}


def _share_models(target: Any, source: Any) -> None:
    """Let ``target`` reuse ``source``'s loaded CLIPs (same weights, other thresholds)."""
    target._proposal_backend = source.proposal_backend
    target._classifier_backend = source.classifier_backend


def run_accuracy_benchmark(
    seeds: Iterable[int] = DEFAULT_SEEDS,
    config: CaRConfig | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
    progress: Callable[[int, int], None] | None = None,
    variants: Iterable[str] = tuple(VARIANTS),
) -> dict[str, Any]:
    """mIoU (in %) of full CaR and its ablations, and absent-dropped / present-kept rates.

    ``config`` defaults to the ``mini`` preset. Returns a JSON-able dict with keys
    ``car_miou``, ``single_step_miou``, ``no_crf_miou``, ``gradcam_miou``,
    ``absent_dropped``, ``present_kept`` (fractions of the full run), ``images``, ``seconds``,
    ``affinity_miou`` (the CLIP-ES refinement switched on, whatever the preset says), plus
    per-variant details. ``variants`` limits the runs to some of VARIANTS (for tuning).
    """
    from cliprnn.car import CaR

    seeds = list(seeds)
    config = config if config is not None else CaRConfig.preset("mini")
    start = time.perf_counter()
    names = [v for v in VARIANTS if v in set(variants)]
    cars: dict[str, Any] = {}
    for name in names:
        cars[name] = CaR(config.replace(**VARIANTS[name]))
        if len(cars) > 1:
            _share_models(cars[name], cars[names[0]])
    n_labels = len(CLASSES) + 1
    matrices = {name: ConfusionMatrix(n_labels) for name in names}
    counts = {name: np.zeros(4, np.int64) for name in names}  # absent, dropped, present, kept
    steps = {name: 0 for name in names}
    queries = list(CLASSES)
    for k, seed in enumerate(seeds):
        scene = generate_scene(seed, size)
        present = set(scene.present_names)
        for name, car in cars.items():
            result = car.segment(scene.image, queries)
            lookup = np.zeros(len(result.queries) + 1, np.int64)
            lookup[1:] = [CLASSES.index(q) + 1 for q in result.queries]
            matrices[name].update(lookup[result.label_map], scene.label_map)
            kept = set(result.kept)
            c = counts[name]
            c[0] += len(CLASSES) - len(present)
            c[1] += sum(1 for q in CLASSES if q not in present and q not in kept)
            c[2] += len(present)
            c[3] += len(present & kept)
            steps[name] += result.steps
        if progress is not None:
            progress(k + 1, len(seeds))
    n = max(len(seeds), 1)
    report: dict[str, Any] = {}
    for name in names:
        c = counts[name]
        report[f"{name}_miou"] = 100.0 * matrices[name].miou()
        report[f"{name}_absent_dropped"] = float(c[1] / max(c[0], 1))
        report[f"{name}_present_kept"] = float(c[3] / max(c[2], 1))
        report[f"{name}_mean_steps"] = steps[name] / n
    main = names[0]
    report["absent_dropped"] = report[f"{main}_absent_dropped"]
    report["present_kept"] = report[f"{main}_present_kept"]
    report["per_class_iou"] = {
        label: round(100.0 * float(v), 2)
        for label, v in zip(("background", *CLASSES), matrices[main].iou(), strict=True)
        if not np.isnan(v)
    }
    report["images"] = len(seeds)
    report["seeds"] = f"{seeds[0]}:{seeds[-1] + 1}" if seeds else ""
    report["seconds"] = time.perf_counter() - start
    return report


def format_table(report: dict[str, Any]) -> str:
    """The benchmark as a small text table (mIoU in %, rates in %)."""
    rows = [
        ("full CaR", report["car_miou"]),
        ("one step (no recurrence)", report["single_step_miou"]),
        ("no CRF", report["no_crf_miou"]),
        ("Grad-CAM without affinity refinement", report["gradcam_miou"]),
    ]
    if "affinity_miou" in report:
        rows.append(("with CLIP-ES affinity refinement", report["affinity_miou"]))
    lines = [f"{'variant':<40} {'mIoU':>6}"]
    lines += [f"{name:<40} {value:6.1f}" for name, value in rows]
    lines.append(f"absent queries dropped: {100 * report['absent_dropped']:.1f} %")
    lines.append(f"present queries kept:   {100 * report['present_kept']:.1f} %")
    lines.append(f"{report['images']} images (seeds {report['seeds']}), {report['seconds']:.0f} s")
    return "\n".join(lines)
