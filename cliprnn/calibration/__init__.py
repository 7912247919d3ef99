"""Calibrate CaR to a user's labelled images: search θ, η, visual prompts, background words and
the CRF for the best mIoU against their ground truth, with cross-validation against overfitting.

The CLIP passes an image needs depend on the live query set, the background words and the
proposals, not on θ: many candidates share them, so :func:`calibrate` computes each pass once
(keyed by the content it depends on) and reuses it across candidates, folds and searches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cliprnn.calibration.passes import PASS_KINDS, PassCache
from cliprnn.calibration.result import CalibrationResult, jsonable
from cliprnn.calibration.search import (
    Evaluator,
    coordinate_ascent,
    fold_indices,
    overrides_of,
    stacked_counts,
)
from cliprnn.calibration.space import KNOBS, SearchSpace, knob_values
from cliprnn.calibration.targets import TargetScorer, norm_name
from cliprnn.errors import CalibrationError, CaRError
from cliprnn.scoring import BOOTSTRAP, bootstrap_interval, miou_of, paired_gain_interval

if TYPE_CHECKING:
    from cliprnn.car import CaR, ImageLike

__all__ = [
    "KNOBS",
    "CalibrationError",
    "CalibrationResult",
    "LabelledImage",
    "PassCache",
    "SearchSpace",
    "calibrate",
]


@dataclass(frozen=True)
class LabelledImage:
    """One labelled sample: the image, its ground-truth label map and a name for errors."""

    image: ImageLike
    ground_truth: np.ndarray | None  # integer label map [H, W]
    name: str


def _check_inputs(
    samples: Sequence[LabelledImage],
    queries: Sequence[str],
    targets: Mapping[int, str],
    budget: int,
    folds: int,
    min_gain_se: float,
) -> None:
    if not samples:
        raise CalibrationError("no labelled samples to calibrate on")
    missing = [s.name for s in samples if s.ground_truth is None]
    if missing:
        raise CalibrationError(
            f"{len(missing)} sample(s) have no ground truth: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    if len(samples) < 2:
        raise CalibrationError(
            f"calibration needs at least 2 labelled samples (cross-validation), got {len(samples)}"
        )
    if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
        raise CalibrationError("queries must be a list of text queries")
    if not targets:
        raise CalibrationError("the ground truth has no mask targets (value -> class name)")
    names = {norm_name(n) for v, n in targets.items() if int(v) != 0}
    if not any(norm_name(q) in names for q in queries):
        raise CalibrationError(
            f"no query names a ground-truth class: queries {list(queries)[:8]}, ground-truth "
            f"classes {sorted(str(targets[v]) for v in targets if int(v) != 0)[:8]}"
        )
    if not isinstance(budget, int) or budget < 1:
        raise CalibrationError(f"budget must be an integer >= 1, got {budget!r}")
    if not isinstance(folds, int) or folds < 2:
        raise CalibrationError(f"folds must be an integer >= 2, got {folds!r}")
    if not min_gain_se >= 0:
        raise CalibrationError(f"min_gain_se must be >= 0, got {min_gain_se!r}")


def calibrate(
    car: CaR,
    samples: Sequence[LabelledImage],
    queries: Sequence[str],
    targets: Mapping[int, str],
    *,
    space: SearchSpace | None = None,
    budget: int = 150,
    folds: int = 5,
    seed: int = 0,
    ignore_values: Sequence[int] = (255,),
    cache: bool = True,
    resamples: int = BOOTSTRAP,
    min_gain_se: float = 1.0,
    progress: Callable[[float, str], None] | None = None,
) -> CalibrationResult:
    """Search the configuration that segments ``samples`` best for ``queries``.

    ``car`` gives the models (shared, never reloaded) and the base configuration: every field
    outside :data:`KNOBS` keeps its value. ``targets`` names the ground truth's label values
    (0 is background); a query counts as the class of the same name (case and spacing
    ignored); ground-truth pixels in ``ignore_values`` are not scored. The score is the mIoU
    (%) of one confusion matrix summed over the samples, background and every ground-truth
    class with pixels included, as ``bench-accuracy`` scores.

    The search is coordinate ascent over ``space`` (default :meth:`SearchSpace.default`) from
    the base configuration, at most ``budget`` distinct candidates per search; a move is taken
    only if it gains more than ``min_gain_se`` standard errors of the paired difference on the
    search's samples (so the best of many noisy values does not win by chance; 0 takes any
    gain). It is guarded
    by ``folds``-fold cross-validation (folds drawn with ``seed``): a search on each fold's
    other samples chooses the configuration its held-out samples are scored with, giving
    ``score`` against ``base_score`` on the same samples; the returned configuration comes
    from one more search on every sample, and is the base configuration (``kept_base``) unless
    the cross-validated gain's paired 95 % interval lies above 0 (a gain within the noise of a
    few samples does not replace the base). Deterministic for a seed.
    ``cache=False`` recomputes every pass (the same result, slower). Raises CalibrationError
    naming the sample or parameter at fault.
    """
    from cliprnn.imageio import load_image

    started = time.perf_counter()
    queries = list(queries)
    _check_inputs(samples, queries, targets, budget, folds, min_gain_se)
    base = car.config
    space = (space or SearchSpace.default(base)).including(base)
    scorer = TargetScorer(targets, ignore_values)
    gts = [scorer.gt_indices(np.asarray(s.ground_truth), s.name) for s in samples]
    images = []
    for s in samples:
        try:
            images.append(load_image(s.image, base.max_image_pixels))
        except CaRError as exc:
            raise type(exc)(f"{s.name}: {exc}") from exc
    n = len(samples)
    fold_sets = fold_indices(n, folds, seed)
    # Progress in phases: one per fold's search, the final search, the curves. A phase's
    # work is estimated as one round over every knob's values on its images.
    phases = len(fold_sets) + 2
    round_size = sum(len(space.values(k)) for k in KNOBS)
    state = {"phase": 0, "done": 0, "expected": 1}

    def report() -> None:
        if progress is not None:
            within = min(0.95, state["done"] / state["expected"])
            progress((state["phase"] + within) / phases, f"step {state['phase'] + 1} of {phases}")

    def begin(phase: int, images: int) -> None:
        state.update(phase=phase, done=0, expected=max(1, round_size * images))
        report()

    def advance(count: int) -> None:
        state["done"] += count
        report()

    passes = PassCache(enabled=cache)
    evaluator = Evaluator(car, images, gts, queries, scorer, passes, advance)
    start = tuple(knob_values(base)[k] for k in KNOBS)
    every = list(range(n))

    chosen_per_fold = []
    for f, held_out in enumerate(fold_sets):
        train = [i for i in every if i not in held_out]
        begin(f, len(train))
        winner, _ = coordinate_ascent(evaluator, train, start, space, budget, min_gain_se)
        evaluator.ensure([winner], held_out)
        chosen_per_fold.append(winner)
    fold_of = {i: f for f, held in enumerate(fold_sets) for i in held}
    begin(len(fold_sets), n)
    best, scored = coordinate_ascent(evaluator, every, start, space, budget, min_gain_se)
    begin(len(fold_sets) + 1, n)

    # Slices through the best candidate (the curves): every value of one knob, others fixed.
    slices: dict[str, list[dict[str, Any]]] = {}
    for k, knob in enumerate(KNOBS):
        batch = [(*best[:k], v, *best[k + 1 :]) for v in space.values(knob)]
        evaluator.ensure(batch, every)
        slices[knob] = [{"value": c[k], "miou": evaluator.miou(c, every)} for c in batch]
        for c in batch:
            scored.setdefault(c, evaluator.miou(c, every))

    cv = stacked_counts(evaluator, lambda i: chosen_per_fold[fold_of[i]], every)
    base_counts = stacked_counts(evaluator, lambda i: start, every)
    cv_score = 100.0 * miou_of(cv[0].sum(axis=0), cv[1].sum(axis=0))
    base_score = 100.0 * miou_of(base_counts[0].sum(axis=0), base_counts[1].sum(axis=0))
    cv_ci = bootstrap_interval(*cv, resamples, seed)
    base_ci = bootstrap_interval(*base_counts, resamples, seed)
    gain_ci = paired_gain_interval(cv, base_counts, resamples, seed)
    gain = cv_score - base_score
    kept_base = not gain_ci[0] > 0 or best == start
    chosen = start if kept_base else best
    changed = {} if kept_base else {
        k: v for k, v, s in zip(KNOBS, best, start, strict=True) if v != s
    }  # fmt: skip
    requested = sum(passes.requested.values())
    evaluations = max(1, len(evaluator.results))
    if progress is not None:
        progress(1.0, "done")
    return CalibrationResult(
        config=base.replace(**changed) if changed else base,
        overrides=jsonable(changed),
        kept_base=kept_base,
        score=cv_score,
        score_interval=cv_ci,
        base_score=base_score,
        base_interval=base_ci,
        gain=gain,
        gain_interval=gain_ci,
        fit_score=scored[chosen],
        best_found=jsonable(overrides_of(best)),
        base_values=jsonable(overrides_of(start)),
        candidates=[{"overrides": jsonable(overrides_of(c)), "miou": s} for c, s in scored.items()],
        slices={k: jsonable(v) for k, v in slices.items()},
        space=space,
        folds=len(fold_sets),
        seed=seed,
        samples=n,
        budget=budget,
        min_gain_se=min_gain_se,
        passes_computed=sum(passes.computed.values()),
        passes_requested=requested,
        naive_grid_passes=round(space.size() * n * requested / evaluations),
        passes_by_kind={k: [passes.computed[k], passes.requested[k]] for k in PASS_KINDS},
        seconds=time.perf_counter() - started,
    )
