"""Calibration on labelled samples: the search, its cache, its scoring and its errors, on the
bundled miniature CLIPs and generated scenes with exact ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cliprnn import CaR
from cliprnn.calibration import (
    KNOBS,
    CalibrationError,
    CalibrationResult,
    LabelledImage,
    SearchSpace,
    calibrate,
)
from cliprnn.calibration.targets import TargetScorer
from cliprnn.dev.scenes import CLASSES, generate_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGETS = {i + 1: name for i, name in enumerate(CLASSES)}
#: A small space so that a whole calibration takes seconds.
SMALL = SearchSpace(
    confidence_thresholds=(0.02, 0.05, 0.3),
    mask_thresholds=(0.4, 0.5),
    visual_prompt_sets=(("circle", "blur", "gray"), ("blur", "gray")),
    background_word_sets=(("sky", "grass", "water", "wall", "road", "ground"),),
    crf=(True, False),
)


@pytest.fixture(scope="module")
def mini() -> CaR:
    return CaR("mini", text_cache_dir=None).load()


@pytest.fixture(scope="module")
def samples() -> list[LabelledImage]:
    scenes = [generate_scene(seed) for seed in range(500_000, 500_005)]
    return [LabelledImage(s.image, s.label_map, f"scene {s.seed}") for s in scenes]


def _run(mini: CaR, samples: list[LabelledImage], **kwargs: object) -> CalibrationResult:
    options: dict[str, object] = dict(space=SMALL, budget=12, folds=3, seed=1, resamples=100)
    options.update(kwargs)
    return calibrate(mini, samples, list(CLASSES), TARGETS, **options)  # type: ignore[arg-type]


def _comparable(result: CalibrationResult) -> dict[str, object]:
    record = result.to_dict()
    for key in ("seconds", "passes_computed", "passes_by_kind"):
        record.pop(key)
    return record


@pytest.fixture(scope="module")
def cached(mini: CaR, samples: list[LabelledImage]) -> CalibrationResult:
    return _run(mini, samples)


def test_search_is_deterministic_for_a_seed(mini, samples, cached):
    reported: list[float] = []
    again = _run(mini, samples, progress=lambda fraction, _label: reported.append(fraction))
    assert _comparable(again) == _comparable(cached)
    # progress climbs through every phase (3 folds, the final search, the curves) to 1
    assert reported == sorted(reported) and reported[-1] == 1.0 and reported[0] >= 0.0
    assert len({int(5 * f) for f in reported}) == 6
    # another seed draws other folds: the cross-validated score is over other splits
    other = _run(mini, samples, seed=2)
    assert other.folds == cached.folds == 3
    assert other.base_score == pytest.approx(cached.base_score)


def test_cache_gives_the_uncached_search_with_fewer_passes(mini, samples, cached):
    uncached = _run(mini, samples, cache=False)
    assert _comparable(uncached) == _comparable(cached)
    assert uncached.passes_computed == uncached.passes_requested == cached.passes_requested
    assert cached.passes_computed < cached.passes_requested / 2
    dense_computed, dense_requested = cached.passes_by_kind["dense"]
    assert dense_computed == len(samples) < dense_requested  # one dense pass per image
    assert cached.naive_grid_passes >= cached.passes_requested


def test_result_scores_are_consistent(mini, samples, cached):
    r = cached
    base = next(c for c in r.candidates if c["overrides"] == r.base_values)
    # the search starts at the base configuration and only climbs
    assert r.fit_score >= base["miou"] - 1e-9
    assert max(c["miou"] for c in r.candidates) == pytest.approx(
        max(miou for knob in KNOBS for _, miou in r.curve(knob))
    )
    for value, interval in ((r.score, r.score_interval), (r.base_score, r.base_interval),
                            (r.gain, r.gain_interval)):  # fmt: skip
        assert interval[0] <= value + 1e-6 and value - 1e-6 <= interval[1]
    assert r.gain == pytest.approx(r.score - r.base_score)
    if r.kept_base:
        assert r.overrides == {} and r.config == mini.config
    else:
        assert r.gain_interval[0] > 0 and r.overrides
        assert r.config == mini.config.replace(**r.config_overrides())
    theta = [v for v, _ in r.curve("confidence_threshold")]
    assert theta == list(SMALL.confidence_thresholds)


def test_fit_score_is_what_a_plain_engine_gets(mini, samples, cached):
    """The cached engines segment exactly like a CaR built with the chosen configuration."""
    best = cached.best_found
    engine = mini.sharing_models(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in best.items()})  # fmt: skip
    scorer = TargetScorer(TARGETS, (255,))
    matrix, missed = 0, 0
    for s in samples:
        result = engine.segment(s.image, list(CLASSES))
        pred = scorer.query_lookup(result.queries)[result.label_map]
        m, x = scorer.confusion(pred, scorer.gt_indices(s.ground_truth, s.name))
        matrix, missed = matrix + m, missed + x
    from cliprnn.scoring import miou_of

    fit = next(c["miou"] for c in cached.candidates if c["overrides"] == best)
    assert 100.0 * miou_of(np.asarray(matrix), np.asarray(missed)) == pytest.approx(fit)


def test_a_move_must_gain_more_than_its_noise(mini, samples, cached):
    """Any gain moves the search with min_gain_se=0; a margin no gain can pass keeps it at the
    base configuration."""
    free = _run(mini, samples, min_gain_se=0.0)
    assert free.best_found != free.base_values and free.min_gain_se == 0.0
    stuck = _run(mini, samples, min_gain_se=1e6)
    assert stuck.best_found == stuck.base_values and stuck.kept_base and stuck.overrides == {}
    base = next(c["miou"] for c in stuck.candidates if c["overrides"] == stuck.base_values)
    assert stuck.fit_score == pytest.approx(base) and stuck.score == pytest.approx(base)
    assert cached.min_gain_se == 1.0
    with pytest.raises(CalibrationError, match="min_gain_se"):
        _run(mini, samples, min_gain_se=-1.0)


def test_result_round_trips_through_json(cached):
    again = CalibrationResult.from_dict(json.loads(json.dumps(cached.to_dict())))
    assert again.config == cached.config
    assert again.space == cached.space
    assert again.to_dict() == cached.to_dict()


def test_scorer_counts_unnamed_queries_as_wrong_and_skips_ignored_pixels():
    scorer = TargetScorer({1: "cat", 2: "dog"}, (255,))
    gt = scorer.gt_indices(np.array([[1, 1, 2, 255]]), "s")
    assert gt.tolist() == [[1, 1, 2, -1]]
    lookup = scorer.query_lookup(["Dog", "bird", "cat "])  # bird names no class
    assert lookup.tolist() == [0, 2, scorer.n, 1]
    pred = lookup[np.array([[3, 2, 1, 1]])]  # cat, bird, dog, dog(ignored)
    matrix, missed = scorer.confusion(pred, gt)
    assert matrix[1, 1] == 1 and matrix[2, 2] == 1 and missed.tolist() == [0, 1, 0]
    # a prediction at another size is resized (nearest) to the ground truth's
    small = scorer.confusion(np.array([[1]]), scorer.gt_indices(np.ones((4, 4), int), "s"))
    assert small[0][1, 1] == 16


def test_errors_name_the_sample_or_parameter(mini, samples):
    queries = list(CLASSES)
    no_gt = [*samples[:2], LabelledImage(samples[2].image, None, "sample abc (/data/c.png)")]
    with pytest.raises(CalibrationError, match=r"no ground truth: sample abc \(/data/c.png\)"):
        calibrate(mini, no_gt, queries, TARGETS)
    with pytest.raises(CalibrationError, match="no query names a ground-truth class"):
        calibrate(mini, samples, ["cat", "dog"], TARGETS)
    odd = samples[1].ground_truth.copy()
    odd[0, 0] = 77
    mismatch = [samples[0], LabelledImage(samples[1].image, odd, "sample xyz")]
    with pytest.raises(CalibrationError, match=r"sample xyz: ground-truth values \[77\]"):
        calibrate(mini, mismatch, queries, TARGETS)
    with pytest.raises(CalibrationError, match="at least 2 labelled samples"):
        calibrate(mini, samples[:1], queries, TARGETS)
    with pytest.raises(CalibrationError, match="no labelled samples"):
        calibrate(mini, [], queries, TARGETS)
    with pytest.raises(CalibrationError, match="budget"):
        calibrate(mini, samples, queries, TARGETS, budget=0)
    with pytest.raises(CalibrationError, match="unknown visual prompt"):
        SearchSpace(visual_prompt_sets=(("circle", "sparkles"),))
    with pytest.raises(CalibrationError, match=r"confidence_thresholds must lie in \[0, 1\]"):
        SearchSpace(confidence_thresholds=(0.2, 1.5))


def test_default_space_holds_the_base_values_and_extra_background():
    from cliprnn import CaRConfig

    base = CaRConfig.preset("voc", confidence_threshold=0.33, visual_prompts=("blur", "circle"))
    space = SearchSpace.default(base, extra_background=["carpet", "floor"])
    assert 0.33 in space.confidence_thresholds
    assert ("blur", "circle") in space.visual_prompt_sets  # the order CaR draws them in
    assert len(set(space.visual_prompt_sets)) == len(space.visual_prompt_sets)
    assert ("carpet", "floor") in space.background_word_sets
    assert any("carpet" in ws and "ground" in ws for ws in space.background_word_sets)
    assert space.size() == np.prod([len(space.values(k)) for k in KNOBS])
    assert SearchSpace.from_dict(space.to_dict()) == space
    widened = SMALL.including(base)
    assert widened.confidence_thresholds[0] == 0.33 and 0.05 in widened.confidence_thresholds
