"""CaR in the FiftyOne model zoo: what the repository's remote model source runs.

The repository root holds ``manifest.json`` (the models ``clip-as-rnn-voc``, ``clip-as-rnn-fast``
and ``clip-as-rnn-mini``) and an ``__init__.py`` whose ``download_model`` and ``load_model``
call the functions here. After ``foz.register_zoo_model_source(REPO_URL)`` FiftyOne keeps a copy
of the repository under ``fo.config.model_zoo_dir`` and, for each model, a file at
``<that copy>/<base_filename>`` that marks it as downloaded: :func:`download_model` writes it.

The CLIP weights themselves are not part of that file. The paper presets (``voc``, ``fast``)
fetch them from the Hugging Face hub the first time a model runs, into the hub's own cache;
``mini`` uses the miniature CLIP that ships inside the cliprnn package.

Example::

    import fiftyone.zoo as foz

    foz.register_zoo_model_source("https://github.com/cliprnn/cliprnn")
    model = foz.load_zoo_model("clip-as-rnn-voc", classes=["cat", "dog"])
    dataset.apply_model(model, label_field="cliprnn")
    model.set_mask_targets(dataset, "cliprnn")
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cliprnn.config import CaRConfig
from cliprnn.errors import ConfigError, ModelLoadError, QueryError
from cliprnn.fiftyone.model import CaRModel

REPO_URL = "https://github.com/cliprnn/cliprnn"

#: Zoo model name -> CaRConfig preset.
ZOO_MODELS: dict[str, str] = {
    "clip-as-rnn-voc": "voc",
    "clip-as-rnn-fast": "fast",
    "clip-as-rnn-mini": "mini",
}

#: The ``format`` of the marker file :func:`download_model` writes.
MARKER_FORMAT = "cliprnn-zoo-model/1"


def preset_of(model_name: str) -> str:
    """The CaRConfig preset of a zoo model name (an ``@<version>`` suffix is ignored)."""
    base = str(model_name).rsplit("@", 1)[0]
    if base not in ZOO_MODELS:
        raise ConfigError(
            f"unknown CLIP as RNN zoo model {model_name!r}; choose from {sorted(ZOO_MODELS)}"
        )
    return ZOO_MODELS[base]


def download_model(model_name: str, model_path: str | os.PathLike[str]) -> None:
    """Make the zoo model ``model_name`` available: write its marker file at ``model_path``.

    FiftyOne treats a model as downloaded once a file exists at ``model_path``. This one is a
    small JSON record of the model: its preset, the CLIP models it runs, where their weights
    come from, and the cliprnn version that wrote it. For ``clip-as-rnn-mini`` the bundled
    weights are checked here, so a broken install fails at download rather than at inference.
    """
    from cliprnn import __version__

    base = str(model_name).rsplit("@", 1)[0]
    preset = preset_of(model_name)
    config = CaRConfig.preset(preset)
    models = {"proposal_model": config.proposal_model, "classifier_model": config.classifier_model}
    if preset == "mini":
        missing = [p for p in models.values() if not (Path(p) / "config.json").is_file()]
        if missing:
            raise ModelLoadError(
                f"the miniature CLIP bundled with cliprnn is missing ({missing}); "
                "reinstall the cliprnn package"
            )
        weights = "bundled with the cliprnn package"
    else:
        weights = (
            "Hugging Face hub, downloaded into its cache (~/.cache/huggingface) the first "
            "time the model runs"
        )
    record = {
        "format": MARKER_FORMAT,
        "model": base,
        "preset": preset,
        **models,
        "weights": weights,
        "cliprnn_version": __version__,
    }
    _write_json_atomic(Path(model_path), record)


def load_model(
    model_name: str,
    model_path: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | str | None = None,
    queries: Sequence[str] | str | None = None,
    output: str = "segmentation",
    values: Mapping[str, int] | None = None,
    **config_overrides: Any,
) -> CaRModel:
    """The :class:`CaRModel` of zoo model ``model_name``, for ``collection.apply_model``.

    ``classes`` (FiftyOne's name for a zero-shot model's vocabulary) or ``queries`` are the
    text queries, mask values 1..K in their order unless ``values`` fixes them. ``output`` is
    ``"segmentation"`` or ``"detections"``; other keyword arguments override fields of the
    model's preset (``device="cpu"``, ``crf=False``, ...). ``model_path`` (the marker file) is
    not read: the model name alone fixes the preset.
    """
    preset = preset_of(model_name)
    if classes is not None and queries is not None:
        raise ConfigError("pass the text queries as classes=... or queries=..., not both")
    texts = classes if classes is not None else queries
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        base = str(model_name).rsplit("@", 1)[0]
        raise QueryError(
            f"zoo model {base!r} segments the text queries you give it: "
            f"foz.load_zoo_model({base!r}, classes=['cat', 'dog'])"
        )
    return CaRModel(preset, queries=list(texts), output=output, values=values, **config_overrides)


def _write_json_atomic(path: Path, record: Mapping[str, Any]) -> None:
    """Write ``record`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
