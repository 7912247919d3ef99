"""Grid search of the mini preset's CaR settings on training seeds (never the benchmark's).

Run: ``python -m cliprnn.dev.mini_clip.tune --seeds 999000:999016 --out tune.jsonl`` (the shipped
proposal and classifier models; ``--proposal``/``--classifier`` for others, or one MODEL_DIR for
both). Each line of the output is one setting with its mIoU (95 % bootstrap interval) and
drop/keep rates.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from cliprnn.assets import mini_model_paths
from cliprnn.config import CaRConfig
from cliprnn.dev.bench.accuracy import run_accuracy_benchmark
from cliprnn.dev.mini_clip.data import TRAIN_SEED_LIMIT
from cliprnn.dev.scenes import STUFF

GRID: dict[str, list] = {
    "cam_layer": [-1, -2, -3],
    "confidence_threshold": [0.3, 0.6],
    "mask_threshold": [0.4],
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path, nargs="?", help="one folder for both roles")
    ap.add_argument("--proposal", type=Path, help="proposal model (default: the shipped one)")
    ap.add_argument("--classifier", type=Path, help="classifier model (default: the shipped one)")
    ap.add_argument("--seeds", default="999000:999016", help="START:END[:STEP], training seeds")
    ap.add_argument(
        "--variants", default="car", help="comma-separated benchmark rows (car,single_step,...)"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--grid", type=json.loads, default=GRID, help="JSON {field: [values]}")
    args = ap.parse_args(argv)
    seeds = range(*(int(x) for x in args.seeds.split(":")))
    if max(seeds) >= TRAIN_SEED_LIMIT:
        raise SystemExit("tune on training seeds only (below 1,000,000)")
    proposal, classifier = mini_model_paths()
    proposal = args.proposal or args.model_dir or proposal
    classifier = args.classifier or args.model_dir or classifier
    base = CaRConfig.preset(
        "mini",
        proposal_model=str(proposal),
        classifier_model=str(classifier),
        background_words=STUFF,
        device="cpu",
    )
    variants = tuple(args.variants.split(","))
    fields = ("absent_dropped", "present_kept", "seconds")
    keys = list(args.grid)
    for values in itertools.product(*(args.grid[k] for k in keys)):
        setting = dict(zip(keys, values, strict=True))
        report = run_accuracy_benchmark(seeds, base.replace(**setting), variants=variants)
        row = {**setting, **{k: report[k] for k in fields}}
        for v in variants:
            row[f"{v}_miou"] = round(report[f"{v}_miou"], 2)
            row[f"{v}_miou_ci"] = [round(x, 1) for x in report[f"{v}_miou_ci"]]
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
