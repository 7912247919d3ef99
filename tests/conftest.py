"""Test environment: offline hubs, a private FiftyOne database, and tiny CLIP checkpoints."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="cliprnn-tests-"))
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("CLIPRNN_SHARED_DIR", REPO_ROOT.parent / "shared"))
GOLDEN_DIR = SHARED_DIR / "golden"

# Set before anything imports transformers or fiftyone.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(_TMP / "fiftyone-db"))
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
# A plugins folder holding only a link to this checkout, so FiftyOne finds exactly this plugin.
(_TMP / "plugins").mkdir()
(_TMP / "plugins" / "clip-as-rnn").symlink_to(REPO_ROOT, target_is_directory=True)
os.environ["FIFTYONE_PLUGINS_DIR"] = str(_TMP / "plugins")
os.environ.setdefault("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", "true")
os.environ.setdefault("FIFTYONE_DEFAULT_DATASET_DIR", str(_TMP / "fiftyone-data"))
# No on-disk text embedding cache unless a test asks for one: tests count text passes, and
# must not read (or fill) the user's ~/.cache/cliprnn.
os.environ["CLIPRNN_CACHE_DIR"] = ""

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _TMP


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_root: Path) -> Path:
    """A small randomly initialised CLIPModel saved with save_pretrained (plus tokenizer)."""
    from cliprnn.random_clip import save_random_clip

    return save_random_clip(tmp_root / "tiny-clip", width=64, layers=2, patch_size=8,
                            image_size=32, seed=0)  # fmt: skip


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "tiny_clip_seed1_fp16.safetensors").exists():
        pytest.skip(f"golden data not found at {GOLDEN_DIR}")
    return GOLDEN_DIR
