"""Command line: `python -m cliprnn <command>`.

Commands: segment, convert, presets, bench-speed, bench-accuracy, bench-memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _parse_seeds(text: str) -> range:
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        return range(*(int(p) for p in parts))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds must look like START:END or START:END:STEP, got {text!r}"
        ) from None


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected K[,K...] with every K >= 1, got {text!r}")
    return ks


def _cmd_calibrate_exemplars(args: argparse.Namespace) -> int:
    from cliprnn.bench.exemplars import fit_calibration
    from cliprnn.config import CaRConfig

    print(json.dumps(fit_calibration(CaRConfig.preset("mini"), k=args.k)))
    return 0


def _config_from_args(args: argparse.Namespace):
    from cliprnn.config import CaRConfig

    overrides = {}
    for name in ("proposal_model", "classifier_model", "device"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    return CaRConfig.preset(args.preset, **overrides)


def _cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from cliprnn.car import CaR

    result = CaR(_config_from_args(args)).segment(args.image, args.queries)
    summary = {
        "queries": result.queries,
        "kept": result.kept,
        "scores": [round(float(s), 4) for s in result.scores],
        "steps": result.steps,
        "warnings": result.warnings,
    }
    if args.out:
        labels = result.label_map
        dtype = np.uint8 if labels.max(initial=0) <= 255 else np.uint16
        Image.fromarray(labels.astype(dtype)).save(args.out)
        summary["label_map"] = str(args.out)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from cliprnn.convert import convert_openai_checkpoint

    print(convert_openai_checkpoint(args.src, args.dst))
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from cliprnn.config import PRESETS, CaRConfig

    for name in sorted(PRESETS):
        try:
            cfg = CaRConfig.preset(name)
        except Exception as exc:  # the bundled model may be missing in a source checkout
            print(f"{name}: unavailable ({exc})")
            continue
        print(
            f"{name}: η={cfg.mask_threshold} θ={cfg.confidence_threshold} "
            f"λ={cfg.clipes_threshold} prompts={'+'.join(cfg.visual_prompts)} "
            f"proposal={cfg.proposal_model} classifier={cfg.classifier_model}"
        )
    return 0


def _cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from cliprnn.bench.accuracy import (
        DEFAULT_SEEDS,
        VARIANTS,
        format_table,
        run_accuracy_benchmark,
    )
    from cliprnn.config import CaRConfig

    if args.video:
        return _bench_video(args)
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"unknown variants {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    config = CaRConfig.preset("mini", dtype=args.dtype)
    if args.exemplars:
        from cliprnn.bench import exemplars

        report = exemplars.run_exemplar_benchmark(
            args.exemplars, args.seeds or DEFAULT_SEEDS, config, resamples=args.resamples
        )
        print(json.dumps(report) if args.json else exemplars.format_table(report))
        return 0
    report = run_accuracy_benchmark(
        args.seeds or DEFAULT_SEEDS, config, variants=variants, resamples=args.resamples
    )
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def _bench_video(args: argparse.Namespace) -> int:
    """bench-accuracy --video: per-frame mIoU and seconds per frame on generated clips."""
    from cliprnn.bench import video
    from cliprnn.config import CaRConfig

    modes = args.variants.split(",") if args.variants else list(video.MODES)
    unknown = [m for m in modes if m not in video.MODES]
    if unknown:
        print(f"unknown modes {unknown}; choose from {list(video.MODES)}", file=sys.stderr)
        return 2
    seeds = args.seeds or video.clip_seeds(args.clips)
    config = CaRConfig.preset("mini", dtype=args.dtype)
    report = video.run_video_benchmark(
        seeds, args.frames, config, modes=modes, resamples=args.resamples
    )
    print(json.dumps(report) if args.json else video.format_table(report))
    return 0


def _cmd_bench_speed(args: argparse.Namespace) -> int:
    from cliprnn.bench.speed import format_table, run_speed_benchmark

    if args.crf_workers < 0:
        print("--crf-workers must be >= 0", file=sys.stderr)
        return 2
    if args.crf_workers and not args.dataset:
        print("note: --crf-workers is used by the --dataset run only", file=sys.stderr)

    report = run_speed_benchmark(
        queries=args.queries, steps=args.steps, dataset=args.dataset, device=args.device,
        baseline=not args.no_baseline, bf16=args.bf16, crf_workers=args.crf_workers,
        warm=not args.no_warm, dtype=args.dtype,
    )  # fmt: skip
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def _cmd_bench_memory(args: argparse.Namespace) -> int:
    from cliprnn.bench.memory import format_table, run_memory_benchmark

    rows = run_memory_benchmark(config=args.config)
    print(json.dumps(rows) if args.json else format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m cliprnn`."""
    parser = argparse.ArgumentParser(prog="python -m cliprnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment one image for some text queries")
    seg.add_argument("image", type=Path)
    seg.add_argument("queries", nargs="+")
    seg.add_argument("--preset", default="mini", help="voc, coco_object, context, fast, mini, ...")
    seg.add_argument("--proposal-model", dest="proposal_model")
    seg.add_argument("--classifier-model", dest="classifier_model")
    seg.add_argument("--device")
    seg.add_argument("--out", type=Path, help="write the label map as a PNG here")
    seg.set_defaults(func=_cmd_segment)

    conv = sub.add_parser("convert", help="OpenAI-layout CLIP checkpoint -> Hugging Face folder")
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path)
    conv.set_defaults(func=_cmd_convert)

    pre = sub.add_parser("presets", help="list the named configurations")
    pre.set_defaults(func=_cmd_presets)

    acc = sub.add_parser("bench-accuracy", help="mIoU on generated scenes with the bundled model")
    acc.add_argument(
        "--seeds",
        type=_parse_seeds,
        help="START:END[:STEP] (default: 240 held-out seeds spread over 10,000,000-34,000,000)",
    )
    acc.add_argument(
        "--variants",
        help="comma-separated subset of the rows (car,single_step,...); all by default",
    )
    acc.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (95 %% CI)")
    acc.add_argument("--json", action="store_true")
    acc.add_argument("--dtype", default="float32", help="float32 or bfloat16 (autocast)")
    acc.add_argument(
        "--exemplars",
        type=_parse_ks,
        metavar="K[,K...]",
        help="query every class by K exemplar crops from training scenes instead (e.g. 1,3,10), "
        "beside text, a mixed run and an unseen class",
    )
    acc.add_argument(
        "--video",
        action="store_true",
        help="per-frame mIoU and seconds per frame on generated clips written to mp4: every "
        "frame from scratch, query carrying, frame_step=3 (--variants picks the modes, "
        "--seeds the clip seeds)",
    )
    acc.add_argument("--clips", type=int, default=24, help="with --video: held-out clips")
    acc.add_argument("--frames", type=int, default=16, help="with --video: frames per clip")
    acc.set_defaults(func=_cmd_bench_accuracy)

    cal = sub.add_parser(
        "calibrate-exemplars",
        help="fit the mini preset's exemplar calibration (a, b) per CLIP on training scenes",
    )
    cal.add_argument("--k", type=int, default=3, help="exemplars per class")
    cal.set_defaults(func=_cmd_calibrate_exemplars)

    spd = sub.add_parser("bench-speed", help="seconds per image at the paper's model sizes")
    spd.add_argument("--queries", type=int, default=20)
    spd.add_argument("--steps", type=int, default=2)
    spd.add_argument("--dataset", type=int, default=0, help="also time N images end to end")
    spd.add_argument("--device", default="cpu")
    spd.add_argument(
        "--dtype", help="float32, float16 or bfloat16 (default: float16 on CUDA, float32 on CPU)"
    )
    spd.add_argument("--no-baseline", action="store_true", help="skip the unoptimised run")
    spd.add_argument(
        "--bf16", action="store_true", help="also time bfloat16 autocast (not output-identical)"
    )
    spd.add_argument(
        "--crf-workers",
        type=int,
        default=0,
        help="with --dataset: also time the N images with each CRF overlapped with the next "
        "image's model passes on K workers, and check the outputs are identical",
    )
    spd.add_argument(
        "--no-warm",
        action="store_true",
        help="skip the second (warm on-disk text cache) run of the first image",
    )
    spd.add_argument("--json", action="store_true")
    spd.set_defaults(func=_cmd_bench_speed)

    mem = sub.add_parser(
        "bench-memory",
        help="peak RSS of a FiftyOne run on images at the pixel budget, alone and in a batch",
    )
    mem.add_argument("--config", default="mini", help="preset (its max_image_pixels)")
    mem.add_argument("--json", action="store_true")
    mem.set_defaults(func=_cmd_bench_memory)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m cliprnn` and the `cliprnn` script."""
    args = build_parser().parse_args(argv)
    from cliprnn.errors import CaRError

    try:
        return int(args.func(args) or 0)
    except CaRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
