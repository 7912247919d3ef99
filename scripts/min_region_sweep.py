"""Choose CaRConfig.min_region_pixels on training scenes: mIoU of the written label map and
instances per scene, for several minimum region sizes (one CaR run per scene).

    python scripts/min_region_sweep.py --seeds 500000:500040
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from cliprnn import CaR, CaRConfig
from cliprnn.dev.metrics import ConfusionMatrix
from cliprnn.dev.scenes import CLASSES, generate_scene
from cliprnn.regions import merge_small_regions

SIZES = (0, 4, 8, 16, 32, 64, 128)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="500000:500040")
    parser.add_argument("--preset", default="mini")
    args = parser.parse_args()
    start, stop = (int(v) for v in args.seeds.split(":"))
    if stop > 1_000_000:
        raise SystemExit("choose on training seeds (< 1,000,000) only")
    car = CaR(CaRConfig.preset(args.preset))
    cms = {s: ConfusionMatrix(len(CLASSES) + 1) for s in SIZES}
    regions = {s: 0 for s in SIZES}
    specks = {s: 0 for s in SIZES}
    import cv2

    for seed in range(start, stop):
        scene = generate_scene(seed)
        result = car.segment(scene.image, list(CLASSES))
        lut = np.zeros(len(result.queries) + 1, np.int64)
        for i, q in enumerate(result.queries):
            lut[i + 1] = CLASSES.index(q) + 1
        pred = lut[result.label_map]
        for s in SIZES:
            cleaned = merge_small_regions(pred, s)
            cms[s].update(cleaned, scene.label_map)
            for v in np.unique(cleaned):
                if v:
                    n, _, stats, _ = cv2.connectedComponentsWithStats(
                        (cleaned == v).astype(np.uint8), connectivity=8
                    )
                    regions[s] += n - 1
                    specks[s] += int((stats[1:, 4] <= 4).sum())
    scenes = stop - start
    rows = [
        dict(min_region_pixels=s, miou=round(100 * cms[s].miou(), 2),
             instances_per_scene=round(regions[s] / scenes, 1),
             specks_le4px_per_scene=round(specks[s] / scenes, 1))
        for s in SIZES
    ]  # fmt: skip
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
