"""What CaR.segment survives (issue 6, engine half): bad files, odd image modes and sizes,
messy queries, and bad parameters, each with its documented outcome (README: "What it survives")."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from cliprnn import CaR, CaRConfig
from cliprnn.car import _resize_labels, set_forced_schedule
from cliprnn.errors import ConfigError, ImageError, ModelLoadError, QueryError

REPO = Path(__file__).resolve().parents[1]


def _config(model: Path, **kw: object) -> CaRConfig:
    base = dict(
        proposal_model=str(model), classifier_model=str(model), device="cpu", crf_iterations=2,
        max_image_side=96,
    )  # fmt: skip
    return CaRConfig.preset("voc", **{**base, **kw})


@pytest.fixture(scope="module")
def car(tiny_clip_dir: Path) -> Iterator[CaR]:
    engine = CaR(_config(tiny_clip_dir)).load()
    yield engine
    set_forced_schedule(engine, None)


def _scene(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs (a JPEG-friendly test image)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.label_map, b.label_map)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.kept == b.kept


# ------------------------------------------------------------------ unreadable files


def _bad_file(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / {"missing": "nope.jpg", "empty": "empty.png", "text": "notes.jpg",
                       "jpeg": "cut.jpg", "png": "cut.png", "folder": "dir.png"}[kind]  # fmt: skip
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n" * 20)
    elif kind in ("jpeg", "png"):
        full = tmp_path / f"full.{kind}"
        Image.fromarray(_scene(64, 64)).save(full, format=kind.upper())
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "jpeg", "png", "folder"])
def test_unreadable_file_raises_image_error_naming_it(car: CaR, tmp_path: Path, kind: str) -> None:
    path = _bad_file(kind, tmp_path)
    with pytest.raises(ImageError) as info:
        car.segment(path, ["cat"])
    assert str(path) in str(info.value)
    car.segment(_scene(), ["cat"])  # the engine still works afterwards


def test_decompression_bomb_is_an_image_error(
    car: CaR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(_scene(40, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 px > 2 × limit: Pillow refuses
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS") as info:
        car.segment(path, ["cat"])
    assert str(path) in str(info.value)


# ------------------------------------------------------------------ image modes


def _mode_case(mode: str, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A file in ``mode`` and the RGB array the engine should see for it."""
    rgb = _scene()
    path = tmp_path / f"{mode.replace(';', '_')}.png"
    if mode == "L":
        gray = rgb[..., 1]
        Image.fromarray(gray).save(path)
        return path, np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        pal = Image.fromarray(rgb).quantize(16)
        pal.save(path)
        return path, np.asarray(pal.convert("RGB"))
    if mode == "RGBA":
        alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
        Image.fromarray(np.dstack([rgb, alpha])).save(path)
        return path, rgb  # alpha is dropped: the colour channels as stored
    if mode == "I;16":
        deep = rgb[..., 0].astype(np.uint16) * 257 + 3  # uses all 16 bits
        Image.fromarray(deep).save(path)
        assert Image.open(path).mode.startswith("I")
        gray = (deep >> 8).astype(np.uint8)
        return path, np.repeat(gray[..., None], 3, axis=2)
    if mode == "CMYK":
        path = path.with_suffix(".jpg")
        Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
        with Image.open(path) as im:
            assert im.mode == "CMYK"
            return path, np.asarray(im.convert("RGB"))
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16", "CMYK"])
def test_image_modes_segment_like_their_rgb_view(car: CaR, tmp_path: Path, mode: str) -> None:
    path, expected_rgb = _mode_case(mode, tmp_path)
    result = car.segment(path, ["cat", "dog", "sky"])
    assert result.label_map.shape == expected_rgb.shape[:2]
    _same(result, car.segment(expected_rgb, ["cat", "dog", "sky"]))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_image_is_segmented_as_displayed(
    car: CaR, tmp_path: Path, orientation: int
) -> None:
    displayed = _scene(24, 40, seed=5) // 3
    displayed[:8, :8] = 255  # bright square in the displayed top-left corner
    # store the pixels so that applying the tag gives back `displayed`
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
            8: Image.Transpose.ROTATE_270}[orientation]  # fmt: skip
    stored = Image.fromarray(displayed).transpose(undo)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rot{orientation}.jpg"
    stored.save(path, quality=95, exif=exif)
    with Image.open(path) as im:
        assert im.size == stored.size and im.getexif().get(0x0112) == orientation
        upright = ImageOps.exif_transpose(im)
    seen = np.asarray(upright)
    assert seen.shape == (24, 40, 3)
    assert seen[:8, :8].mean() > 200 and seen[-8:, -8:].mean() < 120  # square where displayed

    result = car.segment(path, ["cat", "dog", "sky"])
    assert result.label_map.shape == (24, 40)
    assert result.masks.shape == (3, 24, 40)
    _same(result, car.segment(upright, ["cat", "dog", "sky"]))


# ------------------------------------------------------------------ image sizes


@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (1, 60), (3, 2)])
def test_images_smaller_than_a_patch(car: CaR, hw: tuple[int, int]) -> None:
    result = car.segment(_scene(*hw, seed=2), ["cat", "dog"])
    assert result.label_map.shape == hw
    assert result.masks.shape == (2, *hw)
    assert result.label_map.min() >= 0 and result.label_map.max() <= 2


_HUGE_SCRIPT = """
import json, resource, sys
import numpy as np
from cliprnn import CaR, CaRConfig
model, path = sys.argv[1], sys.argv[2]
config = CaRConfig.preset("voc", proposal_model=model, classifier_model=model, device="cpu",
                          crf_iterations=2, max_image_side=64, max_image_pixels=None)
car = CaR(config).load()
car.segment(np.zeros((8, 8, 3), np.uint8), ["cat", "dog"])  # warm-up: code paths, caches
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = car.segment(path, ["cat", "dog"], trace=True)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
values = np.unique(result.label_map)
print(json.dumps(dict(
    shape=list(result.label_map.shape), masks=list(result.masks.shape),
    work=list(result.trace[0].proposals.shape), values=[int(v) for v in values],
    growth_mb=(after - before) / 1024,
)))
"""


@pytest.mark.slow
def test_huge_image_is_capped_for_inference_and_returned_at_full_size(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    h, w = 9000, 12000  # 108 Mpx: over the default pixel budget, which the script lifts
    path = tmp_path / "huge.png"
    im = Image.new("RGB", (w, h), (40, 90, 160))
    ImageDraw.Draw(im).rectangle((0, 0, w // 4, h // 4), fill=(250, 250, 250))
    im.save(path, compress_level=1)
    del im
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _HUGE_SCRIPT, str(tiny_clip_dir), str(path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [h, w]
    assert out["masks"] == [2, h, w]
    assert out["work"][1:] == [48, 64]  # inference at max_image_side = 64: 9000×12000 -> 48×64
    assert set(out["values"]) <= {0, 1, 2}
    # What must scale with the pixel count: decoding (~6 B/px: Pillow's buffer and the array)
    # and the full-size outputs (int32 labels 4 B/px, 1 B/px per mask, 4 B/px per kept query's
    # soft mask). With Q = 2 queries that is at most 4 + 5·Q = 14 B/px; 2 B/px of slack. The
    # uncapped CLIP-ES affinity alone would need ~10^13 B (side to the fourth power).
    pixels, n_queries = h * w, 2
    assert out["growth_mb"] < (4 + 5 * n_queries + 2) * pixels / 2**20, out  # ~1.6 GB


def test_label_values_above_uint8_and_uint16_survive_resizing() -> None:
    labels = np.array([[300, 70000]], np.int32)
    np.testing.assert_array_equal(
        _resize_labels(labels, (2, 4)), [[300, 300, 70000, 70000], [300, 300, 70000, 70000]]
    )


# ------------------------------------------------------------------ queries


@pytest.mark.parametrize("queries", [[], None, ["", "  ", "\t"], "cat", ["cat", 3]])
def test_unusable_query_lists_raise_query_error(car: CaR, queries) -> None:
    with pytest.raises(QueryError):
        car.segment(_scene(), queries)


def test_empty_duplicate_and_whitespace_queries_are_tidied(car: CaR) -> None:
    result = car.segment(_scene(), ["  cat\t", "", "dog\n", "cat", " "])
    assert result.queries == ["cat", "dog"]
    assert any("duplicate query 'cat'" in w for w in result.warnings)
    assert any("empty queries ignored" in w for w in result.warnings)
    _same(result, car.segment(_scene(), ["cat", "dog"]))


def test_non_ascii_queries(car: CaR) -> None:
    queries = ["猫", "café au lait", "ein Hund", "🐶"]
    result = car.segment(_scene(), queries)
    assert result.queries == queries
    assert result.label_map.max() <= 4 and set(result.kept) <= set(queries)


def test_query_over_77_tokens_warns_and_still_segments(car: CaR) -> None:
    long_query = " ".join(["red"] * 100)  # 100 word tokens + start and end markers
    result = car.segment(_scene(), [long_query, "dog"])
    assert result.queries == [long_query, "dog"]
    assert any("102 tokens" in w and "77" in w for w in result.warnings)
    assert result.label_map.shape == (24, 40)


def test_query_equal_to_a_background_word_leaves_the_background(car: CaR) -> None:
    n_bg = len(car.config.background_words)
    plain = car.segment(_scene(), ["cat", "dog"], trace=True)
    clash = car.segment(_scene(), ["Sky", "dog"], trace=True)
    assert any("background word 'sky' removed" in w for w in clash.warnings)
    # the CAM softmax runs over live queries + background words (spec 1.3)
    assert len(plain.trace[0].extras["cam_probs"]) == 2 + n_bg
    assert len(clash.trace[0].extras["cam_probs"]) == 2 + n_bg - 1


def test_more_than_255_queries(tiny_clip_dir: Path) -> None:
    engine = CaR(_config(tiny_clip_dir, templates=("a photo of a {}.",), max_image_side=32))
    queries = [f"thing number {i}" for i in range(300)]
    last = len(queries) - 1

    def score(prompted, live, *, trace=False):
        # scripted classifier: only the last query passes θ (checks label storage, not CLIP)
        diag = [0.9 if q == queries[last] else 0.1 for q in live]
        return np.diag(np.float32(diag)), {}

    engine.load()
    engine.classifier.score = score
    result = engine.segment(_scene(48, 48), queries)
    assert len(result.queries) == 300 and result.mask_targets[300] == queries[last]
    assert result.kept == [queries[last]]
    assert result.label_map.dtype == np.int32 and result.label_map.shape == (48, 48)
    assert 300 in set(np.unique(result.label_map)) <= {0, 300}


# ------------------------------------------------------------------ bad parameters


@pytest.mark.parametrize("name", ["confidence_threshold", "mask_threshold", "clipes_threshold"])
@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, "0.5"])
def test_thresholds_outside_unit_interval(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        CaRConfig(**{name: value})
    with pytest.raises(ConfigError, match=name):
        CaR("voc", **{name: value})


def test_unknown_prompt_preset_and_parameter() -> None:
    with pytest.raises(ConfigError, match="sparkle"):
        CaRConfig(visual_prompts=("circle", "sparkle"))
    with pytest.raises(ConfigError, match="glitter"):
        CaRConfig.preset("voc", stuff_visual_prompts=("glitter",))
    with pytest.raises(ConfigError, match="pascal"):
        CaRConfig.preset("pascal")
    with pytest.raises(ConfigError, match="pascal"):
        CaR("pascal")
    with pytest.raises(ConfigError, match="theta"):
        CaR("voc", theta=0.5)


@pytest.fixture
def no_image_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(image):
        raise AssertionError(f"the image {image} was read before the models were checked")

    monkeypatch.setattr("cliprnn.imageio.load_image", refuse)


def test_model_not_loadable_offline_is_reported_before_the_image(
    no_image_reads, tmp_path: Path
) -> None:
    name = "openai/clip-vit-base-patch16-not-cached"
    with pytest.raises(ModelLoadError, match="proposal") as info:
        CaR(CaRConfig(proposal_model=name, device="cpu")).segment(tmp_path / "x.jpg", ["cat"])
    assert name in str(info.value)


@pytest.mark.parametrize("kind", ["empty folder", "other model", "missing folder"])
def test_folder_that_is_not_a_clip_checkpoint(
    no_image_reads, tiny_clip_dir: Path, tmp_path: Path, kind: str
) -> None:
    folder = tmp_path / "model"
    if kind != "missing folder":
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"\0" * 16)
    if kind == "other model":
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    config = _config(tiny_clip_dir, classifier_model=str(folder))
    with pytest.raises(ModelLoadError, match="classifier") as info:
        CaR(config).segment(tmp_path / "x.jpg", ["cat"])
    assert str(folder) in str(info.value)
