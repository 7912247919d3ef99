"""Mask files on disk: output-directory checks and atomic PNG writes."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from cliprnn.errors import ConfigError


def validate_output_dir(
    output_dir: str | os.PathLike, media_paths: Iterable[str] = (), allow_media_dir: bool = False
) -> Path:
    """Return ``output_dir`` resolved, created if needed, after checking it is absolute,
    writable, and (unless ``allow_media_dir``) not inside a folder holding the samples' media."""
    if isinstance(output_dir, dict):  # the App's file explorer sends {"absolute_path": ...}
        output_dir = output_dir.get("absolute_path") or ""
    raw = os.fspath(output_dir)
    if not raw or not os.path.isabs(os.path.expanduser(raw)):
        raise ConfigError(f"output_dir must be an absolute path, got {raw!r}")
    path = Path(os.path.expanduser(raw)).resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir {str(path)!r} exists and is not a folder")
    if not allow_media_dir:
        for media_dir in {Path(p).resolve().parent for p in media_paths}:
            if path == media_dir or media_dir in path.parents:
                raise ConfigError(
                    f"output_dir {str(path)!r} is inside the media folder {str(media_dir)!r}; "
                    "choose another folder, or pass allow_media_dir=True"
                )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".cliprnn-write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"output_dir {str(path)!r} is not writable: {e}") from e
    return path


_UMASK_GUARD = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it (other threads may create files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_GUARD:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_png_atomic(array: np.ndarray, path: str | os.PathLike) -> str:
    """Write a 2-D uint8/uint16 array as a PNG: a temporary file in the same folder, then a
    rename, so a crash never leaves a half-written file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".png.part")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a file follows the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)
