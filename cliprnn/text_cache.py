"""An on-disk cache of text embeddings, shared safely between processes and runs.

One entry is one fixed group of strings embedded together: a query's classifier templates, or
a single string (a CAM text, a background word). The key is the SHA-256 of everything the
embedding depends on: the text tower's weights (``weights_digest``), where and in what
precision it runs, the torch version, the strings and their token ids. The value is a
safetensors file holding one float32 array [n, d] and, in its metadata, the key, the shape and
the SHA-256 of the array's bytes.

Writes go to a temporary file in the entry's folder, then ``os.replace`` moves it into place,
so a reader sees a whole entry or none, and two workers writing the same key both leave a
valid (identical) entry. An entry that is truncated, corrupt, of the wrong shape or written
for another key is treated as missing: the caller recomputes it and overwrites it. Failing to
write (read-only or full disk) only warns; the run goes on without the disk cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Bumped whenever the file layout or the way an embedding is computed changes.
FORMAT = "cliprnn-text-embedding-1"
#: Name of the one array in an entry file.
ARRAY = "embeddings"
#: Environment variable naming the root of cliprnn's caches ("" disables the disk cache).
CACHE_ENV = "CLIPRNN_CACHE_DIR"


def resolve_text_cache_dir(value: str | os.PathLike[str] | None) -> Path | None:
    """The text cache folder of a ``CaRConfig.text_cache_dir`` value, or None when disabled.

    ``None`` or ``""`` disable the cache. ``"auto"`` is ``$CLIPRNN_CACHE_DIR/text`` when that
    variable is set (an empty value disables the cache), else ``$XDG_CACHE_HOME/cliprnn/text``,
    else ``~/.cache/cliprnn/text``. Any other value is the folder itself.
    """
    if value is None or str(value) == "":
        return None
    if str(value) != "auto":
        return Path(value).expanduser()
    root = os.environ.get(CACHE_ENV)
    if root is not None:
        return Path(root).expanduser() / "text" if root.strip() else None
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cliprnn" / "text"


def weights_digest(named_tensors: Iterable[tuple[str, Any]], extra: str = "") -> str:
    """SHA-256 over the names, dtypes, shapes and raw bytes of some torch tensors (and ``extra``).

    Each tensor is read once, on the CPU, without converting its values.
    """
    import torch

    h = hashlib.sha256()
    h.update(extra.encode())
    for name, tensor in named_tensors:
        t = tensor.detach()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.contiguous().reshape(-1).cpu()
        if flat.numel():
            h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def entry_key(namespace: str, parts: Sequence[Any]) -> str:
    """The SHA-256 key of one entry: ``namespace`` (model and compute) plus JSON-able ``parts``."""
    blob = json.dumps([FORMAT, namespace, *parts], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class TextCache:
    """Text embeddings stored under ``directory`` (see the module docstring).

    ``hits``, ``misses``, ``corrupt`` (entries found unreadable, counted in ``misses`` too) and
    ``writes`` count this instance's traffic.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.writes = 0
        self._warned = False

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    # ------------------------------------------------------------------ reading
    def load(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The float32 array stored for ``key`` if it is whole and has ``shape``; else None."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as exc:
            self._warn(f"cannot read {path}: {exc}")
            self.misses += 1
            return None
        array = _decode(data, key, shape)
        if array is None:
            log.info("text cache entry %s is corrupt; recomputing it", path)
            self.corrupt += 1
            self.misses += 1
            return None
        self.hits += 1
        return array

    # ------------------------------------------------------------------ writing
    def store(self, key: str, array: np.ndarray, texts: Sequence[str] = ()) -> bool:
        """Write ``array`` (float32) for ``key`` atomically; False (and one warning) on failure."""
        from safetensors.numpy import save

        array = np.ascontiguousarray(array, dtype=np.float32)
        metadata = {
            "format": FORMAT,
            "key": key,
            "shape": json.dumps(list(array.shape)),
            "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
            "texts": json.dumps(list(texts), ensure_ascii=False)[:4000],
        }
        path = self.path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(save({ARRAY: array}, metadata=metadata))
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            self._warn(f"cannot write {path}: {exc}")
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self.writes += 1
        return True

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("text embedding cache in %s: %s (continuing without it)",
                        self.directory, message)  # fmt: skip


def _decode(data: bytes, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The entry's array when the file is whole and written for ``key`` with ``shape``."""
    from safetensors.numpy import load

    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 + size:
            return None
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        if metadata.get("format") != FORMAT or metadata.get("key") != key:
            return None
        array = load(data).get(ARRAY)
    except Exception:  # any parse error means a damaged file
        return None
    if array is None or array.dtype != np.float32 or tuple(array.shape) != tuple(shape):
        return None
    if hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() != metadata.get("sha256"):
        return None
    if not np.isfinite(array).all():
        return None
    return array
