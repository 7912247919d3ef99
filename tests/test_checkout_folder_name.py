"""Tests pass whatever the checkout's folder is called, `cliprnn` included.

The repository root is the FiftyOne plugin, a package of its own (`__init__.py`). If the folder
above the checkout came first on sys.path, `import cliprnn` in a folder named `cliprnn` would
load the plugin, and processes the tests spawn (which inherit sys.path) would fail to import the
library. These tests check which `cliprnn` the test process and its spawned children import.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cliprnn

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARY_INIT = REPO_ROOT / "cliprnn" / "__init__.py"

# The test a checkout named `cliprnn` runs (see test_a_checkout_named_cliprnn_imports_the_library).
PROBE = """
import multiprocessing
from pathlib import Path


def library_file():
    import cliprnn

    return cliprnn.__file__, hasattr(cliprnn, "CaR")


def test_probe():
    import cliprnn

    checkout = Path.cwd()
    assert hasattr(cliprnn, "CaR"), f"test process imported {cliprnn.__file__}"
    assert Path(cliprnn.__file__) == checkout / "cliprnn" / "__init__.py", cliprnn.__file__
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        file, is_library = pool.apply(library_file)
    assert is_library, f"spawned process imported {file}"
    assert Path(file) == checkout / "cliprnn" / "__init__.py", file
"""


def _library_file() -> tuple[str, bool]:
    import cliprnn

    return cliprnn.__file__, hasattr(cliprnn, "CaR")


def test_this_checkout_and_its_spawned_processes_import_its_library() -> None:
    assert Path(cliprnn.__file__).resolve() == LIBRARY_INIT
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        file, is_library = pool.apply(_library_file)
    assert is_library, f"a spawned process imported {file}, not the library"
    assert Path(file).resolve() == LIBRARY_INIT


def test_a_checkout_named_cliprnn_imports_the_library(tmp_path: Path) -> None:
    # The parts of a checkout that decide what `import cliprnn` finds: the test configuration,
    # the plugin's root `__init__.py`, the library (linked), the shared conftest.
    clone = tmp_path / "cliprnn"
    (clone / "tests").mkdir(parents=True)
    for name in ("pyproject.toml", "__init__.py", "tests/conftest.py"):
        shutil.copyfile(REPO_ROOT / name, clone / name)
    (clone / "cliprnn").symlink_to(REPO_ROOT / "cliprnn", target_is_directory=True)
    (clone / "tests" / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_probe.py"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout
