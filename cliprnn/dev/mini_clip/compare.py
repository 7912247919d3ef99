"""Paired comparison of settings of the mini preset (or other models) on the same scenes.

Run: ``python -m cliprnn.dev.mini_clip.compare --seeds 950000:990000:100 '{}'
'{"classifier_model": "runs/cls96i/classifier"}'``. Each argument is a JSON object of
``CaRConfig`` fields over the ``mini`` preset; every setting segments the same scenes (every
class queried), and each line reports its mIoU with a 95 % bootstrap interval, its keep/drop
rates and its gain over the first setting with a paired interval (the same resampled scenes
for both). Seeds must be training seeds unless ``--held-out`` says the benchmark is meant.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cliprnn.config import CaRConfig
from cliprnn.dev.bench.accuracy import paired_gain_interval, score_scenes
from cliprnn.dev.mini_clip.data import TRAIN_SEED_LIMIT


def compare_settings(
    seeds: range, settings: list[dict[str, Any]], resamples: int = 1000
) -> list[dict[str, Any]]:
    """One row per setting: mIoU, interval, keep/drop rates, paired gain over the first."""
    from cliprnn.car import CaR

    base = CaRConfig.preset("mini", device="cpu")
    cars = {str(k): CaR(base.replace(**setting)) for k, setting in enumerate(settings)}
    scores = list(score_scenes(list(seeds), cars).values())
    first = scores[0]
    rows = []
    for setting, score in zip(settings, scores, strict=True):
        summary = score.summary("car", resamples)
        gain = paired_gain_interval(
            (score.matrices, score.missed), (first.matrices, first.missed), resamples
        )
        rows.append(
            {
                "setting": setting,
                "miou": round(score.miou(), 2),
                "miou_ci": [round(x, 1) for x in summary["car_miou_ci"]],
                "present_kept": round(summary["car_present_kept"], 3),
                "absent_dropped": round(summary["car_absent_dropped"], 3),
                "gain": round(score.miou() - first.miou(), 2),
                "gain_ci": [round(x, 1) for x in gain],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("settings", nargs="+", type=json.loads, help="JSON CaRConfig fields")
    ap.add_argument("--seeds", required=True, help="START:END[:STEP]")
    ap.add_argument("--held-out", action="store_true", help="allow benchmark seeds")
    args = ap.parse_args(argv)
    seeds = range(*(int(x) for x in args.seeds.split(":")))
    if max(seeds) >= TRAIN_SEED_LIMIT and not args.held_out:
        raise SystemExit("compare on training seeds (below 1,000,000), or say --held-out")
    for row in compare_settings(seeds, args.settings):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
