"""Exemplar queries: validation, embeddings and their cache, and CaR with text + exemplars."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cliprnn.assets import mini_model_paths
from cliprnn.dev.scenes import CLASSES, generate_scene
from cliprnn.errors import ImageError, QueryError
from cliprnn.exemplars import Exemplars, exemplar_embedding, pixel_box, split_queries

shipped = pytest.mark.skipif(
    not all((p / "model.safetensors").exists() for p in mini_model_paths()),
    reason="the trained miniature CLIP is not in cliprnn/assets/mini_clip",
)


def _image(seed: int = 3) -> np.ndarray:
    return generate_scene(seed).image


# ------------------------------------------------------------------ validation


def test_an_empty_set_and_an_empty_name_are_refused() -> None:
    with pytest.raises(QueryError, match="no images"):
        Exemplars("mascot", [])
    with pytest.raises(QueryError, match="non-empty name"):
        Exemplars("  ", [_image()])
    with pytest.raises(QueryError, match="2 boxes for 1 images"):
        Exemplars("mascot", [_image()], boxes=[None, None])


def test_an_unreadable_exemplar_is_named(tmp_path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    ex = Exemplars("mascot", [_image(), str(bad)])
    with pytest.raises(ImageError, match=r"exemplar 1 \(.*broken.png\) of 'mascot'"):
        ex.crops()
    missing = Exemplars("mascot", [str(tmp_path / "gone.jpg")])
    with pytest.raises(ImageError, match=r"gone\.jpg"):
        missing.key()


def test_boxes_outside_the_image_are_refused() -> None:
    image = _image()
    for box in ([0.5, 0.5, 0.6, 0.2], [-0.2, 0.0, 0.5, 0.5], [0.1, 0.1, 0.0, 0.3], [1, 2, 3]):
        with pytest.raises(QueryError, match="exemplar 0"):
            Exemplars("mascot", [image], boxes=[box]).crops()
    # within half a pixel of the border: clipped, not refused
    assert pixel_box([0.0, 0.0, 1.002, 1.0], (128, 128), "x") == (0, 0, 128, 128)


def test_boxes_crop_and_masks_blank_the_outside() -> None:
    image = _image()
    box = [0.25, 0.5, 0.5, 0.25]  # x 32..96, y 64..96 of 128 x 128
    (crop,) = Exemplars("mascot", [image], boxes=[box]).crops()
    np.testing.assert_array_equal(crop, image[64:96, 32:96])
    mask = np.zeros((32, 64), bool)
    mask[:, :32] = True
    (masked,) = Exemplars("mascot", [image], boxes=[box], masks=[mask]).crops()
    np.testing.assert_array_equal(masked[:, :32], image[64:96, 32:64])
    assert (masked[:, 32:] == (122, 116, 104)).all()
    with pytest.raises(QueryError, match="mask is empty"):
        Exemplars("mascot", [image], boxes=[box], masks=[np.zeros((32, 64), bool)]).crops()


def test_names_colliding_with_text_or_each_other_are_refused() -> None:
    a = Exemplars("dog", [_image()])
    with pytest.raises(QueryError, match="name of a text query"):
        split_queries(["cat", "Dog ", a])
    with pytest.raises(QueryError, match="two exemplar queries"):
        split_queries([a, Exemplars("DOG", [_image(4)])])
    names, exemplars = split_queries(["cat", a])
    assert names == ["cat", "dog"] and exemplars == {"dog": a}


def test_spec_round_trip_needs_paths(tmp_path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_image()).save(path)
    mask = np.ones((10, 20), bool)
    ex = Exemplars("mascot", [str(path)], boxes=[[0.1, 0.1, 0.5, 0.5]], masks=[mask])
    back = Exemplars.from_spec(ex.to_spec())
    assert back.key() == ex.key() and back.name == "mascot"
    with pytest.raises(QueryError, match="in-memory image"):
        Exemplars("mascot", [_image()]).to_spec()


def test_the_key_follows_the_pixels_not_the_source(tmp_path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_image()).save(path)
    assert Exemplars("a", [str(path)]).key() == Exemplars("b", [_image()]).key()
    assert Exemplars("a", [_image(3)]).key() != Exemplars("a", [_image(4)]).key()


# ------------------------------------------------------------------ embeddings


@pytest.fixture(scope="module")
def mini_car():
    from cliprnn.car import CaR
    from cliprnn.config import CaRConfig

    if not all((p / "model.safetensors").exists() for p in mini_model_paths()):
        pytest.skip("the trained miniature CLIP is not shipped")
    return CaR(CaRConfig.preset("mini", device="cpu")).load()


def test_embeddings_are_deterministic_normalised_and_cached(mini_car) -> None:
    backend = mini_car.classifier_backend
    ex = Exemplars("mascot", [_image(3), _image(4)], boxes=[None, [0.1, 0.1, 0.6, 0.6]])
    first = exemplar_embedding(backend, ex, "cls", mini_car.config)
    assert first.norm().item() == pytest.approx(1.0, abs=1e-5)
    entries = len(backend.exemplar_cache)
    twin = Exemplars("other name", [_image(3), _image(4)], boxes=[None, [0.1, 0.1, 0.6, 0.6]])
    again = exemplar_embedding(backend, twin, "cls", mini_car.config)
    assert len(backend.exemplar_cache) == entries  # same pixels: the cached entry
    assert again is first
    backend.exemplar_cache.clear()
    recomputed = exemplar_embedding(backend, twin, "cls", mini_car.config)
    assert np.array_equal(recomputed.numpy(), first.numpy())  # bit-identical
    cam = exemplar_embedding(mini_car.proposal_backend, ex, "patch_mean")
    assert cam.shape == first.shape and not np.allclose(cam.numpy(), first.numpy())
    # the mean of the single-exemplar embeddings' directions, not of one of them
    one = exemplar_embedding(backend, Exemplars("one", [_image(3)]), "cls", mini_car.config)
    assert not np.allclose(one.numpy(), first.numpy())


@shipped
def test_text_and_exemplar_queries_mix_in_one_recurrence(mini_car) -> None:
    from cliprnn.car import EXEMPLARS_CLEAN
    from cliprnn.dev.bench.exemplars import class_exemplars

    exemplars = class_exemplars(3)
    scene = generate_scene(10_000_300)
    queries = [c if i % 2 else exemplars[c] for i, c in enumerate(CLASSES)]
    result = mini_car.segment(scene.image, queries)
    assert result.queries == list(CLASSES)  # an exemplar query is named by its set
    assert EXEMPLARS_CLEAN in result.warnings  # the mini preset is faithful: clean twin
    assert set(np.unique(result.label_map)) <= set(range(len(CLASSES) + 1))
    assert result.kept and set(result.kept) <= set(CLASSES)
    # through the halves segment_stream runs on two threads: the same result
    again = mini_car.finish(mini_car.prepare(scene.image, queries))
    np.testing.assert_array_equal(again.label_map, result.label_map)
    text_only = mini_car.segment(scene.image, list(CLASSES))
    assert EXEMPLARS_CLEAN not in text_only.warnings


#: The classes whose exemplar queries the keep test builds (distinct shapes and colours).
KEEP_CLASSES = ("red heart", "blue star", "black ring", "green cross")
KEEP_SCENES = 10  # held-out scenes with the class and as many without it, per class


def _keep_rates(car, k: int = 3, classes: tuple[str, ...] = KEEP_CLASSES):
    """How often class X's exemplar query (among text queries for the other classes) is kept on
    held-out scenes showing X, and on held-out scenes without X, over ``classes``."""
    from cliprnn.dev.bench.exemplars import class_exemplars

    exemplars = class_exemplars(k)
    shown = [0, 0]
    absent = [0, 0]
    for name in classes:
        ci = CLASSES.index(name)
        with_x, without_x = [], []
        seed = 10_000_000
        while len(with_x) < KEEP_SCENES or len(without_x) < KEEP_SCENES:
            scene = generate_scene(seed)
            (with_x if ci in scene.present else without_x).append(scene)
            seed += 7_919
        queries = [exemplars[c] if c == name else c for c in CLASSES]
        for scenes, tally in ((with_x[:KEEP_SCENES], shown), (without_x[:KEEP_SCENES], absent)):
            for scene in scenes:
                tally[0] += name in car.segment(scene.image, queries).kept
                tally[1] += 1
    return shown[0] / shown[1], absent[0] / absent[1]


#: Measured 2026-12-02 (3 exemplars, calibrated mini preset, the 96 px classifier): kept on
#: 0.60 of the 40 scenes showing the class, 0.075 of the 40 without it; randomly initialised
#: models of the shipped shape: 0.25 and 0.20 (the slow test below checks that they fail).
KEEP_BOUNDS = {"shown": 0.5, "ratio": 4.0}


def _keep_failures(shown: float, absent: float) -> list[str]:
    out = []
    if shown < KEEP_BOUNDS["shown"]:
        out.append(f"kept on {shown:.2f} of the scenes showing the class")
    if shown < KEEP_BOUNDS["ratio"] * max(absent, 1 / 18):
        out.append(f"kept {shown:.2f} with the class, {absent:.2f} without")
    return out


@pytest.mark.slow
@shipped
def test_an_exemplar_query_is_kept_where_its_class_is(mini_car) -> None:
    shown, absent = _keep_rates(mini_car)
    assert not _keep_failures(shown, absent), (shown, absent)


@shipped
@pytest.mark.slow
def test_the_keep_bound_fails_for_random_models(tmp_path) -> None:
    from transformers import CLIPConfig, CLIPModel

    from cliprnn.car import CaR
    from cliprnn.config import CaRConfig
    from cliprnn.dev.mini_clip.model import save_clip_folder

    torch = pytest.importorskip("torch")
    folders = []
    for i, path in enumerate(mini_model_paths()):
        torch.manual_seed(i)
        config = CLIPConfig.from_pretrained(path)
        folders.append(save_clip_folder(CLIPModel(config), tmp_path / f"random{i}", path))
    car = CaR(CaRConfig.preset("mini", device="cpu", proposal_model=str(folders[0]),
                               classifier_model=str(folders[1])))  # fmt: skip
    assert _keep_failures(*_keep_rates(car))
