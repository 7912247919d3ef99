"""What a segmentation field means to a user, per sample: class name -> pixels (read through
the field's mask targets, as the App's tooltip does). Shared by the integrity tests."""

from __future__ import annotations

import numpy as np


def class_pixels(mask: np.ndarray, targets: dict[int, str]) -> dict[str, int]:
    """Pixels per class name of a semantic ``mask`` (unknown values as ``?<value>``)."""
    values, counts = np.unique(mask, return_counts=True)
    return {targets.get(int(v), f"?{v}"): int(c) for v, c in zip(values, counts, strict=True) if v}


def field_targets(ds, field: str) -> dict[int, str]:
    """The field's mask targets with integer keys."""
    return {int(v): n for v, n in ds.mask_targets.get(field, {}).items()}
