"""Test environment: offline hubs, a private FiftyOne database, and tiny CLIP checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_TMP_PREFIX = "cliprnn-tests-"
_TMP = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX))
(_TMP / "pid").write_text(str(os.getpid()))
REPO_ROOT = Path(__file__).resolve().parents[1]
# Outputs of the reference CaR code with their checksums (tests/golden/README.md).
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"

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

# The library, imported before pytest sets up the repository root: the root is a package (the
# FiftyOne plugin), and pytest imports its `__init__.py` under the name of the folder that holds
# it (`cliprnn` in a clone named so) unless a module of that name is already loaded.
import cliprnn  # noqa: E402, F401


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove the temporary folders of earlier runs whose process is gone (a run that crashed
    before it could remove its own)."""
    for folder in _TMP.parent.glob(f"{_TMP_PREFIX}*"):
        pid_file = folder / "pid"
        if folder != _TMP and pid_file.is_file() and not _alive(pid_file):
            shutil.rmtree(folder, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this run's temporary folder (datasets, database, models: ~300 MB);
    CLIPRNN_KEEP_TEST_TMP=1 keeps it to look at."""
    if os.environ.get("CLIPRNN_KEEP_TEST_TMP"):
        return
    # Stop the database this run started (it lives in the folder) before its files go:
    # `stop()` only tells FiftyOne's service process to end, which stops mongod once no other
    # process uses it, so wait for that process (not for longer than a minute); removing the
    # folder earlier left mongod writing into it.
    database = sys.modules.get("fiftyone.core.odm.database")
    service = getattr(database, "_db_service", None)
    child = getattr(service, "child", None)
    if child is not None:
        service.stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=60)
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _TMP


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): a tiny
    model's many small operations are slower when each waits for a second thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_car(tiny_clip_dir: Path):
    """A loaded VOC-preset CaR on the tiny CLIP (both roles), inference at 48 px, θ = 0.2."""
    from cliprnn import CaR, CaRConfig

    config = CaRConfig.preset(
        "voc", proposal_model=str(tiny_clip_dir), classifier_model=str(tiny_clip_dir),
        device="cpu", max_image_side=48, confidence_threshold=0.2, text_cache_dir=None,
    )  # fmt: skip
    return CaR(config).load()


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_root: Path) -> Path:
    """A small randomly initialised CLIPModel saved with save_pretrained (plus tokenizer)."""
    from cliprnn.dev.random_clip import save_random_clip

    return save_random_clip(tmp_root / "tiny-clip", width=64, layers=2, patch_size=8,
                            image_size=32, seed=0)  # fmt: skip


def golden_problems(folder: Path = GOLDEN_DIR) -> list[str]:
    """Every file of SHA256SUMS in ``folder`` that is missing or has another checksum."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return [f"{sums} is missing"]
    problems = []
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = folder / name.lstrip("*")
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{path} does not match its SHA256SUMS entry")
    return problems


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The golden parity set, checked against its SHA256SUMS: a missing file is a failure."""
    problems = golden_problems()
    if problems:
        pytest.fail("golden parity data damaged: " + "; ".join(problems), pytrace=False)
    return GOLDEN_DIR
