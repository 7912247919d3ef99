"""The repository as a FiftyOne remote zoo model source, registered offline.

``foz.register_zoo_model_source(URL)`` runs for real; only the GitHub download is replaced, by
a copy of this checkout's source files laid out the way GitHub's zipball extracts (one top
folder). From there FiftyOne itself finds ``manifest.json``, copies the source under
``fo.config.model_zoo_dir`` (a temporary folder here), imports the root ``__init__.py`` and
calls its ``download_model`` / ``load_model``: the same code path as a real remote source.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import fiftyone as fo
import fiftyone.zoo as foz
import fiftyone.zoo.models as fozm
import numpy as np
import pytest

from cliprnn.config import CaRConfig
from cliprnn.errors import ConfigError, QueryError
from cliprnn.fiftyone import CaRModel, segment_collection
from cliprnn.fiftyone import zoo as car_zoo

pytestmark = pytest.mark.fiftyone

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_URL = "https://github.com/cliprnn/cliprnn"
NAMES = ["clip-as-rnn-fast", "clip-as-rnn-mini", "clip-as-rnn-voc"]
SOURCE_NAME = "cliprnn/clip-as-rnn"
# Shapes the miniature CLIP knows and the generated scenes contain.
QUERIES = ["yellow star", "striped square", "dotted circle", "green cross"]
# What a GitHub snapshot of the repository holds that the zoo route touches.
SNAPSHOT = ("manifest.json", "__init__.py", "fiftyone.yml", "requirements.txt", "operators")


class _OfflineGitHubRepository:
    """Stands in for ``fiftyone.utils.github.GitHubRepository``: downloads this checkout."""

    def __init__(self, url_or_gh_repo: str, **kwargs) -> None:
        self.url = url_or_gh_repo

    def download(self, outdir: str) -> None:
        top = Path(outdir) / "cliprnn-cliprnn-0123abc"
        top.mkdir()
        for name in SNAPSHOT:
            src = REPO_ROOT / name
            if src.is_dir():
                shutil.copytree(src, top / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, top / name)


@pytest.fixture
def zoo_dir(tmp_path: Path):
    """A private model zoo folder with this repository registered as a remote source."""
    zoo = tmp_path / "zoo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fo.config, "model_zoo_dir", str(zoo))
        mp.setattr(fozm, "GitHubRepository", _OfflineGitHubRepository)
        foz.register_zoo_model_source(REPO_URL)
        yield zoo
        fozm._MODELS.clear()  # weak cache of loaded zoo models, keyed by name and kwargs
        for name in [m for m in sys.modules if m.startswith("cliprnn.clip-as-rnn")]:
            del sys.modules[name]
    fozm._invalidate_zoo_models_manifest()


def _masks(ds: fo.Dataset, field: str) -> dict[str, np.ndarray]:
    return {s.id: s[field].get_mask() for s in ds.select_fields(field)}


# ----------------------------------------------------------------------------- manifest
def test_manifest_lists_the_three_models() -> None:
    raw = json.loads((REPO_ROOT / "manifest.json").read_text())
    assert raw["name"] == SOURCE_NAME and raw["url"] == REPO_URL
    manifest = fozm.ZooModelsManifest.from_json(str(REPO_ROOT / "manifest.json"))
    assert sorted(m.name for m in manifest) == NAMES
    assert {m.base_name: car_zoo.preset_of(m.base_name) for m in manifest} == car_zoo.ZOO_MODELS
    plugin_url = next(
        line.split(":", 1)[1].strip()
        for line in (REPO_ROOT / "fiftyone.yml").read_text().splitlines()
        if line.startswith("url:")
    )
    for model in manifest:
        assert model.base_filename == model.base_name + ".json"  # a file beside __init__.py
        assert model.source == plugin_url == REPO_URL
        assert model.license == "Apache-2.0" and model.description
        assert {"segmentation", "zero-shot", "torch"} <= set(model.tags)
        assert model.requirements.packages == ["cliprnn @ git+https://github.com/cliprnn/cliprnn"]
        assert model.default_deployment_config_dict is None  # loaded by load_model()


def test_registered_source_is_listed_and_laid_out_like_a_download(zoo_dir: Path) -> None:
    assert REPO_URL in foz.list_zoo_model_sources()
    assert foz.list_zoo_models(source=REPO_URL) == NAMES
    assert set(NAMES) <= set(foz.list_zoo_models(tags="segmentation"))
    copy = zoo_dir / "cliprnn" / "clip-as-rnn"
    assert json.loads((copy / "manifest.json").read_text())["url"] == REPO_URL
    assert (copy / "__init__.py").read_text() == (REPO_ROOT / "__init__.py").read_text()
    model = foz.get_zoo_model("clip-as-rnn-mini")
    assert isinstance(model, fozm.RemoteZooModel)
    assert not foz.is_zoo_model_downloaded("clip-as-rnn-mini")


def test_download_writes_a_marker_file_per_model(zoo_dir: Path) -> None:
    for name, preset in car_zoo.ZOO_MODELS.items():
        _, path = foz.download_zoo_model(name)
        path = Path(path)
        assert path == zoo_dir / "cliprnn" / "clip-as-rnn" / f"{name}.json"
        assert foz.is_zoo_model_downloaded(name) and foz.find_zoo_model(name) == str(path)
        record = json.loads(path.read_text())
        cfg = CaRConfig.preset(preset)
        assert record["model"] == name and record["preset"] == preset
        assert record["proposal_model"] == cfg.proposal_model
        assert record["classifier_model"] == cfg.classifier_model
        assert ("bundled" in record["weights"]) == (preset == "mini")
    assert sorted(foz.list_downloaded_zoo_models()) == NAMES


# ----------------------------------------------------------------------------- loading
def test_zoo_mini_model_applies_like_segment_collection(zoo_dir: Path, make_dataset) -> None:
    model = foz.load_zoo_model("clip-as-rnn-mini", classes=QUERIES)
    assert isinstance(model, CaRModel)
    assert model.config == CaRConfig.preset("mini") and model.queries == QUERIES
    assert foz.is_zoo_model_downloaded("clip-as-rnn-mini")  # load_zoo_model downloaded it
    ds = make_dataset(4)
    ds.apply_model(model, label_field="car")
    model.set_mask_targets(ds, "car")
    segment_collection(ds, QUERIES, label_field="lib", config="mini", progress=False)
    assert ds.mask_targets["car"] == ds.mask_targets["lib"] == dict(enumerate(QUERIES, 1))
    got, want = _masks(ds, "car"), _masks(ds, "lib")
    assert got.keys() == want.keys()
    for sid, mask in want.items():
        assert got[sid].dtype == mask.dtype == np.uint8
        np.testing.assert_array_equal(got[sid], mask)
    assert any(m.any() for m in want.values())  # the comparison is not all background
    # the source URL plus a model name reaches the same model
    same = foz.load_zoo_model(REPO_URL, model_name="clip-as-rnn-mini", classes=QUERIES)
    assert isinstance(same, CaRModel) and same.config == model.config


def test_paper_presets_load_without_touching_the_hub(zoo_dir: Path) -> None:
    """voc and fast build their CaRModel at once; the CLIP weights load only when it runs."""
    for name, preset in (("clip-as-rnn-voc", "voc"), ("clip-as-rnn-fast", "fast")):
        model = foz.load_zoo_model(name, classes="cat", output="detections", crf=False)
        assert isinstance(model, CaRModel) and model._car is None
        assert model.config == CaRConfig.preset(preset, crf=False)
        assert model.queries == ["cat"] and model.output == "detections"
    model = foz.load_zoo_model("clip-as-rnn-voc", queries=["cat", "dog"], values={"dog": 7})
    assert model.mask_targets == {1: "cat", 7: "dog"}


def test_bad_name_and_missing_classes_give_clear_errors(zoo_dir: Path) -> None:
    with pytest.raises(ValueError, match="clip-as-rnn-nope' not found in the zoo"):
        foz.load_zoo_model("clip-as-rnn-nope", classes=QUERIES)
    with pytest.raises(ConfigError, match=r"unknown CLIP as RNN zoo model .*clip-as-rnn-mini"):
        car_zoo.load_model("clip-as-rnn-nope", None, classes=QUERIES)
    with pytest.raises(ConfigError, match="unknown CLIP as RNN zoo model"):
        car_zoo.download_model("nope", zoo_dir / "nope.json")
    for kwargs in ({}, {"classes": []}, {"classes": None}):
        with pytest.raises(QueryError, match=r"classes=\['cat', 'dog'\]"):
            foz.load_zoo_model("clip-as-rnn-mini", **kwargs)
    with pytest.raises(ConfigError, match="not both"):
        foz.load_zoo_model("clip-as-rnn-mini", classes=QUERIES, queries=QUERIES)
    with pytest.raises(ConfigError, match="not_a_field"):
        foz.load_zoo_model("clip-as-rnn-mini", classes=QUERIES, not_a_field=1)
    with pytest.raises(ConfigError, match="output"):
        foz.load_zoo_model("clip-as-rnn-mini", classes=QUERIES, output="masks")


def test_zoo_import_of_the_root_module_keeps_the_plugin_intact(zoo_dir: Path) -> None:
    """FiftyOne imports the copied ``__init__.py`` as a package of its own: the library stays
    the installed one and ``register``'s relative imports resolve inside the copy."""
    import cliprnn

    copy = zoo_dir / "cliprnn" / "clip-as-rnn"
    module = fozm._import_zoo_module(str(copy))
    assert module.__name__ == "cliprnn.clip-as-rnn"
    assert sys.modules["cliprnn"] is cliprnn
    assert callable(module.download_model) and callable(module.load_model)

    class _Plugin:
        def __init__(self) -> None:
            self.registered: list[str] = []

        def register(self, cls) -> None:
            self.registered.append(cls.__module__ + "." + cls.__name__)

    plugin = _Plugin()
    module.register(plugin)
    assert [r.rsplit(".", 1)[1] for r in plugin.registered] == [
        "Segment",
        "ApplyMaskEdits",
        "EditMaskClasses",
        "SegmentShard",
        "ResumeRun",
        "ExemplarSets",
        "CheckField",
        "ScheduledRuns",
        "Calibrate",
    ]
    assert all(r.startswith("cliprnn.clip-as-rnn.operators.") for r in plugin.registered)


def test_download_without_the_library_leaves_the_check_to_fiftyone(
    zoo_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """FiftyOne downloads before it checks requirements: without cliprnn the hook only warns,
    so ``load_zoo_model(..., install_requirements=True)`` can install the library next."""
    module = fozm._import_zoo_module(str(zoo_dir / "cliprnn" / "clip-as-rnn"))
    monkeypatch.setitem(sys.modules, "cliprnn", None)  # find_spec("cliprnn") -> None
    marker = zoo_dir / "clip-as-rnn-voc.json"
    with caplog.at_level(logging.WARNING):
        module.download_model("clip-as-rnn-voc", str(marker))
    assert not marker.exists()
    assert "needs the cliprnn library: pip install" in caplog.text
