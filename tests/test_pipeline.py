"""segment_stream: CaR.prepare in the caller's thread, CaR.finish (the CRF) on workers.

Results come back in input order and equal ``CaR.segment`` image by image; an exception for
one item is handed back in its place without stopping the others.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from cliprnn import CaR, CaRConfig
from cliprnn.dev.scenes import generate_scene
from cliprnn.errors import ImageError
from cliprnn.pipeline import CrfProcessPool, segment_stream
from cliprnn.postprocess import dense_crf

QUERIES = ["cat", "dog", "car", "tree"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    # one larger than max_image_side: the label map is resized back in finish()
    sizes = [(40, 48), (36, 44), (64, 80), (40, 40), (44, 36)]
    return [generate_scene(10 + i, size=hw).image for i, hw in enumerate(sizes)]


@pytest.fixture(scope="module")
def sequential(tiny_car: CaR, images: list[np.ndarray]) -> list:
    return [tiny_car.segment(image, QUERIES) for image in images]


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.label_map, b.label_map)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.soft_masks, b.soft_masks)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert (a.queries, a.kept, a.steps, a.warnings) == (b.queries, b.kept, b.steps, b.warnings)


def test_segment_is_prepare_then_finish(tiny_car: CaR, images, sequential) -> None:
    prepared = tiny_car.prepare(images[2], QUERIES)
    assert prepared.image.shape[:2] == (38, 48) and prepared.full_hw == (64, 80)
    box: list = []
    worker = threading.Thread(target=lambda: box.append(tiny_car.finish(prepared)))
    worker.start()
    worker.join()
    _same(box[0], sequential[2])
    assert {"crf", "labels", "classifier"} <= set(box[0].timings)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_yields_in_order_identical_to_sequential(
    tiny_car, images, sequential, workers
) -> None:
    items = [(f"img{i}", image) for i, image in enumerate(images)]
    out = list(segment_stream(tiny_car, items, QUERIES, crf_workers=workers))
    assert [key for key, _ in out] == [key for key, _ in items]
    for (_, result), expected in zip(out, sequential, strict=True):
        _same(result, expected)


def test_an_exception_for_one_item_is_yielded_in_its_place(tiny_car, images, sequential) -> None:
    items = [
        ("a", images[0]),
        ("unreadable", OSError("truncated file")),  # as prefetch hands over a failed load
        ("b", images[1]),
        ("missing", "/no/such/image.png"),  # fails in prepare
        ("c", images[2]),
        ("no queries", images[3]),  # fails in prepare (QueryError)
        ("d", images[4]),
    ]

    def queries_for(key: str) -> list[str]:
        return [] if key == "no queries" else QUERIES

    out = list(segment_stream(tiny_car, items, queries_for, crf_workers=2))
    assert [key for key, _ in out] == [key for key, _ in items]
    values = dict(out)
    assert isinstance(values["unreadable"], OSError)
    assert isinstance(values["missing"], ImageError)
    assert isinstance(values["no queries"], Exception)
    for key, expected in zip("abcd", (0, 1, 2, 4), strict=True):
        _same(values[key], sequential[expected])


def test_post_runs_on_a_worker_and_its_errors_stay_with_their_item(tiny_car, images) -> None:
    threads: set[str] = set()

    def post(key: int, result):
        threads.add(threading.current_thread().name)
        if key == 1:
            raise ValueError("cannot write labels for 1")
        return key, int(result.label_map.max())

    items = list(enumerate(images[:4]))
    out = list(
        segment_stream(tiny_car, items, QUERIES, crf_workers=1, post=post, crf_processes=False)
    )
    assert [key for key, _ in out] == [0, 1, 2, 3]
    assert isinstance(out[1][1], ValueError)
    assert [value[0] for key, value in out if key != 1] == [0, 2, 3]
    assert threads and all(name.startswith("cliprnn-crf") for name in threads)


def test_closing_early_cancels_the_rest(tiny_car, images) -> None:
    started: list[int] = []

    def items():
        for i in range(50):
            started.append(i)
            yield i, images[i % len(images)]

    stream = segment_stream(tiny_car, items(), QUERIES, crf_workers=1, crf_processes=False)
    key, _ = next(stream)
    stream.close()
    assert key == 0 and len(started) <= 3  # never more than workers + 1 images in flight


def test_crf_in_a_worker_process_equals_in_thread() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    probs = rng.random((3, 30, 40)).astype(np.float32)
    config = CaRConfig()
    pool = CrfProcessPool(1)
    try:
        np.testing.assert_array_equal(pool(image, probs, config), dense_crf(image, probs, config))
    finally:
        pool.close()


def test_bad_worker_counts_are_rejected(tiny_car) -> None:
    with pytest.raises(ValueError, match="crf_workers"):
        list(segment_stream(tiny_car, [], QUERIES, crf_workers=-1))
    with pytest.raises(TypeError):
        list(segment_stream(tiny_car, [(0, None)], "cat", crf_workers=0))
    from cliprnn.errors import ConfigError

    with pytest.raises(ConfigError, match="crf_workers"):
        CaRConfig(crf_workers=-2)


def test_crf_workers_do_not_rerun_an_unguarded_main_script(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "job.py"  # no `if __name__ == "__main__"` guard, as scripts often have
    script.write_text(
        "import numpy as np\n"
        "from cliprnn import CaRConfig\n"
        "from cliprnn.pipeline import CrfProcessPool\n"
        "print('job ran')\n"
        "pool = CrfProcessPool(2)\n"
        "rng = np.random.default_rng(0)\n"
        "image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)\n"
        "probs = rng.random((2, 20, 24)).astype(np.float32)\n"
        "print('shape', pool(image, probs, CaRConfig()).shape)\n"
        "pool.close()\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.splitlines() == ["job ran", "shape (2, 20, 24)"]
    assert "unavailable" not in out.stderr
