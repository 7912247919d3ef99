"""Coordinate-ascent search over candidate configurations, scored image by image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cliprnn.calibration.passes import PassCache, caching_engine
from cliprnn.calibration.space import KNOBS, SearchSpace
from cliprnn.calibration.targets import TargetScorer
from cliprnn.scoring import miou_of, paired_gain_interval

if TYPE_CHECKING:
    from cliprnn.car import CaR

Candidate = tuple[Any, ...]  # the KNOBS' values

#: Bootstrap resamples behind each move's standard error.
MOVE_RESAMPLES = 200


def overrides_of(candidate: Candidate) -> dict[str, Any]:
    return dict(zip(KNOBS, candidate, strict=True))


class Evaluator:
    """Per-image confusion matrices of candidates, computed image by image through one cache."""

    def __init__(
        self,
        car: CaR,
        images: list[np.ndarray],
        gts: list[np.ndarray],
        queries: list[str],
        scorer: TargetScorer,
        cache: PassCache,
        progress: Callable[[int], None],
    ) -> None:
        self.car, self.images, self.gts, self.queries = car, images, gts, queries
        self.scorer, self.cache, self.progress = scorer, cache, progress
        self.results: dict[tuple[Candidate, int], tuple[np.ndarray, np.ndarray]] = {}
        self._engines: dict[Candidate, CaR] = {}

    def engine(self, candidate: Candidate) -> CaR:
        if candidate not in self._engines:
            self._engines[candidate] = caching_engine(self.car, self.cache, overrides_of(candidate))
        return self._engines[candidate]

    def ensure(self, candidates: Sequence[Candidate], images: Sequence[int]) -> None:
        """Segment ``images`` with each of ``candidates`` not yet done, image-major (so one
        image's passes are reused while they are in the cache)."""
        for i in images:
            for c in candidates:
                if (c, i) in self.results:
                    continue
                result = self.engine(c).segment(self.images[i], self.queries)
                pred = self.scorer.query_lookup(result.queries)[result.label_map]
                self.results[(c, i)] = self.scorer.confusion(pred, self.gts[i])
                self.progress(1)

    def miou(self, candidate: Candidate, images: Sequence[int]) -> float:
        self.ensure([candidate], images)
        matrix = sum(self.results[(candidate, i)][0] for i in images)
        missed = sum(self.results[(candidate, i)][1] for i in images)
        return 100.0 * miou_of(np.asarray(matrix), np.asarray(missed))

    def gain_se(self, a: Candidate, b: Candidate, images: Sequence[int]) -> float:
        """Standard error (points) of mIoU(a) - mIoU(b) on ``images``: a paired bootstrap
        over the images (its 95 % interval spans about ±1.96 standard errors)."""
        self.ensure([a, b], images)
        low, high = paired_gain_interval(
            stacked_counts(self, lambda i: a, images),
            stacked_counts(self, lambda i: b, images),
            MOVE_RESAMPLES,
            seed=0,
        )
        return (high - low) / (2 * 1.96)


def coordinate_ascent(
    evaluator: Evaluator,
    images: Sequence[int],
    start: Candidate,
    space: SearchSpace,
    budget: int,
    min_gain_se: float = 0.0,
) -> tuple[Candidate, dict[Candidate, float]]:
    """Coordinate ascent from ``start``: each knob's values with the others fixed, the best
    taken if it beats the current candidate by more than ``min_gain_se`` standard errors of
    their paired difference (ties keep the current value, then the first in the space's
    order), until a round changes nothing or ``budget`` distinct candidates were scored."""
    scored: dict[Candidate, float] = {}

    def score(batch: list[Candidate]) -> None:
        todo = [c for c in batch if c not in scored]
        evaluator.ensure(todo, images)
        for c in todo:
            scored[c] = evaluator.miou(c, images)

    current = start
    score([current])
    for _round in range(len(KNOBS) * 4):
        changed = False
        for k, knob in enumerate(KNOBS):
            batch = [(*current[:k], v, *current[k + 1 :]) for v in space.values(knob)]
            fresh = [c for c in batch if c not in scored][: max(0, budget - len(scored))]
            score(fresh)
            best = max((c for c in batch if c in scored), key=lambda c: scored[c])
            gain = scored[best] - scored[current]
            if gain > 1e-9 and (
                min_gain_se <= 0 or gain > min_gain_se * evaluator.gain_se(best, current, images)
            ):
                current, changed = best, True
        if not changed or len(scored) >= budget:
            break
    return current, scored


def fold_indices(n: int, folds: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    k = max(2, min(folds, n))
    return [sorted(int(i) for i in order[f::k]) for f in range(k)]


def stacked_counts(
    evaluator: Evaluator, pick: Callable[[int], Candidate], images: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image confusion matrices and missed counts of ``images``, each image's from the
    candidate ``pick(image)`` (already computed)."""
    matrices = np.stack([evaluator.results[(pick(i), i)][0] for i in images])
    missed = np.stack([evaluator.results[(pick(i), i)][1] for i in images])
    return matrices, missed
