"""Calibration benchmark: does tuning CaR on a few labelled scenes help on unseen ones?

For each scene style (``cliprnn.dev.scenes.STYLES``) and each number N of labelled samples,
``cliprnn.calibration.calibrate`` tunes the ``mini`` preset on N training-range scenes of that
style (seeds ``LABELLED_START`` onwards, below 1,000,000); then the preset and the calibrated
configuration segment the same held-out scenes of that style (default: ``accuracy
.DEFAULT_SEEDS``, 240 seeds). Each mIoU gets a 95 % bootstrap interval over the held-out images,
the gain (calibrated - preset) a paired one: the same resampled images for both. Every image is
queried with the whole class list, as in ``bench-accuracy``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cliprnn.config import CaRConfig
from cliprnn.dev.bench.accuracy import (
    BOOTSTRAP,
    DEFAULT_SEEDS,
    SplitScore,
    describe_seeds,
    paired_gain_interval,
)
from cliprnn.dev.mini_clip.data import TRAIN_SEED_LIMIT
from cliprnn.dev.scenes import CLASSES, DEFAULT_SIZE, STYLES, generate_scene

#: Numbers of labelled samples calibrated on, by default.
DEFAULT_LABELLED: tuple[int, ...] = (10, 30)

#: The labelled samples are the scenes of seeds LABELLED_START, LABELLED_START + 1, ... in the
#: training range (below 1,000,000), apart from the held-out range and from the seeds the
#: preset was tuned on (990,000-999,999); the first N of them calibrate a run with N samples.
LABELLED_START = 500_000

#: Ground-truth label value -> class name, as the scenes' label maps hold them.
TARGETS: dict[int, str] = {0: "background", **{i + 1: name for i, name in enumerate(CLASSES)}}

_LABELS = ("background", *CLASSES)


def labelled_seeds(start: int, n: int) -> range:
    """The seeds of ``n`` labelled scenes from ``start``; ValueError outside the training range."""
    if start < 0 or start + n > TRAIN_SEED_LIMIT:
        raise ValueError(f"labelled seeds {start}:{start + n} must be training seeds (< 1,000,000)")
    return range(start, start + n)


def labelled_samples(
    style: str, n: int, size: tuple[int, int] = DEFAULT_SIZE, start: int = LABELLED_START
) -> list[Any]:
    """``n`` labelled training scenes of ``style`` (seeds from ``start``) as calibration samples."""
    from cliprnn.calibration import LabelledImage

    samples = []
    for seed in labelled_seeds(start, n):
        scene = generate_scene(seed, size, style=style)
        samples.append(LabelledImage(scene.image, scene.label_map, f"{style} scene {seed}"))
    return samples


def score_split(
    car: Any, seeds: Sequence[int], style: str, size: tuple[int, int] = DEFAULT_SIZE
) -> SplitScore:
    """``car`` on the scenes of ``seeds`` in ``style``, every class queried."""
    score = SplitScore(len(seeds), _LABELS)
    for k, seed in enumerate(seeds):
        scene = generate_scene(seed, size, style=style)
        result = car.segment(scene.image, list(CLASSES))
        score.add(k, result, scene.label_map, set(scene.present_names))
    return score


def run_calibration_benchmark(
    labelled: Iterable[int] = DEFAULT_LABELLED,
    seeds: Iterable[int] = DEFAULT_SEEDS,
    styles: Iterable[str] = STYLES,
    config: CaRConfig | None = None,
    budget: int = 150,
    resamples: int = BOOTSTRAP,
    size: tuple[int, int] = DEFAULT_SIZE,
    log: Callable[[str], None] | None = None,
    labelled_start: int = LABELLED_START,
    min_gain_se: float = 1.0,
) -> dict[str, Any]:
    """Preset against calibrated mIoU (in %) per style and number of labelled samples.

    ``config`` defaults to the ``mini`` preset; its CLIPs load once and every calibrated engine
    shares them. Returns a JSON-able dict: ``rows``, one per (style, N), with ``style``,
    ``labelled``, ``preset_miou`` / ``calibrated_miou`` (each with ``_ci`` = [low, high]) on the
    held-out scenes, ``gain`` and its paired ``gain_ci``, the calibration's ``overrides``,
    ``kept_base``, ``search_seconds``, ``passes_computed``, ``passes_requested``,
    ``naive_grid_passes``, ``cv_score`` (+ ``cv_score_ci``), ``cv_base_score``, ``cv_gain``
    (+ ``cv_gain_ci``), ``fit_score`` and ``best_found``; and the run's ``styles``,
    ``labelled``, ``labelled_seeds``, ``images``, ``seeds``, ``budget`` and ``seconds``.
    ``log`` receives a line as each stage ends.
    """
    from cliprnn.calibration import calibrate
    from cliprnn.car import CaR

    seeds, labelled, styles = list(seeds), sorted(set(labelled)), list(styles)
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ValueError(f"unknown scene styles {unknown}; choose from {list(STYLES)}")
    if not labelled or min(labelled) < 2:
        raise ValueError(f"every number of labelled samples must be >= 2, got {labelled}")
    labelled_seeds(labelled_start, labelled[-1])  # checked before any work
    say = log or (lambda _line: None)
    start = time.perf_counter()
    car = CaR(config if config is not None else CaRConfig.preset("mini"))
    rows = []
    for style in styles:
        t0 = time.perf_counter()
        preset = score_split(car, seeds, style, size)
        say(f"{style}: preset {preset.miou():.1f} on {len(seeds)} held-out scenes, "
            f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
        for n in labelled:
            result = calibrate(
                car, labelled_samples(style, n, size, labelled_start), list(CLASSES), TARGETS,
                budget=budget, resamples=resamples, min_gain_se=min_gain_se,
            )  # fmt: skip
            say(f"{style}, {n} labelled: overrides {result.overrides or 'none (base kept)'}, "
                f"cv {result.score:.1f} vs base {result.base_score:.1f}, "
                f"{result.seconds:.0f} s")  # fmt: skip
            if result.overrides:
                t0 = time.perf_counter()
                tuned_car = car.sharing_models(
                    **{k: getattr(result.config, k) for k in result.overrides}
                )
                tuned = score_split(tuned_car, seeds, style, size)
                say(f"{style}, {n} labelled: calibrated {tuned.miou():.1f} held out, "
                    f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
            else:
                tuned = preset  # the base configuration kept: the same segmentations
            rows.append(_row(style, n, preset, tuned, result, resamples))
    return {
        "rows": rows,
        "styles": styles,
        "labelled": labelled,
        "labelled_seeds": f"{labelled_start}:{labelled_start + labelled[-1]}",
        "images": len(seeds),
        "seeds": describe_seeds(seeds),
        "budget": budget,
        "min_gain_se": min_gain_se,
        "seconds": time.perf_counter() - start,
    }


def _row(
    style: str, n: int, preset: SplitScore, tuned: SplitScore, result: Any, resamples: int
) -> dict[str, Any]:
    gain_ci = paired_gain_interval(
        (tuned.matrices, tuned.missed), (preset.matrices, preset.missed), resamples
    )
    return {
        "style": style,
        "labelled": n,
        "preset_miou": preset.miou(),
        "preset_miou_ci": preset.interval(resamples),
        "calibrated_miou": tuned.miou(),
        "calibrated_miou_ci": tuned.interval(resamples),
        "gain": tuned.miou() - preset.miou(),
        "gain_ci": list(gain_ci),
        "overrides": result.overrides,
        "kept_base": bool(result.kept_base),
        "search_seconds": float(result.seconds),
        "passes_computed": int(result.passes_computed),
        "passes_requested": int(result.passes_requested),
        "naive_grid_passes": int(result.naive_grid_passes),
        "cv_score": float(result.score),
        "cv_score_ci": list(result.score_interval),
        "cv_base_score": float(result.base_score),
        "cv_gain": float(result.gain),
        "cv_gain_ci": list(result.gain_interval),
        "fit_score": float(result.fit_score),
        "best_found": getattr(result, "best_found", None),
    }


def _short(overrides: dict[str, Any]) -> str:
    names = {"confidence_threshold": "θ", "mask_threshold": "η", "visual_prompts": "prompts",
             "background_words": "bg", "crf": "crf"}  # fmt: skip
    parts = []
    for key, value in overrides.items():
        if isinstance(value, (list, tuple)):
            value = "+".join(str(v) for v in value) if len(value) <= 4 else f"{len(value)} words"
        parts.append(f"{names.get(key, key)}={value}")
    return ", ".join(parts) or "(preset kept)"


def format_table(report: dict[str, Any]) -> str:
    """The benchmark as a text table: held-out mIoU in % with 95 % intervals, per style and N."""
    head = (f"{'style':<9} {'N':>3}  {'preset':>18}  {'calibrated':>18}  {'gain':>20}  "
            f"{'cv gain':>6}  {'search':>6}  {'passes':>17}  chosen")  # fmt: skip
    lines = [head]
    for r in report["rows"]:
        p, c, g = r["preset_miou_ci"], r["calibrated_miou_ci"], r["gain_ci"]
        passes = f"{r['passes_computed']}/{r['passes_requested']}/{r['naive_grid_passes']}"
        lines.append(
            f"{r['style']:<9} {r['labelled']:>3}  "
            f"{r['preset_miou']:5.1f} [{p[0]:4.1f}, {p[1]:4.1f}]  "
            f"{r['calibrated_miou']:5.1f} [{c[0]:4.1f}, {c[1]:4.1f}]  "
            f"{r['gain']:+5.1f} [{g[0]:+5.1f}, {g[1]:+5.1f}]  "
            f"{r['cv_gain']:+6.1f}  {r['search_seconds']:5.0f}s  {passes:>17}  "
            f"{_short(r['overrides'])}"
        )
    lines.append(
        f"held out: {report['images']} images per style (seeds {report['seeds']}); labelled: "
        f"seeds {report['labelled_seeds']}; budget {report['budget']}; "
        f"passes = computed/requested/naive grid; {report['seconds']:.0f} s"
    )
    return "\n".join(lines)
