"""Grid search of the mini preset's CaR settings on training seeds (never the benchmark's).

Run: ``python -m cliprnn.mini_clip.tune MODEL_DIR --seeds 999000:999016 --out tune.jsonl``.
Each line of the output is one setting with its full-CaR mIoU and drop/keep rates.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from cliprnn.bench.accuracy import run_accuracy_benchmark
from cliprnn.config import CaRConfig
from cliprnn.mini_clip.train import TRAIN_SEED_LIMIT
from cliprnn.scenes import STUFF

GRID: dict[str, list] = {
    "cam_layer": [-1, -2, -3],
    "confidence_threshold": [0.3, 0.6],
    "mask_threshold": [0.4],
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--seeds", default="999000:999016")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--grid", type=json.loads, default=GRID, help="JSON {field: [values]}")
    args = ap.parse_args(argv)
    a, b = (int(x) for x in args.seeds.split(":"))
    if b > TRAIN_SEED_LIMIT:
        raise SystemExit("tune on training seeds only (below 1,000,000)")
    base = CaRConfig.preset(
        "mini",
        proposal_model=str(args.model_dir),
        classifier_model=str(args.model_dir),
        background_words=STUFF,
        device="cpu",
    )
    keys = list(args.grid)
    for values in itertools.product(*(args.grid[k] for k in keys)):
        setting = dict(zip(keys, values, strict=True))
        report = run_accuracy_benchmark(range(a, b), base.replace(**setting), variants=("car",))
        row = {
            **setting,
            **{
                k: report[k]
                for k in ("car_miou", "absent_dropped", "present_kept", "car_mean_steps", "seconds")
            },
        }
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
