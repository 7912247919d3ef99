"""Every speed switch leaves CaR's output unchanged, and really skips the work it names.

The whole pipeline runs on a tiny random CLIP (both roles): each configuration with one switch
turned off, and the reference schedule (all off), must give the same label map, the same kept
queries at every step, and scores within 1e-6 of the default (all on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cliprnn import CaR, CaRConfig
from cliprnn.bench.speed import SPEED_SWITCHES
from cliprnn.scenes import generate_scene

QUERIES = ["cat", "dog", "car", "tree", "boat"]
# A forced schedule makes every configuration walk the same three steps (4 -> 2 -> 2 queries).
SCHEDULE = [4, 2, 2]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return generate_scene(3, size=(40, 56)).image


def _run(
    model: Path, image: np.ndarray, *, forced: bool, faithful: bool = True, theta: float = 0.2,
    **switches: bool,
):  # fmt: skip
    config = CaRConfig.preset(
        "voc", proposal_model=str(model), classifier_model=str(model), device="cpu",
        max_image_side=None, faithful=faithful, confidence_threshold=theta, **switches,
    )  # fmt: skip
    car = CaR(config)
    counts = _count_work(car)
    if forced:
        car.forced_schedule = SCHEDULE
    result = car.segment(image, QUERIES, trace=True)
    return result, counts, car


def _count_work(car: CaR) -> dict[str, int]:
    """Counters of dense passes, text strings embedded and classifier tower batches."""
    counts = {"dense": 0, "texts": 0}
    backend = car.proposal_backend
    dense_pass, encode = backend.dense_pass, backend._encode_uncached

    def counting_dense(*args: Any, **kwargs: Any):
        counts["dense"] += 1
        return dense_pass(*args, **kwargs)

    def counting_encode(texts: list[str]):
        counts["texts"] += len(texts)
        return encode(texts)

    backend.dense_pass = counting_dense
    backend._encode_uncached = counting_encode
    return counts


def _assert_same_output(a, b) -> None:
    np.testing.assert_array_equal(a.label_map, b.label_map)
    assert a.kept == b.kept
    assert a.steps == b.steps
    assert [t.kept for t in a.trace] == [t.kept for t in b.trace]
    assert [t.queries for t in a.trace] == [t.queries for t in b.trace]
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6, rtol=0)
    for ta, tb in zip(a.trace, b.trace, strict=True):
        np.testing.assert_allclose(ta.scores, tb.scores, atol=1e-6, rtol=0)
        np.testing.assert_allclose(ta.proposals, tb.proposals, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def default_runs(tiny_clip_dir: Path, image: np.ndarray) -> dict[bool, Any]:
    return {forced: _run(tiny_clip_dir, image, forced=forced) for forced in (True, False)}


def test_every_switch_is_on_by_default() -> None:
    config = CaRConfig()
    assert all(getattr(config, name) is True for name in SPEED_SWITCHES)
    assert CaRConfig.preset("voc").classifier_single_pass


def test_forced_schedule_walks_three_steps(default_runs) -> None:
    result, _, _ = default_runs[True]
    assert result.steps == 3
    assert [len(t.queries) for t in result.trace] == [5, 4, 2]


@pytest.mark.parametrize("switch", [s for s in SPEED_SWITCHES if s != "early_stop_clean"])
def test_switch_off_gives_the_same_output(tiny_clip_dir, image, default_runs, switch):
    reference, _, _ = default_runs[True]
    result, _, _ = _run(tiny_clip_dir, image, forced=True, **{switch: False})
    _assert_same_output(result, reference)


@pytest.mark.parametrize("forced", [True, False])
def test_reference_schedule_gives_the_same_output(tiny_clip_dir, image, default_runs, forced):
    reference, fast_counts, _ = default_runs[forced]
    result, slow_counts, _ = _run(
        tiny_clip_dir, image, forced=forced, **dict.fromkeys(SPEED_SWITCHES, False)
    )
    _assert_same_output(result, reference)
    # one dense pass per image instead of one per step
    assert (fast_counts["dense"], slow_counts["dense"]) == (1, reference.steps)


def test_early_stop_clean_ends_a_first_step_that_drops_nothing(tiny_clip_dir, image) -> None:
    # with θ = 0 nobody is dropped: clean mode stops after step 1 instead of confirming it
    fast, _, _ = _run(tiny_clip_dir, image, forced=False, faithful=False, theta=0.0)
    slow, _, _ = _run(
        tiny_clip_dir, image, forced=False, faithful=False, theta=0.0, early_stop_clean=False
    )
    assert slow.trace[0].kept == slow.trace[0].queries
    assert (fast.steps, slow.steps) == (1, 2)
    np.testing.assert_array_equal(fast.label_map, slow.label_map)
    assert fast.kept == slow.kept
    np.testing.assert_allclose(fast.scores, slow.scores, atol=1e-6, rtol=0)


def test_text_cache_embeds_each_string_once_across_images(tiny_clip_dir, image) -> None:
    config = CaRConfig.preset(
        "voc", proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir),
        device="cpu", max_image_side=None,
    )  # fmt: skip
    car = CaR(config)
    counts = _count_work(car)
    car.forced_schedule = SCHEDULE
    car.segment(image, QUERIES)
    first = counts["texts"]
    car.segment(image[::-1].copy(), QUERIES)
    assert first > 0 and counts["texts"] == first  # the second image embeds nothing


def test_classifier_tower_runs_once_per_step(tiny_clip_dir, image) -> None:
    fast, _, car_fast = _run(tiny_clip_dir, image, forced=True, reuse_unchanged_prompts=False)
    _, _, car_slow = _run(
        tiny_clip_dir, image, forced=True, reuse_unchanged_prompts=False,
        classifier_single_pass=False,
    )  # fmt: skip
    templates = len(CaRConfig().templates)
    # steps with more than one live query reach the tower (batch size 32 > 5 prompted images)
    scored_steps = sum(len(t.queries) > 1 for t in fast.trace)
    assert car_fast.classifier.tower_calls == scored_steps
    assert car_slow.classifier.tower_calls == templates * scored_steps
