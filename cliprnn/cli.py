"""The library's commands of `python -m cliprnn`: segment, convert, presets.

The development commands (benchmarks, calibration fits) are added by ``cliprnn.dev.cli``;
``cliprnn.__main__`` puts the two together.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cliprnn.config import DEFAULT_PRESET, CaRConfig


def _config_from_args(args: argparse.Namespace) -> CaRConfig:
    overrides = {}
    for name in ("proposal_model", "classifier_model", "device"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    return CaRConfig.resolve(args.preset, **overrides)


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
    from cliprnn.config import PRESETS

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


def build_parser(
    extra: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] | None = None,
) -> argparse.ArgumentParser:
    """The argument parser of `python -m cliprnn`; ``extra`` adds more subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m cliprnn",
        description="CLIP as RNN (CaR) open-vocabulary segmentation with frozen CLIP models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment one image for some text queries")
    seg.add_argument("image", type=Path)
    seg.add_argument("queries", nargs="+")
    seg.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"voc, coco_object, context, fast, mini, ... (default: {DEFAULT_PRESET}, the paper's "
        "configuration with OpenAI's CLIPs from the hub; mini: the bundled CLIPs, offline)",
    )
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
    if extra is not None:
        extra(sub)
    return parser


def main(
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] | None = None,
) -> int:
    """Parse ``argv`` and run its command; a CaRError prints one line and returns 2."""
    args = build_parser(extra).parse_args(argv)
    from cliprnn.errors import CaRError

    try:
        return int(args.func(args) or 0)
    except CaRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
