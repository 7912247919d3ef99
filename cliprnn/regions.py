"""Small regions of a label map merged into their surroundings, so the instances a user
corrects are objects, not specks."""

from __future__ import annotations

import cv2
import numpy as np


def merge_small_regions(label_map: np.ndarray, min_pixels: int) -> np.ndarray:
    """A copy of ``label_map`` in which every 8-connected region of a class (value > 0) with
    fewer than ``min_pixels`` pixels takes the value most of its bordering pixels have (the
    background, or the class around it). Background regions are left as they are."""
    out = np.array(label_map, copy=True)
    if min_pixels <= 1:
        return out
    h, w = out.shape
    for value in np.unique(label_map):
        if value == 0:
            continue
        # on ``out``: specks merged into this class so far count as part of it
        mask = (out == value).astype(np.uint8)
        count, regions, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for r in range(1, count):
            x, y, bw, bh, area = (int(v) for v in stats[r])
            if area >= min_pixels:
                continue
            x0, y0, x1, y1 = max(x - 1, 0), max(y - 1, 0), min(x + bw + 1, w), min(y + bh + 1, h)
            region = regions[y0:y1, x0:x1] == r
            ring = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            ring &= ~region
            around = out[y0:y1, x0:x1][ring]
            around = around[around != value]
            fill = int(np.bincount(around).argmax()) if around.size else 0
            out[y0:y1, x0:x1][region] = fill
    return out
