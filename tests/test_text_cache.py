"""Text embeddings: one fixed pass per query's templates, and the on-disk cache.

A query's templates are embedded as one group: within 1e-6 of one string per pass, and the
same bits whatever else is embedded. The disk cache (``cliprnn.text_cache``) gives back exactly
what was computed, recomputes entries that are damaged, survives concurrent writers, and keys
every entry by the text tower's weights.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import torch

from cliprnn import CaR, CaRConfig
from cliprnn.clip_backend import ClipBackend
from cliprnn.config import SEMANTIC_TEMPLATES
from cliprnn.text_cache import TextCache, entry_key, resolve_text_cache_dir

QUERIES = ["cat", "dog", "person with clothes,people,human", "tvmonitor screen"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _backend(model: Path, cache: Path | None = None, **kwargs) -> ClipBackend:
    return ClipBackend.load(model, text_cache_dir=cache, **kwargs)


def _count_passes(backend: ClipBackend) -> list[int]:
    """Record the batch size of every text forward pass of ``backend``."""
    passes: list[int] = []
    forward = backend._forward_texts

    def counting(texts):
        passes.append(len(texts))
        return forward(texts)

    backend._forward_texts = counting  # type: ignore[method-assign]
    return passes


# ---------------------------------------------------------------- grouped templates
def test_grouped_templates_match_one_string_per_pass(tiny_clip_dir: Path) -> None:
    grouped = _backend(tiny_clip_dir)
    single = _backend(tiny_clip_dir, group_templates=False)
    passes = _count_passes(grouped)
    got = grouped.encode_templates(SEMANTIC_TEMPLATES, QUERIES)
    assert got.shape == (len(QUERIES), len(SEMANTIC_TEMPLATES), grouped.model.config.projection_dim)
    assert passes == [len(SEMANTIC_TEMPLATES)] * len(QUERIES)  # one pass per query
    ref = torch.stack(
        [single.encode_text([t.format(q) for t in SEMANTIC_TEMPLATES]) for q in QUERIES]
    )
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    # and per string, as HF computes it with its own padding
    ids = grouped.tokenizer([SEMANTIC_TEMPLATES[0].format("cat")], return_tensors="pt")
    with torch.no_grad():
        hf = grouped.model.get_text_features(input_ids=ids["input_ids"]).pooler_output
    torch.testing.assert_close(
        got[0, 0], (hf / hf.norm(dim=-1, keepdim=True))[0], atol=1e-5, rtol=0
    )


def test_a_querys_group_does_not_depend_on_the_other_queries(tiny_clip_dir: Path) -> None:
    alone = {q: _backend(tiny_clip_dir).encode_templates(SEMANTIC_TEMPLATES, [q]) for q in QUERIES}
    together = _backend(tiny_clip_dir).encode_templates(SEMANTIC_TEMPLATES, QUERIES[::-1])
    for j, q in enumerate(QUERIES[::-1]):
        assert torch.equal(together[j], alone[q][0])  # the same bits
    # uncached passes give the same bits too
    uncached = _backend(tiny_clip_dir, cache_text=False)
    assert torch.equal(
        uncached.encode_templates(SEMANTIC_TEMPLATES, QUERIES[:1]), alone[QUERIES[0]]
    )


def test_one_template_or_grouping_off_embeds_each_string_alone(tiny_clip_dir: Path) -> None:
    backend = _backend(tiny_clip_dir)
    passes = _count_passes(backend)
    one = backend.encode_templates(["a clean origami {}."], ["sky", "road"])
    assert passes == [1, 1]
    assert torch.equal(
        one[:, 0], backend.encode_text(["a clean origami sky.", "a clean origami road."])
    )
    off = _backend(tiny_clip_dir, group_templates=False)
    passes = _count_passes(off)
    off.encode_templates(SEMANTIC_TEMPLATES[:3], ["sky"])
    assert passes == [1, 1, 1]


# ---------------------------------------------------------------- disk cache
def test_second_backend_reads_every_embedding_from_disk(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    first = _backend(tiny_clip_dir, tmp_path)
    groups = first.encode_templates(SEMANTIC_TEMPLATES, QUERIES)
    singles = first.encode_text(["cat", "a clean origami dog."])
    disk = first.disk_cache()
    assert disk is not None and disk.hits == 0 and disk.writes == len(QUERIES) + 2
    assert len(list(tmp_path.rglob("*.safetensors"))) == len(QUERIES) + 2

    second = _backend(tiny_clip_dir, tmp_path)
    passes = _count_passes(second)
    assert torch.equal(second.encode_templates(SEMANTIC_TEMPLATES, QUERIES), groups)
    assert torch.equal(second.encode_text(["cat", "a clean origami dog."]), singles)
    assert passes == []  # nothing recomputed
    disk2 = second.disk_cache()
    assert disk2 is not None and (disk2.hits, disk2.misses, disk2.writes) == (
        len(QUERIES) + 2,
        0,
        0,
    )


def test_cache_text_off_or_no_folder_touches_no_disk(tiny_clip_dir: Path, tmp_path: Path) -> None:
    off = _backend(tiny_clip_dir, tmp_path, cache_text=False)
    off.encode_templates(SEMANTIC_TEMPLATES[:2], ["cat"])
    assert off.disk_cache() is None and not list(tmp_path.iterdir())
    assert _backend(tiny_clip_dir).disk_cache() is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty", "other_key"])
def test_damaged_entry_is_recomputed_and_rewritten(
    tiny_clip_dir: Path, tmp_path: Path, damage: str
) -> None:
    reference = _backend(tiny_clip_dir, tmp_path).encode_templates(SEMANTIC_TEMPLATES, ["cat"])
    (path,) = tmp_path.rglob("*.safetensors")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 17])
    elif damage == "flip":  # one bit of the last stored float
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid entry written for another key
        TextCache(tmp_path).store("0" * 64, np.ones((15, 64), np.float32))
        other = next(p for p in tmp_path.rglob("*.safetensors") if p != path)
        path.write_bytes(other.read_bytes())
    backend = _backend(tiny_clip_dir, tmp_path)
    passes = _count_passes(backend)
    again = backend.encode_templates(SEMANTIC_TEMPLATES, ["cat"])
    assert torch.equal(again, reference)
    disk = backend.disk_cache()
    assert disk is not None and (disk.corrupt, disk.writes) == (1, 1) and passes == [15]
    # the rewritten entry is whole again
    third = _backend(tiny_clip_dir, tmp_path)
    assert torch.equal(third.encode_templates(SEMANTIC_TEMPLATES, ["cat"]), reference)
    assert third.disk_cache().hits == 1


def test_key_changes_with_the_weights(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from cliprnn.dev.random_clip import save_random_clip

    other = save_random_clip(tmp_path / "other", width=64, layers=2, patch_size=8, image_size=32,
                             seed=1)  # fmt: skip
    a, b = _backend(tiny_clip_dir, tmp_path / "cache"), _backend(other, tmp_path / "cache")
    assert a.weights_hash != b.weights_hash and len(a.weights_hash) == 64
    assert a.weights_hash == _backend(tiny_clip_dir).weights_hash  # stable across loads
    a.encode_templates(SEMANTIC_TEMPLATES, ["cat"])
    b.encode_templates(SEMANTIC_TEMPLATES, ["cat"])
    assert b.disk_cache().hits == 0 and b.disk_cache().writes == 1  # a's entry was not used
    # one changed value of the text tower changes the hash (fp32 weights, to edit them)
    plain = _backend(tiny_clip_dir, compact_weights=False).weights_hash
    assert plain != a.weights_hash  # weights held in 16 bits hash differently
    c = _backend(tiny_clip_dir, compact_weights=False)
    with torch.no_grad():
        c.model.text_model.final_layer_norm.bias[0] += 1.0
    assert c.weights_hash != plain
    # the vision tower is not part of the text cache's key
    d = _backend(tiny_clip_dir, compact_weights=False)
    with torch.no_grad():
        d.model.vision_model.post_layernorm.bias[0] += 1.0
    assert d.weights_hash == plain


def _store_many(directory: str, key: str, times: int) -> int:
    cache = TextCache(directory)
    array = np.arange(15 * 64, dtype=np.float32).reshape(15, 64)
    return sum(cache.store(key, array, ["t"]) for _ in range(times))


def test_concurrent_writers_of_one_key_leave_a_whole_entry(tmp_path: Path) -> None:
    key = entry_key("namespace", ["same group"])
    expected = np.arange(15 * 64, dtype=np.float32).reshape(15, 64)
    reader = TextCache(tmp_path)
    bad: list[object] = []
    stop = threading.Event()

    def read_loop() -> None:
        while not stop.is_set():
            got = reader.load(key, (15, 64))
            if got is not None and not np.array_equal(got, expected):
                bad.append(got)

    readers = [threading.Thread(target=read_loop) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as processes:
            jobs = [processes.submit(_store_many, str(tmp_path), key, 40) for _ in range(2)]
            writers = [threading.Thread(target=_store_many, args=(str(tmp_path), key, 40))
                       for _ in range(2)]  # fmt: skip
            for t in writers:
                t.start()
            for t in writers:
                t.join()
            assert [j.result() for j in jobs] == [40, 40]
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not bad and reader.corrupt == 0
    np.testing.assert_array_equal(reader.load(key, (15, 64)), expected)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.safetensors"]


def test_unwritable_folder_only_warns(tiny_clip_dir: Path, tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    backend = _backend(tiny_clip_dir, blocker / "cache")
    reference = _backend(tiny_clip_dir).encode_templates(SEMANTIC_TEMPLATES[:2], ["cat", "dog"])
    with caplog.at_level("WARNING"):
        got = backend.encode_templates(SEMANTIC_TEMPLATES[:2], ["cat", "dog"])
    assert torch.equal(got, reference)
    assert sum("text embedding cache" in r.message for r in caplog.records) == 1


def test_cache_folder_from_config_value(monkeypatch, tmp_path: Path) -> None:
    assert resolve_text_cache_dir(None) is None and resolve_text_cache_dir("") is None
    assert resolve_text_cache_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("CLIPRNN_CACHE_DIR", str(tmp_path))
    assert resolve_text_cache_dir("auto") == tmp_path / "text"
    monkeypatch.setenv("CLIPRNN_CACHE_DIR", "")
    assert resolve_text_cache_dir("auto") is None
    monkeypatch.delenv("CLIPRNN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_text_cache_dir("auto") == tmp_path / "xdg" / "cliprnn" / "text"
    assert CaRConfig().text_cache_dir == "auto"
    assert CaRConfig(text_cache_dir=tmp_path).text_cache_dir == str(tmp_path)


# ---------------------------------------------------------------- through CaR
def test_a_second_engine_starts_warm_with_the_same_output(tiny_clip_dir: Path, tmp_path: Path):
    from cliprnn.dev.scenes import generate_scene

    image = generate_scene(5, size=(40, 48)).image
    config = CaRConfig.preset(
        "voc", proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir),
        device="cpu", max_image_side=None, confidence_threshold=0.2, text_cache_dir=str(tmp_path),
    )  # fmt: skip
    cold_car = CaR(config)
    cold = cold_car.segment(image, ["cat", "dog", "car"])
    warm_car = CaR(config)
    passes = _count_passes(warm_car.proposal_backend)
    warm = warm_car.segment(image, ["cat", "dog", "car"])
    assert passes == []  # every text embedding came from disk
    np.testing.assert_array_equal(warm.label_map, cold.label_map)
    np.testing.assert_array_equal(warm.scores, cold.scores)
    assert warm.kept == cold.kept
