"""The development commands of `python -m cliprnn`: benchmarks and calibration fits.

They run on the generated world and the miniature CLIPs (``cliprnn.dev``), so they live apart
from the library's own commands (``cliprnn.cli``).
"""

from __future__ import annotations

import argparse
import json
import sys


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
    from cliprnn.config import CaRConfig
    from cliprnn.dev.bench.exemplars import fit_calibration

    print(json.dumps(fit_calibration(CaRConfig.preset("mini"), k=args.k)))
    return 0


def _cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from cliprnn.config import CaRConfig
    from cliprnn.dev.bench.accuracy import (
        DEFAULT_SEEDS,
        VARIANTS,
        format_table,
        run_accuracy_benchmark,
    )

    if args.video:
        return _bench_video(args)
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"unknown variants {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    config = CaRConfig.preset("mini", dtype=args.dtype)
    if args.exemplars:
        from cliprnn.dev.bench import exemplars

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


def _cmd_bench_calibration(args: argparse.Namespace) -> int:
    from cliprnn.dev.bench.accuracy import DEFAULT_SEEDS
    from cliprnn.dev.bench.calibration import (
        DEFAULT_LABELLED,
        format_table,
        labelled_seeds,
        run_calibration_benchmark,
    )
    from cliprnn.dev.scenes import STYLES

    styles = args.styles.split(",") if args.styles else list(STYLES)
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        print(f"unknown styles {unknown}; choose from {list(STYLES)}", file=sys.stderr)
        return 2
    labelled = args.labelled or list(DEFAULT_LABELLED)
    if min(labelled) < 2:
        print("--labelled: calibration needs at least 2 samples", file=sys.stderr)
        return 2
    if args.budget < 1:
        print("--budget must be >= 1", file=sys.stderr)
        return 2
    try:
        labelled_seeds(args.labelled_start, max(labelled))
    except ValueError as e:
        print(f"--labelled-start: {e}", file=sys.stderr)
        return 2
    if not args.min_gain_se >= 0:
        print("--min-gain-se must be >= 0", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = run_calibration_benchmark(
        labelled, args.seeds or DEFAULT_SEEDS, styles, budget=args.budget,
        resamples=args.resamples, log=None if args.quiet else log,
        labelled_start=args.labelled_start, min_gain_se=args.min_gain_se,
    )  # fmt: skip
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def _bench_video(args: argparse.Namespace) -> int:
    """bench-accuracy --video: per-frame mIoU and seconds per frame on generated clips."""
    from cliprnn.config import CaRConfig
    from cliprnn.dev.bench import video

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
    from cliprnn.dev.bench.speed import format_table, run_speed_benchmark

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
    from cliprnn.dev.bench.memory import format_table, run_memory_benchmark

    rows = run_memory_benchmark(config=args.config)
    print(json.dumps(rows) if args.json else format_table(rows))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the bench-* and calibrate-exemplars subcommands to `python -m cliprnn`'s parser."""
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

    bcal = sub.add_parser(
        "bench-calibration",
        help="held-out mIoU of the mini preset against CaR calibrated on N labelled scenes, "
        "per scene style",
    )
    bcal.add_argument(
        "--labelled",
        type=_parse_ks,
        metavar="N[,N...]",
        help="labelled training scenes to calibrate on (default: 10,30)",
    )
    bcal.add_argument(
        "--seeds",
        type=_parse_seeds,
        help="held-out seeds START:END[:STEP] (default: the 240 of bench-accuracy)",
    )
    bcal.add_argument(
        "--styles", help="comma-separated scene styles (default: all of cliprnn.dev.scenes.STYLES)"
    )
    bcal.add_argument(
        "--budget", type=int, default=150, help="at most this many candidates per search"
    )
    bcal.add_argument(
        "--labelled-start", type=int, default=500_000,
        help="first labelled training seed (default 500000; N labelled = the next N seeds)",
    )  # fmt: skip
    bcal.add_argument(
        "--min-gain-se", type=float, default=1.0,
        help="a search move must gain more than this many standard errors (0: any gain)",
    )  # fmt: skip
    bcal.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (95 %% CI)")
    bcal.add_argument("--json", action="store_true")
    bcal.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    bcal.set_defaults(func=_cmd_bench_calibration)

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
