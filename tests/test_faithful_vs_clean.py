"""Each row of the README's faithful/clean table: the two modes differ exactly as documented.

Hand-computed numbers come from the spec (car_algorithm.md, golden README section 5); engine
checks run the tiny random CLIP from conftest through the same code path users take.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from cliprnn import CaR, CaRConfig
from cliprnn.car import final_scores, set_forced_schedule
from cliprnn.classifier import MaskClassifier
from cliprnn.clip_backend import ClipBackend
from cliprnn.postprocess import crf_image, crf_masks
from cliprnn.proposals import boxes_to_mask, scoremap2bbox
from cliprnn.queries import normalize_queries
from cliprnn.visual_prompts import apply_visual_prompts

MODES = (True, False)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def cars(tiny_clip_dir: Path) -> dict[bool, CaR]:
    out = {}
    for faithful in MODES:
        config = CaRConfig.preset(
            "voc", proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir),
            device="cpu", faithful=faithful, crf_iterations=2,
        )  # fmt: skip
        out[faithful] = CaR(config).load()
    return out


@pytest.fixture
def scripted(cars: dict[bool, CaR]) -> Iterator[dict[bool, CaR]]:
    """The module's engines, with any forced schedule or patched method undone afterwards."""
    yield cars
    for car in cars.values():
        set_forced_schedule(car, None)
        car.__dict__.pop("_postprocess", None)
        car.classifier.__dict__.pop("score", None)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ classifier tower


def test_classifier_tower_truncated_in_faithful_full_in_clean(
    cars: dict[bool, CaR], tiny_clip_dir: Path
) -> None:
    from transformers import CLIPModel

    images = [_image(32, 32, 1), _image(32, 32, 2)]
    for faithful, car in cars.items():
        model = CLIPModel.from_pretrained(str(tiny_clip_dir), attn_implementation="eager").eval()
        clf = car.classifier
        seen: list[tuple[bool, torch.Tensor]] = []
        real = clf.backend.image_embeddings

        def spy(pixels, *, truncated, _real=real, _seen=seen):
            out = _real(pixels, truncated=truncated)
            _seen.append((truncated, out))
            return out

        clf.backend.image_embeddings = spy
        try:
            clf.reset_cache()
            clf.score(images, ["cat", "dog"])
        finally:
            del clf.backend.image_embeddings
        assert [t for t, _ in seen] == [faithful]
        got = seen[0][1]

        pixels = clf.backend.classifier_input(images)
        vision = model.vision_model
        if faithful:  # the reference rounds the position embedding to fp16 (quirk Q2)
            weight = vision.embeddings.position_embedding.weight
            weight.data = weight.data.half().float()
        with torch.no_grad():
            hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states
            # hidden_states[-2] skips the last block (spec 1.6 / Q7); [-1] is the full tower
            cls = hidden[-2 if faithful else -1][:, 0]
            ref = model.visual_projection(vision.post_layernorm(cls))
        ref = ref / ref.norm(dim=-1, keepdim=True)
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)
    # the two towers really give different embeddings on this model
    full = cars[False].classifier.backend.image_embeddings(pixels, truncated=False)
    trunc = cars[False].classifier.backend.image_embeddings(pixels, truncated=True)
    assert float((full - trunc).abs().max()) > 1e-2


# ------------------------------------------------------------------ classifier scoring


class _HandBackend:
    """Two-dimensional features chosen by hand; logit scale 1 so softmaxes are sigmoids."""

    logit_scale = 1.0
    TEXT: ClassVar[dict[str, list[float]]] = {
        "a cat": [1.0, 0.0],
        "the cat": [0.0, 1.0],
        "a dog": [0.0, 1.0],
        "the dog": [0.0, 1.0],
    }

    def encode_text(self, texts):
        return torch.tensor([self.TEXT[t] for t in texts])

    def encode_templates(self, templates, queries):
        return torch.stack([self.encode_text([t.format(q) for t in templates]) for q in queries])

    def text_ensemble(self, names, templates):
        return ClipBackend.text_ensemble(self, names, templates)

    def classifier_input(self, images, crop="center"):
        return torch.tensor([float(im.mean() > 127) for im in images])

    def image_embeddings(self, pixels, *, truncated):
        return torch.stack([torch.tensor([1.0 - p, p]) for p in pixels])  # dark -> e1, bright -> e2


def test_scoring_double_softmax_vs_single_softmax_over_ensemble() -> None:
    images = [np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)]
    scores = {}
    for faithful in MODES:
        config = CaRConfig(templates=("a {}", "the {}"), faithful=faithful)
        scores[faithful], _ = MaskClassifier(_HandBackend(), config).score(images, ["cat", "dog"])
    # Faithful: per template softmax_q(cos), summed over the 2 templates, softmax again.
    # image e1: template 1 -> [s(1), 1-s(1)], template 2 -> [.5, .5]; P00 = s(2 s(1) - 1).
    p_faithful = _sigmoid(2 * _sigmoid(1.0) - 1)  # 0.6135
    # Clean: cat = norm(mean([1,0],[0,1])) = [.7071, .7071], dog = [0, 1]; one softmax.
    r = 1 / math.sqrt(2)
    p_clean_cat, p_clean_dog = _sigmoid(r), _sigmoid(1 - r)  # 0.6698, 0.5727
    np.testing.assert_allclose(np.diag(scores[True]), [p_faithful, p_faithful], atol=1e-6)
    np.testing.assert_allclose(np.diag(scores[False]), [p_clean_cat, p_clean_dog], atol=1e-6)
    # so θ = 0.6 keeps "dog" in faithful mode and drops it in clean mode
    assert scores[True][1, 1] > 0.6 > scores[False][1, 1]


# ------------------------------------------------------------------ CAM texts


def test_cam_texts_raw_then_templated_vs_templated_throughout(scripted) -> None:
    queries = ["cat", "dog", "bird"]
    for faithful, car in scripted.items():
        set_forced_schedule(car, [2, 2])  # drop "bird" in step 0, so both modes run two steps
        result = car.segment(_image(24, 24), queries, trace=True)
        texts = [step.extras["cam_texts"] for step in result.trace]
        origami = [f"a clean origami {q}." for q in queries]
        first = queries if faithful else origami
        assert texts == [first, origami[:2]]


# ------------------------------------------------------------------ CRF image


def test_crf_bilateral_image_mean_subtracted_with_uint8_wrap_vs_rgb() -> None:
    image = np.array([[[10, 200, 130], [0, 0, 0]]], np.uint8)
    # BGR (130, 200, 10) - (104.008, 116.669, 122.675) = (25.99, 83.33, -112.68):
    # truncated toward zero and wrapped mod 256 -> (25, 83, 144); black -> (152, 140, 134).
    expected = np.array([[[25, 83, 144], [152, 140, 134]]], np.uint8)
    np.testing.assert_array_equal(crf_image(image, True), expected)
    np.testing.assert_array_equal(crf_image(image, False), image)
    proposals = np.array([[[0.9, 0.2]]], np.float32)
    for faithful in MODES:
        config = CaRConfig(faithful=faithful, crf_iterations=1)
        _, extras = crf_masks(image, proposals, config)
        np.testing.assert_array_equal(extras["crf_image"], expected if faithful else image)
    # an image decoded from a file is a read-only view: the CRF still runs on it
    image.setflags(write=False)
    for faithful in MODES:
        masks, _ = crf_masks(image, proposals, CaRConfig(faithful=faithful, crf_iterations=1))
        assert masks.shape == (1, 1, 2)


# ------------------------------------------------------------------ gray prompt


def test_gray_prompt_bgr2gray_on_rgb_vs_rgb2gray() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 255  # pure red
    proposal = np.zeros((4, 4), np.float32)
    proposal[:2, :2] = 0.9
    out = {f: apply_visual_prompts(image, proposal, ["gray"], 0.4, faithful=f) for f in MODES}
    # faithful reads red as blue: 0.114 * 255 = 29; clean uses the red weight: 0.299 * 255 = 76
    for faithful, grey in ((True, 29), (False, 76)):
        np.testing.assert_array_equal(out[faithful][:2, :2], image[:2, :2])
        assert (out[faithful][2:, :] == grey).all() and (out[faithful][:, 2:] == grey).all()


# ------------------------------------------------------------------ position embedding


def test_position_embedding_fp16_rounded_vs_fp32(cars: dict[bool, CaR]) -> None:
    weight = cars[True].proposal_backend.model.vision_model.embeddings.position_embedding.weight
    weight = weight.detach().float()
    rounded = weight.half().float()
    assert (rounded != weight).any()  # the stored weights are not already fp16 values
    side = cars[True].proposal_backend.image_size // cars[True].proposal_backend.patch_size
    torch.testing.assert_close(
        cars[True].proposal_backend.position_embedding(side, side), rounded, rtol=0, atol=0
    )
    torch.testing.assert_close(
        cars[False].proposal_backend.position_embedding(side, side), weight, rtol=0, atol=0
    )


# ------------------------------------------------------------------ one-hot channels


def test_one_hot_drops_trailing_channels_only_in_faithful_mode() -> None:
    # 1×4 image, CRF off: background (1 - max) = [.1, .1, .8, .8]; labels [1, 2, 0, 0].
    proposals = np.array(
        [[[0.9, 0.1, 0.1, 0.1]], [[0.1, 0.9, 0.1, 0.1]], [[0.2, 0.2, 0.2, 0.2]]], np.float32
    )
    image = np.zeros((1, 4, 3), np.uint8)
    for faithful in MODES:
        masks, extras = crf_masks(image, proposals, CaRConfig(faithful=faithful, crf=False))
        np.testing.assert_array_equal(extras["labels"], [[1, 2, 0, 0]])
        np.testing.assert_array_equal(extras["lost"], [False, False, faithful])
        assert not masks[2].any()


# ------------------------------------------------------------------ stopping rule


def _script(car: CaR, diagonals: list[list[float]]) -> list[int]:
    """Make the classifier return the given diagonal at each step; returns live counts seen."""
    seen: list[int] = []

    def score(prompted, queries, *, trace=False):
        diag = diagonals[min(len(seen), len(diagonals) - 1)]
        seen.append(len(queries))
        assert len(diag) == len(queries)
        return np.diag(np.asarray(diag, np.float32)), {}

    car.classifier.score = score
    return seen


@pytest.mark.parametrize(
    ("diagonals", "faithful_steps", "clean_steps"),
    [
        ([[0.9, 0.9, 0.9]], 2, 1),  # nothing dropped: confirmation step vs final at once
        ([[0.9, 0.1, 0.9], [0.9, 0.9]], 2, 2),  # one dropped, then stable: same in both
        ([[0.9, 0.1, 0.9], [0.9, 0.2], [0.9]], 3, 3),  # shrinking to one query
    ],
)
def test_stopping_rule_count_with_confirmation_vs_set_equality(
    scripted, diagonals, faithful_steps, clean_steps
) -> None:
    for faithful, car in scripted.items():
        seen = _script(car, diagonals)
        result = car.segment(_image(16, 16), ["cat", "dog", "bird"])
        assert result.steps == (faithful_steps if faithful else clean_steps)
        assert len(seen) == result.steps


def test_clean_mode_without_early_stop_runs_the_repeat_step(tiny_clip_dir: Path) -> None:
    config = CaRConfig.preset(
        "voc", proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir),
        device="cpu", faithful=False, early_stop_clean=False, crf=False,
    )  # fmt: skip
    car = CaR(config)
    _script(car, [[0.9, 0.9]])
    assert car.segment(_image(16, 16), ["cat", "dog"]).steps == 2


# ------------------------------------------------------------------ CAM input size


def test_cam_input_multiple_of_16_vs_multiple_of_patch(cars: dict[bool, CaR]) -> None:
    assert cars[True].proposal_backend.patch_size == 8
    for hw, faithful_hw, clean_hw in (((20, 20), 32, 24), ((9, 41), (16, 48), (16, 48))):
        image = _image(*hw)
        f = cars[True].proposal_generator.prepare(image).pixel_values.shape[-2:]
        c = cars[False].proposal_generator.prepare(image).pixel_values.shape[-2:]
        expect_f = faithful_hw if isinstance(faithful_hw, tuple) else (faithful_hw,) * 2
        expect_c = clean_hw if isinstance(clean_hw, tuple) else (clean_hw,) * 2
        assert tuple(f) == expect_f and tuple(c) == expect_c


# ------------------------------------------------------------------ box masks


def test_box_mask_excludes_last_grid_row_and_column_only_when_faithful() -> None:
    cam = np.ones((4, 4), np.float32)
    assert scoremap2bbox(cam, 0.4, faithful=True) == [(0, 0, 3, 3)]
    assert scoremap2bbox(cam, 0.4, faithful=False) == [(0, 0, 4, 4)]
    assert boxes_to_mask([(0, 0, 3, 3)], 4, 4).sum() == 9  # rows/columns 0..2
    assert boxes_to_mask([(0, 0, 4, 4)], 4, 4).sum() == 16


def test_proposal_generator_uses_the_mode_box_rule(cars: dict[bool, CaR]) -> None:
    for faithful, car in cars.items():
        gen = car.proposal_generator
        state = gen.prepare(_image(32, 32, 3))
        _, extras = gen.propose(state, ["cat", "dog"], ["sky", "road"], trace=True)
        lam = car.config.clipes_threshold
        h, w = extras["gradcam_raw"].shape[1:]
        expected = [
            boxes_to_mask(scoremap2bbox(c, lam, faithful=faithful), h, w)
            for c in extras["gradcam_raw"]
        ]
        np.testing.assert_array_equal(extras["box_mask"], np.stack(expected))
        if faithful:
            assert not extras["box_mask"][:, -1, :].any() and not extras["box_mask"][:, :, -1].any()


# ------------------------------------------------------------------ synonyms


def test_comma_synonyms_one_string_vs_prompt_ensemble(cars: dict[bool, CaR]) -> None:
    query = "person with clothes,people,human"
    parts = ["person with clothes", "people", "human"]
    faithful, clean = cars[True].classifier, cars[False].classifier
    templates = faithful.config.templates
    text = faithful.template_text_features([query])[:, 0]
    whole = faithful.backend.encode_text([t.format(query) for t in templates])
    torch.testing.assert_close(text, whole.float().cpu())

    ens = clean.ensemble_text_features([query])[0]
    per_part = clean.backend.text_ensemble(parts, templates).float().cpu().mean(dim=0)
    torch.testing.assert_close(ens, per_part / per_part.norm(), atol=1e-6, rtol=0)
    one_string = clean.backend.text_ensemble([query], templates)[0].float().cpu()
    assert float((ens - one_string).abs().max()) > 1e-3

    # a synonym that is a background word leaves the background list only in clean mode
    bg = ("sky", "cloud", "road")
    assert normalize_queries(["sky,cloud"], bg, faithful=True).background == list(bg)
    assert normalize_queries(["sky,cloud"], bg, faithful=False).background == ["road"]


# ------------------------------------------------------------------ empty survivor's score


def test_final_scores_empty_middle_survivor() -> None:
    scores = np.array([0.9, 0.7, 0.8, 0.0], np.float32)
    has_pixels = np.array([True, False, True, False])
    np.testing.assert_array_equal(final_scores(scores, has_pixels, faithful=True), scores)
    np.testing.assert_array_equal(
        final_scores(scores, has_pixels, faithful=False), np.float32([0.9, 0.0, 0.8, 0.0])
    )


def test_engine_empty_middle_survivor_keeps_score_only_when_faithful(scripted) -> None:
    for faithful, car in scripted.items():
        set_forced_schedule(car, [3, 3])  # all three survive
        real = type(car)._postprocess

        def postprocess(image, proposals, bg_factor, crf_fn=None, _car=car, _real=real):
            masks, lost = _real(_car, image, proposals, bg_factor, crf_fn)
            masks, lost = masks.copy(), lost.copy()
            masks[1] = False  # the middle survivor's channel exists but wins no pixel
            lost[1] = False
            return masks, lost

        car._postprocess = postprocess
        result = car.segment(_image(16, 16), ["cat", "dog", "bird"])
        assert "dog" not in result.kept
        assert not (result.label_map == 2).any()
        if faithful:
            assert result.scores[1] > 0
        else:
            assert result.scores[1] == 0
