"""Classifier scoring formulas (by hand) and MaskClassifier's schedule (with a counting stub).

The stub backend below only exercises call counts and caching; the classifier's numbers are
checked against the reference in test_golden_stages_image.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cliprnn.classifier import (
    MaskClassifier,
    double_softmax,
    ensemble_scores,
    keep_decisions,
    template_probabilities,
)
from cliprnn.config import CaRConfig

# ---------------------------------------------------------------------------------------------
# Formulas


def test_double_softmax_hand_example() -> None:
    tp = torch.tensor([[[0.9, 0.1], [0.3, 0.7]], [[0.6, 0.4], [0.2, 0.8]]])
    # sums [[1.5, 0.5], [0.5, 1.5]] -> diagonal 1 / (1 + e^-1)
    p = double_softmax(tp)
    s = 1 / (1 + math.exp(-1))
    np.testing.assert_allclose(p.numpy(), [[s, 1 - s], [1 - s, s]], atol=1e-7)


def test_template_probabilities_hand_example() -> None:
    img = torch.tensor([[1.0, 0.0]])
    txt = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # T=1, Q=2
    p = template_probabilities(img, txt, 2.0)
    assert p.shape == (1, 1, 2)
    e2 = math.exp(2)
    np.testing.assert_allclose(p[0, 0].numpy(), [e2 / (e2 + 1), 1 / (e2 + 1)], rtol=1e-6)


def test_single_query_scores_one() -> None:
    img = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(15, 1, 8), dim=-1)
    assert double_softmax(template_probabilities(img, txt, 100.0)).item() == 1.0
    assert ensemble_scores(img, txt[0], 100.0).item() == 1.0


def test_unanimous_votes_twenty_queries() -> None:
    n, t = 20, 15
    eye = torch.eye(n)
    tp = template_probabilities(eye, eye.expand(t, n, n), 100.0)
    p = double_softmax(tp)
    expected = math.exp(15) / (math.exp(15) + 19)  # 0.99999419
    np.testing.assert_allclose(torch.diagonal(p).numpy(), expected, atol=1e-6)
    assert abs(expected - 0.9999941878) < 1e-9


def test_ensemble_scores_single_softmax() -> None:
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = ensemble_scores(img, txt, 10.0).numpy()
    a = 1 / (1 + math.exp(-10))
    b = 1 / (1 + math.exp(-(8 - 6)))
    np.testing.assert_allclose(p, [[a, 1 - a], [1 - b, b]], rtol=1e-6)


def test_keep_decisions_strict_and_fallback() -> None:
    assert keep_decisions([0.7, 0.6, 0.61, 0.2], 0.6) == [0, 2]
    assert keep_decisions(np.array([0.6, 0.6000001]), 0.6) == [1]
    assert keep_decisions([0.1, 0.5, 0.3], 0.7) == [1]
    assert keep_decisions([0.6, 0.6], 0.6) == [0]  # first argmax on ties
    assert keep_decisions([], 0.5) == []
    assert keep_decisions([0.9], 0.95) == [0]


# ---------------------------------------------------------------------------------------------
# Schedule logic with a counting stub


class StubBackend:
    """Deterministic, counting stand-in for ClipBackend (schedule tests only)."""

    logit_scale = 100.0

    def __init__(self, dim: int = 6) -> None:
        self.dim = dim
        self.text_calls: list[list[str]] = []
        self.tower_batches: list[tuple[int, bool]] = []
        self.ensemble_calls: list[tuple[list[str], tuple[str, ...]]] = []
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(12, dim, generator=g)

    def _text_vec(self, s: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(s)))
        return torch.nn.functional.normalize(torch.randn(self.dim, generator=g), dim=0)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        self.text_calls.append(list(texts))
        return torch.stack([self._text_vec(s) for s in texts])

    def encode_templates(self, templates: tuple[str, ...], queries: list[str]) -> torch.Tensor:
        self.text_calls.append([t.format(q) for q in queries for t in templates])
        vecs = [[self._text_vec(t.format(q)) for t in templates] for q in queries]
        return torch.stack([torch.stack(row) for row in vecs])

    def text_ensemble(self, names: list[str], templates: tuple[str, ...]) -> torch.Tensor:
        self.ensemble_calls.append((list(names), tuple(templates)))
        rows = []
        for n in names:
            m = torch.stack([self._text_vec(t.format(n)) for t in templates]).mean(0)
            rows.append(m / m.norm())
        return torch.stack(rows)

    def classifier_input(self, images: list[np.ndarray], crop: str = "center") -> torch.Tensor:
        assert crop in ("center", "pad")
        return torch.stack([torch.from_numpy(im[:2, :2].astype(np.float32) / 255) for im in images])

    def image_embeddings(self, pixel_values: torch.Tensor, *, truncated: bool) -> torch.Tensor:
        self.tower_batches.append((len(pixel_values), truncated))
        feats = pixel_values.reshape(len(pixel_values), -1) @ self.proj
        return torch.nn.functional.normalize(feats + (0.5 if truncated else 0.0), dim=-1)


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(n)]


QUERIES = ["cat", "dog", "boat", "person with clothes,people,human"]
TEMPLATES = ("a photo of a {}.", "There is a {} in the scene", "a clean origami {}.")


def _config(**kw: object) -> CaRConfig:
    return CaRConfig(templates=TEMPLATES, **kw)


def test_single_pass_and_reference_schedule_agree() -> None:
    imgs = _images(4)
    b1, b2 = StubBackend(), StubBackend()
    c1 = MaskClassifier(b1, _config(classifier_single_pass=True, batch_size=3))
    c2 = MaskClassifier(
        b2, _config(classifier_single_pass=False, reuse_unchanged_prompts=False, batch_size=3)
    )
    p1, _ = c1.score(imgs, QUERIES)
    p2, _ = c2.score(imgs, QUERIES)
    np.testing.assert_array_equal(p1, p2)
    assert p1.shape == (4, 4) and p1.dtype == np.float32
    np.testing.assert_allclose(p1.sum(axis=1), 1.0, atol=1e-6)
    assert [n for n, _ in b1.tower_batches] == [3, 1]  # one pass, batches of 3
    assert [n for n, _ in b2.tower_batches] == [3, 1] * len(TEMPLATES)
    assert all(t for _, t in b1.tower_batches)  # faithful: truncated tower


def test_faithful_texts_per_query_and_cached() -> None:
    b = StubBackend()
    clf = MaskClassifier(b, _config())
    clf.score(_images(2), QUERIES[:2])
    assert b.text_calls == [[t.format(q) for q in QUERIES[:2] for t in TEMPLATES]]
    clf.score(_images(3, seed=1), QUERIES[:3])
    assert b.text_calls[1] == [t.format("boat") for t in TEMPLATES]
    clf.score(_images(2, seed=2), QUERIES[:2])
    assert len(b.text_calls) == 2


def test_text_cache_off_reencodes() -> None:
    b = StubBackend()
    clf = MaskClassifier(b, _config(cache_text=False))
    clf.score(_images(2), QUERIES[:2])
    clf.score(_images(2), QUERIES[:2])
    assert len(b.text_calls) == 2


def test_image_cache_reuses_unchanged_prompts() -> None:
    imgs = _images(3)
    b = StubBackend()
    clf = MaskClassifier(b, _config())
    p_first, _ = clf.score(imgs, QUERIES[:3])
    assert sum(n for n, _ in b.tower_batches) == 3
    p_again, _ = clf.score([im.copy() for im in imgs], QUERIES[:3])
    assert sum(n for n, _ in b.tower_batches) == 3  # all cached
    np.testing.assert_array_equal(p_first, p_again)
    changed = [im.copy() for im in imgs]
    changed[1][0, 0, 0] ^= 1
    clf.score(changed, QUERIES[:3])
    assert b.tower_batches[-1][0] == 1  # only the changed image ran
    clf.reset_cache()
    clf.score(imgs, QUERIES[:3])
    assert b.tower_batches[-1][0] == 3


def test_duplicate_images_in_one_call_run_once() -> None:
    img = _images(1)[0]
    b = StubBackend()
    clf = MaskClassifier(b, _config())
    p, _ = clf.score([img, img.copy(), img.copy()], QUERIES[:3])
    assert sum(n for n, _ in b.tower_batches) == 1
    np.testing.assert_array_equal(p[0], p[1])


def test_cache_off_runs_every_image() -> None:
    imgs = _images(2)
    b = StubBackend()
    clf = MaskClassifier(b, _config(reuse_unchanged_prompts=False))
    clf.score(imgs, QUERIES[:2])
    clf.score(imgs, QUERIES[:2])
    assert sum(n for n, _ in b.tower_batches) == 4


def test_single_query_skips_tower() -> None:
    b = StubBackend()
    p, extras = MaskClassifier(b, _config()).score(_images(1), ["cat"])
    assert extras == {}
    np.testing.assert_array_equal(p, [[1.0]])
    assert b.tower_batches == [] and b.text_calls == []
    b2 = StubBackend()
    p2, _ = MaskClassifier(b2, _config(skip_single_query_classifier=False)).score(
        _images(1), ["cat"]
    )
    np.testing.assert_array_equal(p2, [[1.0]])
    assert len(b2.tower_batches) == 1


def test_trace_extras() -> None:
    b = StubBackend()
    p, extras = MaskClassifier(b, _config()).score(_images(3), QUERIES[:3], trace=True)
    assert extras["cls_input"].shape == (3, 2, 2, 3)
    tp = extras["template_probs"]
    assert tp.shape == (len(TEMPLATES), 3, 3)
    np.testing.assert_allclose(double_softmax(torch.from_numpy(tp)).numpy(), p, atol=1e-6)


def test_clean_mode_full_tower_and_synonym_ensemble() -> None:
    b = StubBackend()
    clf = MaskClassifier(b, _config(faithful=False))
    p, extras = clf.score(_images(4), QUERIES, trace=True)
    assert all(not t for _, t in b.tower_batches)
    assert "template_probs" not in extras
    assert b.ensemble_calls[-1] == (["person with clothes", "people", "human"], TEMPLATES)
    assert b.text_calls == []
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    # The synonym query's embedding is the renormalised mean of its three names' ensembles.
    feats = clf.ensemble_text_features([QUERIES[3]])[0]
    parts = b.text_ensemble(["person with clothes", "people", "human"], TEMPLATES).mean(0)
    np.testing.assert_allclose(feats.numpy(), (parts / parts.norm()).numpy(), atol=1e-6)


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="2 prompted images for 3 queries"):
        MaskClassifier(StubBackend(), _config()).score(_images(2), QUERIES[:3])
