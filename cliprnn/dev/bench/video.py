"""Video benchmark: CaR on generated clips, every frame from scratch versus query carrying.

Each clip (:func:`cliprnn.dev.clips.generate_clip`, held-out seeds) is written to an H.264 mp4
and read back through :func:`cliprnn.video.segment_video`, so frames are the decoded ones and
the timings include decoding. Every frame is queried with the whole class list. Modes:

- ``scratch``: every frame from the full query list;
- ``carry``: query carrying (refresh and scene-cut restarts from the config);
- ``step3``: every third frame from scratch; ``carry_step3``: every third frame, carried.

mIoU comes from one confusion matrix over the split's frames, background included. For the
frame-step modes it is given twice: over the labelled frames only, and over every frame with
the previous labelled frame's map held. Its 95 % intervals resample whole clips (frames of a
clip are not independent), as do the paired intervals of the differences to ``scratch``.
Seconds per frame are wall time over *all* video frames (decoding included), so a frame-step
mode's figure is what one video frame costs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cliprnn.config import CaRConfig
from cliprnn.dev.bench.accuracy import BOOTSTRAP, SplitScore, describe_seeds, paired_gain_interval
from cliprnn.dev.clips import DEFAULT_FRAMES, Clip, generate_clip
from cliprnn.dev.scenes import CLASSES, DEFAULT_SIZE


def clip_seeds(clips: int) -> range:
    """``clips`` held-out clip seeds, 1,000,000 apart from 40,000,000 (training uses seeds below
    1,000,000, the image benchmark 10,000,000-33,999,999)."""
    return range(40_000_000, 40_000_000 + clips * 1_000_000, 1_000_000)


DEFAULT_CLIPS = 24
DEFAULT_CLIP_SEEDS = clip_seeds(DEFAULT_CLIPS)
#: Training clips, on which the scene-cut threshold was chosen (tune_scene_cut).
TRAINING_CLIP_SEEDS = range(0, 1_000_000, 12_500)

#: Benchmark modes: name -> segment_video options.
MODES: dict[str, dict[str, Any]] = {
    "scratch": {"carry": False, "frame_step": 1},
    "carry": {"carry": True, "frame_step": 1},
    "step3": {"carry": False, "frame_step": 3},
    "carry_step3": {"carry": True, "frame_step": 3},
}


def clip_cut(seed: int, n_frames: int) -> int | None:
    """Where the benchmark clip of ``seed`` cuts to another shot: a third of clips, mid-clip."""
    rng = np.random.default_rng([seed, 1])
    if n_frames < 8 or rng.random() >= 1 / 3:
        return None
    return int(rng.integers(n_frames // 4, n_frames - n_frames // 4))


def benchmark_clip(seed: int, n_frames: int, size: tuple[int, int] = DEFAULT_SIZE) -> Clip:
    """The benchmark's clip of one seed (with its cut, if it has one)."""
    return generate_clip(seed, size, n_frames, cut_at=clip_cut(seed, n_frames))


def first_after_cut(clip: Clip, step: int) -> int | None:
    """The first frame labelled at ``frame_step=step`` that shows the clip's second shot."""
    if clip.cut_at is None:
        return None
    first = -(-clip.cut_at // step) * step
    return first if first < len(clip) else None


def run_video_benchmark(
    seeds: Iterable[int] = DEFAULT_CLIP_SEEDS,
    n_frames: int = DEFAULT_FRAMES,
    config: CaRConfig | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
    modes: Iterable[str] = tuple(MODES),
    resamples: int = BOOTSTRAP,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Per-frame mIoU (in %), seconds per frame, steps and restarts of each mode.

    ``config`` defaults to the ``mini`` preset. Returns a JSON-able dict: per mode
    ``<mode>_miou`` and ``<mode>_miou_ci`` (labelled frames), ``<mode>_held_miou`` (+ ``_ci``,
    every frame, maps held), ``<mode>_gain`` (+ ``_ci``, held mIoU minus scratch, paired),
    ``<mode>_seconds_per_frame``, ``<mode>_mean_steps`` and ``<mode>_mean_queries`` (per
    labelled frame), ``<mode>_restarted`` (fraction of labelled frames started from the full
    list) and ``<mode>_starts`` (counts per start reason), ``<mode>_cuts_found`` and
    ``<mode>_false_cuts``; also ``clips``, ``frames``, ``cuts``, ``seeds`` and ``seconds``.
    """
    from cliprnn.car import CaR
    from cliprnn.video import segment_video

    seeds = list(seeds)
    names = [m for m in MODES if m in set(modes)]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown modes {unknown}; choose from {list(MODES)}")
    car = CaR(config if config is not None else CaRConfig.preset("mini")).load()
    lookup = np.arange(len(CLASSES) + 1, dtype=np.int64)  # the full list is CLASSES, in order
    labels = ("background", *CLASSES)
    labelled = {m: SplitScore(len(seeds), labels) for m in names}  # one item per clip
    held = {m: SplitScore(len(seeds), labels) for m in names}
    stats: dict[str, dict[str, Any]] = {
        m: {"seconds": 0.0, "steps": 0, "queries": 0, "frames": 0, "starts": {}} for m in names
    }
    cuts = {m: [0, 0] for m in names}  # found, false
    n_cuts = frames_total = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cliprnn-video-bench-") as tmp:
        for k, seed in enumerate(seeds):
            clip = benchmark_clip(seed, n_frames, size)
            path = clip.write(Path(tmp) / f"{seed}.mp4")
            if k == 0:  # text embeddings and first-call costs outside the timings
                car.segment(clip.frames[0], list(CLASSES))
            n_cuts += clip.cut_at is not None
            frames_total += len(clip)
            for mode in names:
                began = time.perf_counter()
                results = list(segment_video(car, path, list(CLASSES), **MODES[mode]))
                stats[mode]["seconds"] += time.perf_counter() - began
                step = MODES[mode]["frame_step"]
                maps = {}
                for r in results:
                    if r.result.queries != list(CLASSES):
                        raise RuntimeError(f"query list changed: {r.result.queries}")
                    maps[r.index] = lookup[r.result.label_map]
                    labelled[mode].add_labels(k, maps[r.index], clip.label_maps[r.index])
                    s = stats[mode]
                    s["steps"] += r.steps
                    s["queries"] += len(r.queried)
                    s["frames"] += 1
                    s["starts"][r.start] = s["starts"].get(r.start, 0) + 1
                    if r.start == "scene_cut":
                        cuts[mode][0 if r.index == first_after_cut(clip, step) else 1] += 1
                for t in range(len(clip)):
                    held[mode].add_labels(k, maps[t - t % step], clip.label_maps[t])
            if progress is not None:
                progress(k + 1, len(seeds))
    report: dict[str, Any] = {}
    for mode in names:
        s = stats[mode]
        for key, score in (("miou", labelled[mode]), ("held_miou", held[mode])):
            report[f"{mode}_{key}"] = score.miou()
            report[f"{mode}_{key}_ci"] = score.interval(resamples)
        if "scratch" in names:
            report[f"{mode}_gain"] = report[f"{mode}_held_miou"] - report["scratch_held_miou"]
            report[f"{mode}_gain_ci"] = list(
                paired_gain_interval(
                    (held[mode].matrices, held[mode].missed),
                    (held["scratch"].matrices, held["scratch"].missed),
                    resamples,
                )
            )
        report[f"{mode}_seconds_per_frame"] = s["seconds"] / max(frames_total, 1)
        report[f"{mode}_mean_steps"] = s["steps"] / max(s["frames"], 1)
        report[f"{mode}_mean_queries"] = s["queries"] / max(s["frames"], 1)
        report[f"{mode}_labelled_frames"] = s["frames"]
        report[f"{mode}_restarted"] = 1 - s["starts"].get("carried", 0) / max(s["frames"], 1)
        report[f"{mode}_starts"] = dict(sorted(s["starts"].items()))
        report[f"{mode}_cuts_found"], report[f"{mode}_false_cuts"] = cuts[mode]
    report["clips"] = len(seeds)
    report["frames"] = frames_total
    report["frames_per_clip"] = n_frames
    report["cuts"] = n_cuts
    report["seeds"] = describe_seeds(seeds)
    report["refresh_every"] = car.config.refresh_every
    report["scene_cut_threshold"] = car.config.scene_cut_threshold
    report["seconds"] = time.perf_counter() - start
    return report


def format_table(report: dict[str, Any]) -> str:
    """The video benchmark as a small text table."""
    labels = {
        "scratch": "every frame from scratch",
        "carry": "query carrying",
        "step3": "frame_step=3",
        "carry_step3": "frame_step=3 + carrying",
    }
    head = (
        f"{'mode':<26} {'mIoU labelled':>20} {'mIoU all (held)':>20} {'vs scratch':>18} "
        f"{'s/frame':>8} {'steps':>6} {'queries':>8} {'restarted':>9}"
    )
    lines = [head]
    for mode, label in labels.items():
        if f"{mode}_miou" not in report:
            continue

        def cell(key: str, signed: bool = False) -> str:
            lo, hi = report[f"{key}_ci"]
            fmt = "+.1f" if signed else ".1f"
            return f"{report[key]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"

        has_gain = mode != "scratch" and f"{mode}_gain" in report
        gain = cell(f"{mode}_gain", signed=True) if has_gain else "-"
        lines.append(
            f"{label:<26} {cell(f'{mode}_miou'):>20} {cell(f'{mode}_held_miou'):>20} "
            f"{gain:>18} {report[f'{mode}_seconds_per_frame']:8.3f} "
            f"{report[f'{mode}_mean_steps']:6.2f} {report[f'{mode}_mean_queries']:8.1f} "
            f"{100 * report[f'{mode}_restarted']:8.0f}%"
        )
    for mode in ("carry", "carry_step3"):
        if f"{mode}_starts" in report:
            lines.append(
                f"{labels[mode]}: starts {report[f'{mode}_starts']}, scene cuts found "
                f"{report[f'{mode}_cuts_found']} of {report['cuts']}, false "
                f"{report[f'{mode}_false_cuts']}"
            )
    if "carry_mean_steps" in report and "scratch_mean_steps" in report:
        saved = 1 - report["carry_seconds_per_frame"] / report["scratch_seconds_per_frame"]
        lines.append(
            f"carrying vs scratch: {100 * saved:.0f} % less time per frame, "
            f"{report['carry_mean_steps'] - report['scratch_mean_steps']:+.2f} steps per frame, "
            f"{report['carry_mean_queries']:.1f} instead of {report['scratch_mean_queries']:.1f} "
            "queries at the first step"
        )
    lines.append(
        f"{report['clips']} clips x {report['frames_per_clip']} frames = {report['frames']} "
        f"frames, {report['cuts']} with a scene cut (seeds {report['seeds']}), refresh_every "
        f"{report['refresh_every']}, scene_cut_threshold {report['scene_cut_threshold']}, "
        f"{report['seconds']:.0f} s"
    )
    return "\n".join(lines)


def tune_scene_cut(
    seeds: Iterable[int] = TRAINING_CLIP_SEEDS,
    n_frames: int = DEFAULT_FRAMES,
    config: CaRConfig | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> dict[str, Any]:
    """Cosines of consecutive decoded frames' embeddings within shots and across cuts.

    Every clip is cut mid-way. ``threshold`` is the midpoint between the 99th percentile
    of the across-cut cosines and the 1st percentile of the within-shot ones; the report also
    gives both distributions' percentiles. Meant for training seeds only.
    """
    from cliprnn.car import CaR
    from cliprnn.video import frame_embedding, read_frames

    car = CaR(config if config is not None else CaRConfig.preset("mini")).load()
    within: list[float] = []
    across: list[float] = []
    seeds = list(seeds)
    with tempfile.TemporaryDirectory(prefix="cliprnn-cut-tune-") as tmp:
        for seed in seeds:
            clip = generate_clip(seed, size, n_frames, cut_at=n_frames // 2)
            path = clip.write(Path(tmp) / f"{seed}.mp4")
            embeddings = [frame_embedding(car, f) for f in read_frames(path)]
            for t in range(1, len(embeddings)):
                cosine = float(embeddings[t] @ embeddings[t - 1])
                (across if t == clip.cut_at else within).append(cosine)
    pct = (0, 1, 5, 50, 95, 99, 100)
    w, a = np.percentile(within, pct), np.percentile(across, pct)
    return {
        "threshold": round(float((a[pct.index(99)] + w[pct.index(1)]) / 2), 3),
        "within_percentiles": dict(zip(pct, np.round(w, 3).tolist(), strict=True)),
        "across_percentiles": dict(zip(pct, np.round(a, 3).tolist(), strict=True)),
        "within_below": {
            t: float(np.mean(np.array(within) < t)) for t in (0.5, 0.6, 0.7, 0.8, 0.9)
        },
        "across_below": {
            t: float(np.mean(np.array(across) < t)) for t in (0.5, 0.6, 0.7, 0.8, 0.9)
        },
        "clips": len(seeds),
        "seeds": describe_seeds(seeds),
    }
