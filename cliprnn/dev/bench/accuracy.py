"""Accuracy benchmark: CaR and its ablations on generated scenes with exact ground truth.

Every image is queried with the whole class list (as the paper does on VOC). mIoU comes from
one confusion matrix over the split, background included (label 0); its 95 % interval is a
bootstrap over images (the split's images resampled with replacement, the matrix re-summed).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cliprnn.config import CaRConfig
from cliprnn.dev.metrics import confusion, miou_of
from cliprnn.dev.scenes import CLASSES, DEFAULT_SIZE, generate_scene
from cliprnn.scoring import BOOTSTRAP, bootstrap_interval, paired_gain_interval

#: Held out from training (training pairs use seeds below 1,000,000): 240 seeds spread evenly
#: over 10,000,000-33,999,999, so no stretch of consecutive seeds decides the result.
DEFAULT_SEEDS = range(10_000_000, 34_000_000, 100_000)

#: Benchmark rows: name -> config overrides of the full CaR run.
VARIANTS: dict[str, dict[str, Any]] = {
    "car": {},
    "single_step": {"max_steps": 1},
    "no_crf": {"crf": False},
    "gradcam": {"refine_affinity": False},
    "affinity": {"refine_affinity": True},
    # only the classes present in the image are queried (one step, θ = 0): about what the
    # proposals reach when the classifier makes no mistake
    "oracle_queries": {"max_steps": 1, "confidence_threshold": 0.0},
}

#: Variants whose queries are the image's present classes instead of the whole class list.
ORACLE_VARIANTS = frozenset({"oracle_queries"})


class SplitScore:
    """One run over a split of scenes: per-image confusion matrices and query keep counts."""

    def __init__(self, images: int, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)  # label value -> name; 0 is the background
        n = len(self.labels)
        self.matrices = np.zeros((images, n, n), np.int64)
        self.missed = np.zeros((images, n), np.int64)
        self.counts = np.zeros(4, np.int64)  # absent, absent dropped, present, present kept
        self.steps = 0
        self.images = images

    def add(
        self,
        k: int,
        result: Any,
        gt: np.ndarray,
        present: set[str],
        values: Mapping[str, int] | None = None,
    ) -> None:
        """Score image ``k``: ``result`` (a CaRResult) against the label map ``gt``.

        ``values`` maps each query name to its label value in ``gt`` (default: its index in
        ``labels``); ``present`` names the classes ``gt`` shows.
        """
        index = values if values is not None else {q: i for i, q in enumerate(self.labels)}
        lookup = np.zeros(len(result.queries) + 1, np.int64)
        lookup[1:] = [index[q] for q in result.queries]
        self.add_labels(k, lookup[result.label_map], gt)
        kept = set(result.kept)
        absent = [q for q in result.queries if q not in present]
        self.counts += (
            len(absent),
            sum(1 for q in absent if q not in kept),
            len(present),
            len(present & kept),
        )
        self.steps += result.steps

    def add_labels(self, k: int, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add a label map ``pred`` (values index ``labels``) against ``gt`` to the counts of
        item ``k`` (an image, or a clip whose frames all count as item ``k``)."""
        matrix, missed = confusion(pred, gt, len(self.labels))
        self.matrices[k] += matrix
        self.missed[k] += missed

    def interval(self, resamples: int = BOOTSTRAP) -> list[float]:
        """The 95 % bootstrap interval of :meth:`miou`, items resampled."""
        return list(bootstrap_interval(self.matrices, self.missed, resamples))

    def miou(self) -> float:
        """mIoU in % over the whole split."""
        return 100.0 * miou_of(self.matrices.sum(axis=0), self.missed.sum(axis=0))

    def summary(self, name: str, resamples: int = BOOTSTRAP) -> dict[str, Any]:
        """``<name>_miou`` (+ ``_ci``), ``_absent_dropped``, ``_present_kept``, ``_mean_steps``."""
        c = self.counts
        return {
            f"{name}_miou": self.miou(),
            f"{name}_miou_ci": self.interval(resamples),
            f"{name}_absent_dropped": float(c[1] / max(c[0], 1)),
            f"{name}_present_kept": float(c[3] / max(c[2], 1)),
            f"{name}_mean_steps": self.steps / max(self.images, 1),
        }

    def class_iou(self) -> dict[str, float]:
        """IoU in % of every label the split shows."""
        total = self.matrices.sum(axis=0).astype(np.float64)
        tp = np.diag(total)
        gt = total.sum(axis=1) + self.missed.sum(axis=0)
        union = gt + total.sum(axis=0) - tp
        return {
            label: round(100.0 * float(tp[i] / union[i]), 2)
            for i, label in enumerate(self.labels)
            if gt[i] > 0
        }


def score_scenes(
    seeds: Sequence[int],
    cars: Mapping[str, Any],
    size: tuple[int, int] = DEFAULT_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, SplitScore]:
    """Each named engine's scores on the same generated scenes, every class queried (only the
    present ones for the ``ORACLE_VARIANTS`` names)."""
    scores = {name: SplitScore(len(seeds), ("background", *CLASSES)) for name in cars}
    for k, seed in enumerate(seeds):
        scene = generate_scene(seed, size)
        present = set(scene.present_names)
        for name, car in cars.items():
            queries = scene.present_names if name in ORACLE_VARIANTS else list(CLASSES)
            scores[name].add(k, car.segment(scene.image, queries), scene.label_map, present)
        if progress is not None:
            progress(k + 1, len(seeds))
    return scores


def run_accuracy_benchmark(
    seeds: Iterable[int] = DEFAULT_SEEDS,
    config: CaRConfig | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
    progress: Callable[[int, int], None] | None = None,
    variants: Iterable[str] = tuple(VARIANTS),
    resamples: int = BOOTSTRAP,
) -> dict[str, Any]:
    """mIoU (in %) of full CaR and its ablations, with 95 % bootstrap intervals.

    ``config`` defaults to the ``mini`` preset. Returns a JSON-able dict with keys
    ``car_miou``, ``single_step_miou``, ``no_crf_miou``, ``gradcam_miou``, ``affinity_miou``
    (the CLIP-ES refinement switched on, whatever the preset says), ``oracle_queries_miou``
    (only the present classes queried), each with ``<name>_miou_ci`` = [low, high];
    ``absent_dropped``, ``present_kept`` (fractions of the full run), ``recurrence_gain``
    (car - single_step, with its paired bootstrap interval ``recurrence_gain_ci``), ``images``,
    ``seconds``, plus per-variant details. ``variants`` limits the runs (for tuning).
    """
    from cliprnn.car import CaR

    seeds = list(seeds)
    config = config if config is not None else CaRConfig.preset("mini")
    start = time.perf_counter()
    names = [v for v in VARIANTS if v in set(variants)]
    cars: dict[str, Any] = {}
    for name in names:
        if cars:  # every variant runs on the first one's CLIPs (same weights, other settings)
            cars[name] = cars[names[0]].sharing_models(**VARIANTS[name])
        else:
            cars[name] = CaR(config.replace(**VARIANTS[name]))
    scores = score_scenes(seeds, cars, size, progress)
    report: dict[str, Any] = {}
    for name in names:
        report.update(scores[name].summary(name, resamples))
    if "car" in names and "single_step" in names:
        report["recurrence_gain"] = report["car_miou"] - report["single_step_miou"]
        report["recurrence_gain_ci"] = list(
            paired_gain_interval(
                (scores["car"].matrices, scores["car"].missed),
                (scores["single_step"].matrices, scores["single_step"].missed),
                resamples,
            )
        )
    main = names[0]
    report["absent_dropped"] = report[f"{main}_absent_dropped"]
    report["present_kept"] = report[f"{main}_present_kept"]
    report["per_class_iou"] = scores[main].class_iou()
    report["images"] = len(seeds)
    report["seeds"] = describe_seeds(seeds)
    report["seconds"] = time.perf_counter() - start
    return report


def describe_seeds(seeds: list[int]) -> str:
    """START:END, or START:END:STEP for an evenly spaced list."""
    if not seeds:
        return ""
    if len(seeds) > 1:
        step = seeds[1] - seeds[0]
        if step > 1 and all(b - a == step for a, b in itertools.pairwise(seeds)):
            return f"{seeds[0]}:{seeds[-1] + 1}:{step}"
    return f"{seeds[0]}:{seeds[-1] + 1}"


def format_table(report: dict[str, Any]) -> str:
    """The benchmark as a small text table (mIoU in % with 95 % intervals, rates in %)."""
    rows = [
        ("full CaR", "car"),
        ("one step (no recurrence)", "single_step"),
        ("no CRF", "no_crf"),
        ("Grad-CAM without affinity refinement", "gradcam"),
        ("with CLIP-ES affinity refinement", "affinity"),
        ("oracle queries (present classes only)", "oracle_queries"),
    ]
    lines = [f"{'variant':<40} {'mIoU':>6}  95 % interval"]
    for label, key in rows:
        if f"{key}_miou" not in report:
            continue
        ci = report.get(f"{key}_miou_ci")
        interval = f"  [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
        lines.append(f"{label:<40} {report[f'{key}_miou']:6.1f}{interval}")
    if "recurrence_gain" in report:
        ci = report.get("recurrence_gain_ci")
        interval = f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else ""
        lines.append(
            f"recurrence gain (full - one step): {report['recurrence_gain']:+.1f}{interval}"
        )
    lines.append(f"absent queries dropped: {100 * report['absent_dropped']:.1f} %")
    lines.append(f"present queries kept:   {100 * report['present_kept']:.1f} %")
    lines.append(f"{report['images']} images (seeds {report['seeds']}), {report['seconds']:.0f} s")
    return "\n".join(lines)
