"""CaRResult: what CaR.segment returns for one image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class StepTrace:
    """Intermediates of one recurrent step (filled when ``segment(..., trace=True)``)."""

    queries: list[str]  # live queries at the start of the step
    proposals: np.ndarray  # float32 [N, H, W] refined soft masks in [0, 1]
    scores: np.ndarray  # float32 [N, N] classifier score matrix (rows: prompted images)
    kept: list[str]  # queries that survived the step
    extras: dict[str, Any] = field(default_factory=dict)  # stage intermediates (gradcam_raw, ...)


@dataclass
class CaRResult:
    """Segmentation of one image for a list of queries.

    ``label_map`` is H×W at the input's resolution: 0 = background, i + 1 = ``queries[i]``.
    ``masks[i]`` is the binary mask of ``queries[i]`` (all zero when dropped); ``scores[i]`` its
    final classifier score (0 when dropped).
    """

    label_map: np.ndarray  # int32 [H, W]
    queries: list[str]  # normalised queries, in order
    kept: list[str]  # queries that survived the recurrence and own a mask
    scores: np.ndarray  # float32 [Q]
    masks: np.ndarray  # bool [Q, H, W]
    steps: int  # recurrent steps run
    soft_masks: np.ndarray | None = None  # float32 [Q, H, W] final proposals (0 when dropped)
    trace: list[StepTrace] | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    warnings: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> list[str]:
        """Queries removed by the recurrence (or that lost every pixel to the CRF)."""
        kept = set(self.kept)
        return [q for q in self.queries if q not in kept]

    @property
    def mask_targets(self) -> dict[int, str]:
        """Label value -> query, for every query (FiftyOne's ``mask_targets`` layout)."""
        return {i + 1: q for i, q in enumerate(self.queries)}
