"""The recurrence's stopping rule and bookkeeping, on scripted proposals and scores.

The stages are replaced by scripted stand-ins here on purpose: these tests pin the control flow
(what is kept, when the loop stops, which texts the CAM embeds), not any model output.
"""

from __future__ import annotations

import numpy as np
import pytest

from cliprnn import CaR, CaRConfig

H, W = 12, 16


class ScriptedProposals:
    """Returns one fixed soft mask per query (a distinct block each); records the CAM texts."""

    def __init__(self, empty_from_call: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.prepared = 0
        self.empty_from_call = empty_from_call

    def prepare(self, image: np.ndarray) -> str:
        self.prepared += 1
        return "state"

    def propose(self, state, cam_texts, background, *, trace=False):
        self.calls.append(list(cam_texts))
        out = np.zeros((len(cam_texts), H, W), np.float32)
        if self.empty_from_call is None or len(self.calls) <= self.empty_from_call:
            for j, text in enumerate(cam_texts):
                col = (sum(map(ord, text)) % 4) * 4
                out[j, 2:10, col : col + 4] = 1.0
        return out, {}


class ScriptedClassifier:
    """Scores each step from a script: a dict query -> score per step (diagonal only)."""

    def __init__(self, script: list[dict[str, float]]) -> None:
        self.script = script
        self.step = 0
        self.seen: list[list[str]] = []

    def score(self, prompted, queries, *, trace=False):
        self.seen.append(list(queries))
        table = self.script[min(self.step, len(self.script) - 1)]
        self.step += 1
        diag = [table[q] for q in queries]
        return np.diag(np.asarray(diag, np.float32)), {}


def make_car(script, **overrides) -> tuple[CaR, ScriptedProposals, ScriptedClassifier]:
    config = CaRConfig.preset("voc", crf=False, **overrides)
    car = CaR(config)
    proposals, classifier = ScriptedProposals(), ScriptedClassifier(script)
    car._proposals, car._classifier = proposals, classifier
    return car, proposals, classifier


IMAGE = np.full((H, W, 3), 128, np.uint8)


def test_faithful_always_runs_a_confirmation_step():
    script = [{"cat": 0.9, "dog": 0.8}]
    car, _proposals, classifier = make_car(script)
    result = car.segment(IMAGE, ["cat", "dog"])
    # Step 0 keeps both (2 positives vs 0 before), step 1 keeps both again (2 == 2): stop.
    assert result.steps == 2
    assert classifier.seen == [["cat", "dog"], ["cat", "dog"]]
    assert result.kept == ["cat", "dog"]


def test_faithful_cam_texts_raw_then_templated():
    car, proposals, _ = make_car([{"cat": 0.9, "sofa": 0.1}, {"cat": 1.0}])
    car.segment(IMAGE, ["cat", "sofa"])
    assert proposals.calls[0] == ["cat", "sofa"]
    assert proposals.calls[1] == ["a clean origami cat."]


def test_clean_mode_uses_one_cam_template_and_stops_when_nothing_dropped():
    car, proposals, _classifier = make_car([{"cat": 0.9, "dog": 0.8}], faithful=False)
    result = car.segment(IMAGE, ["cat", "dog"])
    assert result.steps == 1  # the next step would repeat this one exactly
    assert proposals.calls == [["a clean origami cat.", "a clean origami dog."]]


def test_clean_mode_without_early_stop_runs_the_confirmation_step():
    car, _, _classifier = make_car(
        [{"cat": 0.9, "dog": 0.8}], faithful=False, early_stop_clean=False
    )
    assert car.segment(IMAGE, ["cat", "dog"]).steps == 2


def test_drops_below_theta_strictly_and_stops_when_set_is_stable():
    script = [
        {"cat": 0.7, "dog": 0.59, "sofa": 0.1},  # below θ = 0.6: dog and sofa dropped
        {"cat": 0.95},
    ]
    car, _, classifier = make_car(script)
    result = car.segment(IMAGE, ["cat", "dog", "sofa"])
    assert classifier.seen == [["cat", "dog", "sofa"], ["cat"]]
    assert result.kept == ["cat"] and result.dropped == ["dog", "sofa"]
    assert result.steps == 2
    np.testing.assert_allclose(result.scores, [0.95, 0.0, 0.0])
    assert set(np.unique(result.label_map)) <= {0, 1}


def test_never_empty_keeps_the_argmax_query():
    script = [{"cat": 0.2, "dog": 0.5, "sofa": 0.3}, {"dog": 1.0}]
    car, _, _ = make_car(script)
    result = car.segment(IMAGE, ["cat", "dog", "sofa"])
    assert result.kept == ["dog"]
    assert result.scores[1] == pytest.approx(1.0)


def test_iteration_cap():
    # Drop one query per step: 5 queries need 5 steps + confirmation; the cap stops at 3.
    names = ["a", "b", "c", "d", "e"]
    script = [{q: (0.9 if i > k else 0.1) for i, q in enumerate(names)} for k in range(6)]
    car, _, classifier = make_car(script, max_steps=3)
    result = car.segment(IMAGE, names)
    assert result.steps == 3
    assert len(classifier.seen) == 3


def test_stale_mask_guard_reuses_previous_proposals():
    script = [{"cat": 0.9, "dog": 0.1}, {"cat": 0.9}]
    car, proposals, _ = make_car(script)
    proposals.empty_from_call = 1  # the second step's proposals are all zero
    result = car.segment(IMAGE, ["cat", "dog"], trace=True)
    np.testing.assert_array_equal(result.trace[1].proposals[0], result.trace[0].proposals[0])
    assert result.masks[0].any()


def test_dense_pass_once_per_image_unless_switched_off():
    script = [{"cat": 0.9, "dog": 0.1}, {"cat": 0.9}]
    car, proposals, _ = make_car(script)
    car.segment(IMAGE, ["cat", "dog"])
    assert proposals.prepared == 1
    car, proposals, _ = make_car(script, reuse_dense_pass=False)
    car.segment(IMAGE, ["cat", "dog"])
    assert proposals.prepared == 2


def test_trace_records_every_step():
    script = [{"cat": 0.9, "dog": 0.1}, {"cat": 0.9}]
    car, _, _ = make_car(script)
    result = car.segment(IMAGE, ["cat", "dog"], trace=True)
    assert [t.queries for t in result.trace] == [["cat", "dog"], ["cat"]]
    assert [t.kept for t in result.trace] == [["cat"], ["cat"]]
    assert result.trace[0].proposals.shape == (2, H, W)
    assert result.trace[0].scores.shape == (2, 2)


def test_referring_mode_proposes_each_phrase_alone():
    script = [{"the cat": 0.9, "a dog": 0.8}]
    car, proposals, _ = make_car(script, mode="referring")
    car.segment(IMAGE, ["the cat", "a dog"])
    assert proposals.calls[0] == ["the cat"] and proposals.calls[1] == ["a dog"]


def test_stuff_pass_uses_things_as_background_and_paints_first():
    seen_background = []

    class Recording(ScriptedProposals):
        def propose(self, state, cam_texts, background, *, trace=False):
            seen_background.append(list(background))
            out = np.zeros((len(cam_texts), H, W), np.float32)
            for j, text in enumerate(cam_texts):
                if "grass" in text:
                    out[j] = 0.9  # stuff covers everything
                else:
                    out[j, 3:9, 3:9] = 1.0
            return out, {}

    script = [{"cat": 0.9, "grass": 0.9}]
    car, _, _ = make_car(script, stuff_queries=("grass",), mutual_background=True)
    car._proposals = Recording()
    result = car.segment(IMAGE, ["cat", "grass"])
    assert seen_background[0] == ["grass"]  # thing pass: stuff is the background
    assert seen_background[-1] == ["cat"]  # stuff pass: things are the background
    assert result.label_map[5, 5] == 1  # the thing is painted over the stuff
    assert result.label_map[0, 0] == 2
