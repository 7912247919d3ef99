"""Every speed switch leaves CaR's output unchanged, and really skips the work it names.

The whole pipeline runs on a tiny random CLIP (both roles; its weights are fp16 values, as in
OpenAI's release, so ``compact_weights`` holds them in 16 bits): each configuration with one
switch turned off, and the reference schedule (all off), must give the same label map, the same
kept queries at every step, and scores within 1e-6 of the default (all on) — within 1e-5 when
``group_templates`` differs: a query's templates embedded in one pass round differently from
one string per pass (text embeddings within 2e-7), and the classifier's softmax over logit
scale 100 amplifies that; the golden stage tolerance for classifier scores is 1e-5.

Most runs use one CPU thread: a tiny model's many small operations are several times slower
when each waits for a second thread on a busy machine. One comparison runs on two threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from cliprnn import CaR, CaRConfig
from cliprnn.car import set_forced_schedule
from cliprnn.compact import _Upcast, align_weights, compact_weights, exact_storage_dtype
from cliprnn.dev.bench.speed import SPEED_SWITCHES
from cliprnn.dev.random_clip import random_clip_model
from cliprnn.dev.scenes import generate_scene

QUERIES = ["cat", "dog", "car", "tree", "boat"]
# A forced schedule makes every configuration walk the same three steps (4 -> 2 -> 2 queries).
SCHEDULE = [4, 2, 2]


TINY = dict(width=64, layers=2, patch_size=8, image_size=32)  # conftest's tiny_clip_dir model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fp16_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny_clip_dir model, its weights rounded to fp16 values (as OpenAI released CLIP)."""
    from cliprnn.dev.random_clip import save_random_clip

    folder = tmp_path_factory.mktemp("fp16-clip")
    return save_random_clip(folder, **TINY, seed=0, fp16_values=True)


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
        set_forced_schedule(car, SCHEDULE)
    result = car.segment(image, QUERIES, trace=True)
    return result, counts, car


def _count_work(car: CaR) -> dict[str, int]:
    """Counters of dense passes, text strings embedded and classifier tower batches."""
    counts = {"dense": 0, "texts": 0}
    backend = car.proposal_backend
    dense_pass, forward = backend.dense_pass, backend._forward_texts

    def counting_dense(*args: Any, **kwargs: Any):
        counts["dense"] += 1
        return dense_pass(*args, **kwargs)

    def counting_forward(texts: list[str]):
        counts["texts"] += len(texts)
        return forward(texts)

    backend.dense_pass = counting_dense
    backend._forward_texts = counting_forward
    return counts


def _assert_same_output(a, b, *, same_text_grouping: bool = True) -> None:
    score_atol = 1e-6 if same_text_grouping else 1e-5
    np.testing.assert_array_equal(a.label_map, b.label_map)
    assert a.kept == b.kept
    assert a.steps == b.steps
    assert [t.kept for t in a.trace] == [t.kept for t in b.trace]
    assert [t.queries for t in a.trace] == [t.queries for t in b.trace]
    np.testing.assert_allclose(a.scores, b.scores, atol=score_atol, rtol=0)
    for ta, tb in zip(a.trace, b.trace, strict=True):
        np.testing.assert_allclose(ta.scores, tb.scores, atol=score_atol, rtol=0)
        np.testing.assert_allclose(ta.proposals, tb.proposals, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def default_runs(fp16_clip_dir: Path, image: np.ndarray) -> dict[bool, Any]:
    return {forced: _run(fp16_clip_dir, image, forced=forced) for forced in (True, False)}


def test_every_switch_is_on_by_default() -> None:
    config = CaRConfig()
    assert all(getattr(config, name) is True for name in SPEED_SWITCHES)
    assert CaRConfig.preset("voc").classifier_single_pass


def test_forced_schedule_walks_three_steps(default_runs) -> None:
    result, _, _ = default_runs[True]
    assert result.steps == 3
    assert [len(t.queries) for t in result.trace] == [5, 4, 2]


@pytest.mark.parametrize("switch", [s for s in SPEED_SWITCHES if s != "early_stop_clean"])
def test_switch_off_gives_the_same_output(fp16_clip_dir, image, default_runs, switch):
    reference, _, _ = default_runs[True]
    result, _, _ = _run(fp16_clip_dir, image, forced=True, **{switch: False})
    _assert_same_output(result, reference, same_text_grouping=switch != "group_templates")


@pytest.mark.parametrize("forced", [True, False])
def test_reference_schedule_gives_the_same_output(fp16_clip_dir, image, default_runs, forced):
    reference, fast_counts, _ = default_runs[forced]
    result, slow_counts, _ = _run(
        fp16_clip_dir, image, forced=forced, **dict.fromkeys(SPEED_SWITCHES, False)
    )
    _assert_same_output(result, reference, same_text_grouping=False)
    # one dense pass per image instead of one per step
    assert (fast_counts["dense"], slow_counts["dense"]) == (1, reference.steps)


def test_reference_schedule_gives_the_same_output_on_two_threads(fp16_clip_dir, image) -> None:
    # multi-threaded kernels split rows by batch shape: batching must still not change a bit
    # three templates, not fifteen: the same batching, a fifth of the text passes
    templates = CaRConfig().templates[:3]
    torch.set_num_threads(2)
    try:
        fast, _, _ = _run(fp16_clip_dir, image, forced=True, templates=templates)
        slow, _, _ = _run(
            fp16_clip_dir, image, forced=True, templates=templates,
            **dict.fromkeys(SPEED_SWITCHES, False),
        )  # fmt: skip
    finally:
        torch.set_num_threads(1)
    _assert_same_output(slow, fast, same_text_grouping=False)


def test_early_stop_clean_ends_a_first_step_that_drops_nothing(fp16_clip_dir, image) -> None:
    # with θ = 0 nobody is dropped: clean mode stops after step 1 instead of confirming it
    fast, _, _ = _run(fp16_clip_dir, image, forced=False, faithful=False, theta=0.0)
    slow, _, _ = _run(
        fp16_clip_dir, image, forced=False, faithful=False, theta=0.0, early_stop_clean=False
    )
    assert slow.trace[0].kept == slow.trace[0].queries
    assert (fast.steps, slow.steps) == (1, 2)
    np.testing.assert_array_equal(fast.label_map, slow.label_map)
    assert fast.kept == slow.kept
    np.testing.assert_allclose(fast.scores, slow.scores, atol=1e-6, rtol=0)


def test_text_cache_embeds_each_string_once_across_images(fp16_clip_dir, image) -> None:
    config = CaRConfig.preset(
        "voc", proposal_model=str(fp16_clip_dir), classifier_model=str(fp16_clip_dir),
        device="cpu", max_image_side=None,
    )  # fmt: skip
    car = CaR(config)
    counts = _count_work(car)
    set_forced_schedule(car, SCHEDULE)
    car.segment(image, QUERIES)
    first = counts["texts"]
    car.segment(image[::-1].copy(), QUERIES)
    assert first > 0 and counts["texts"] == first  # the second image embeds nothing


def test_classifier_tower_runs_once_per_step(fp16_clip_dir, image) -> None:
    fast, _, car_fast = _run(fp16_clip_dir, image, forced=True, reuse_unchanged_prompts=False)
    _, _, car_slow = _run(
        fp16_clip_dir, image, forced=True, reuse_unchanged_prompts=False,
        classifier_single_pass=False,
    )  # fmt: skip
    templates = len(CaRConfig().templates)
    # steps with more than one live query reach the tower (batch size 32 > 5 prompted images)
    scored_steps = sum(len(t.queries) > 1 for t in fast.trace)
    assert car_fast.classifier.tower_calls == scored_steps
    assert car_slow.classifier.tower_calls == templates * scored_steps


# -- compact weights ----------------------------------------------------------------------------


def test_compact_weights_hold_every_layer_weight_in_16_bits(default_runs) -> None:
    _, _, car = default_runs[True]
    backend = car.proposal_backend
    assert car.classifier_backend is backend  # one model serves both roles here
    params = list(backend.model.parameters())
    total = sum(p.numel() for p in params)
    # only the scalar logit scale and the width-64 CLS embedding live outside a layer
    assert total - backend.compact_parameters == 1 + 64
    assert sum(p.element_size() * p.numel() for p in params) == 2 * (total - 65) + 4 * 65
    # layers still hand out fp32 weights, equal to the fp16 values stored
    weight = backend.model.vision_model.encoder.layers[0].mlp.fc1.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, weight.half().float())


@pytest.mark.parametrize("compact", [True, False])
def test_loaded_weights_start_on_64_byte_boundaries(fp16_clip_dir: Path, compact: bool) -> None:
    # memory-mapped checkpoint tensors start anywhere; CPU BLAS rounds by alignment (1e-4 apart
    # on AVX2 machines), so compact and plain weights gave different proposals until aligned
    from cliprnn.clip_backend import ClipBackend

    model = ClipBackend.load(fp16_clip_dir, compact_weights=compact).model
    tensors = [*model.parameters(), *model.buffers()]
    assert len(tensors) > 70
    assert [t.data_ptr() % 64 for t in tensors] == [0] * len(tensors)


def test_align_weights_copies_only_misaligned_tensors() -> None:
    model = torch.nn.Linear(3, 5)
    storage = torch.zeros(16)
    model.weight.data = storage[1:].view(5, 3)  # 4 bytes past an aligned start
    bias = model.bias.data_ptr()
    assert align_weights(model) == 1
    assert model.weight.data_ptr() % 64 == 0 and model.bias.data_ptr() == bias
    assert torch.equal(model.weight, storage[1:].view(5, 3))


def test_compact_weights_leave_weights_that_are_not_exact_in_fp32() -> None:
    model = random_clip_model(TINY, seed=3).requires_grad_(False)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = model.vision_model(pixel_values=pixels).last_hidden_state
    compact_weights(model)
    fc1 = model.vision_model.encoder.layers[0].mlp.fc1
    norm = model.vision_model.encoder.layers[0].layer_norm1
    # random fp32 values: kept as they are; the zero-initialised bias is exact in fp16
    assert not parametrize.is_parametrized(fc1, "weight")
    assert fc1.weight.dtype == torch.float32
    assert fc1.parametrizations.bias.original0.dtype == torch.float16
    # LayerNorm starts at weight 1, bias 0: exact in fp16, so held in 16 bits
    assert norm.parametrizations.weight.original0.dtype == torch.float16
    assert norm.parametrizations.bias.original0.dtype == torch.float16
    assert torch.equal(model.vision_model(pixel_values=pixels).last_hidden_state, before)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, -0.5, 2.0**-24, 65504.0], torch.float16),  # smallest subnormal, largest finite
        ([1.0 + 2.0**-10, 0.0], torch.float16),  # 10 mantissa bits
        ([2.0**20, 1.0], torch.bfloat16),  # beyond fp16's range, exact in bf16's 8 bits
        ([1.0 + 2.0**-11], None),  # needs 11 mantissa bits
        ([1.0 / 3.0], None),
    ],
)
def test_exact_storage_dtype(values: list[float], expected: torch.dtype | None) -> None:
    assert exact_storage_dtype(torch.tensor(values, dtype=torch.float32)) == expected


def test_exact_storage_dtype_only_shrinks_fp32() -> None:
    assert exact_storage_dtype(torch.ones(3, dtype=torch.float64)) is None
    assert exact_storage_dtype(torch.ones(3, dtype=torch.float16)) is None


def _count_upcasts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"n": 0}
    forward = _Upcast.forward

    def counting(self: _Upcast, stored: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return forward(self, stored)

    monkeypatch.setattr(_Upcast, "forward", counting)
    return calls


def _compact_tensors(module: torch.nn.Module) -> int:
    return sum(1 for name, _ in module.named_parameters() if ".parametrizations." in f".{name}")


def test_a_batch_converts_each_weight_once(fp16_clip_dir, monkeypatch) -> None:
    from cliprnn.clip_backend import ClipBackend

    backend = ClipBackend.load(fp16_clip_dir)
    model = backend.model
    calls = _count_upcasts(monkeypatch)
    backend.encode_text(["a cat", "a dog", "a photo of a boat", "tree", "car"])
    text_tensors = _compact_tensors(model.text_model) + _compact_tensors(model.text_projection)
    assert calls["n"] == text_tensors  # five texts, one pass each, one conversion per weight
    calls["n"] = 0
    backend.image_embeddings(torch.zeros(3, 3, 32, 32), truncated=False)
    vision_tensors = _compact_tensors(model.vision_model) + _compact_tensors(
        model.visual_projection
    )
    assert calls["n"] == vision_tensors  # three images, one conversion per weight
