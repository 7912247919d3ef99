"""Property-based tests: for any image size/mode and any query list, CaR.segment either returns
a well-formed result or raises one of the documented errors — never anything else."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cliprnn import CaR, CaRConfig, CaRError, QueryError

MODES = ["RGB", "L", "RGBA", "P", "I;16", "CMYK", "LA", "1"]

query_text = st.one_of(
    st.sampled_from(["cat", "dog", " cat ", "", "   ", "sky", "ein Hund", "猫", "tree"]),
    st.text(min_size=0, max_size=12),
)


@pytest.fixture(scope="module")
def car(tiny_clip_dir) -> CaR:
    config = CaRConfig.preset(
        "voc", proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir),
        device="cpu", max_image_side=96, crf_iterations=2,
    )  # fmt: skip
    return CaR(config).load()


def _image(mode: str, h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "P":
        return rgb.quantize(8)
    return rgb.convert(mode)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mode=st.sampled_from(MODES),
    h=st.integers(1, 120),
    w=st.integers(1, 120),
    seed=st.integers(0, 2**16),
    queries=st.lists(query_text, min_size=0, max_size=5),
    as_png=st.booleans(),
)
def test_segment_returns_a_valid_result_or_a_documented_error(
    car, mode, h, w, seed, queries, as_png
):
    image = _image(mode, h, w, seed)
    if as_png:
        buf = io.BytesIO()
        image.save(buf, format="PNG" if mode != "CMYK" else "TIFF")
        buf.seek(0)
        image = Image.open(buf)
    try:
        result = car.segment(image, queries)
    except QueryError:
        assert not [q for q in queries if q.strip()]  # only an empty query list may be refused
        return
    except CaRError as exc:  # pragma: no cover - any other documented error must name its cause
        pytest.fail(f"unexpected documented error for a valid image: {exc}")
    k = len(result.queries)
    assert result.label_map.shape == (h, w)
    assert result.label_map.min() >= 0 and result.label_map.max() <= k
    assert result.masks.shape == (k, h, w)
    assert result.scores.shape == (k,)
    assert set(result.kept) <= set(result.queries)
    assert result.steps >= 1
    assert len(set(result.queries)) == k  # normalised: no duplicates
    assert all(q == q.strip() and q for q in result.queries)
