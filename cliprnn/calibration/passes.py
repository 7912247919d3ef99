"""Model passes shared by a calibration's candidate engines: computed once, keyed by content."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cliprnn.car import CaR

#: Model passes counted per kind (one image each): the proposal CLIP's dense pass, one Grad-CAM
#: pass over a live query set, one classifier pass over its prompted images, one CRF.
PASS_KINDS: tuple[str, ...] = ("dense", "cam", "classifier", "crf")


def _digest(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _nbytes(value: Any) -> int:
    import torch

    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, torch.Tensor):
        return int(value.element_size() * value.nelement())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 64


class PassCache:
    """Model passes shared by every candidate engine of a calibration, least recently used
    dropped above ``max_bytes``; counts passes requested and computed per kind."""

    def __init__(self, enabled: bool = True, max_bytes: int = 2 << 30) -> None:
        self.enabled = enabled
        self.max_bytes = max_bytes
        self._store: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self.requested = dict.fromkeys(PASS_KINDS, 0)
        self.computed = dict.fromkeys(PASS_KINDS, 0)

    def get(self, kind: str, key: str, compute: Callable[[], Any]) -> Any:
        """The cached value of ``(kind, key)``, computed (and counted) when missing."""
        self.requested[kind] += 1
        if self.enabled and (kind, key) in self._store:
            self._store.move_to_end((kind, key))
            return self._store[(kind, key)][0]
        value = compute()
        self.computed[kind] += 1
        if self.enabled:
            size = _nbytes(value)
            self._store[(kind, key)] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._store) > 1:
                _, (_, dropped) = self._store.popitem(last=False)
                self._bytes -= dropped
        return value


def caching_engine(car: CaR, cache: PassCache, overrides: Mapping[str, Any]) -> CaR:
    """An engine on ``car``'s models with ``overrides`` whose passes go through ``cache``."""
    from cliprnn.car import CaR

    class CachingCaR(CaR):
        def _dense_state(self, image: np.ndarray) -> Any:
            state = cache.get("dense", _digest(image), lambda: CaR._dense_state(self, image))
            state.calibration_key = _digest(image)
            return state

        def _propose(
            self,
            state: Any,
            names: list[str],
            background: list[str],
            step: int,
            trace: bool,
            exemplars: Any = None,
            timings: dict[str, float] | None = None,
        ) -> tuple[np.ndarray, dict[str, Any]]:
            key = _digest(state.calibration_key, self._cam_texts(names, step), background)
            proposals, _ = cache.get(
                "cam", key, lambda: CaR._propose(self, state, names, background, step, False)
            )
            return proposals.copy(), {}

        def _score(
            self,
            image: np.ndarray,
            proposals: np.ndarray,
            names: list[str],
            prompts: Sequence[str],
            trace: bool,
            timings: dict[str, float],
            exemplars: Any,
        ) -> tuple[np.ndarray, dict[str, Any]]:
            cfg = self.config
            key = _digest(image, proposals, names, tuple(prompts), cfg.mask_threshold)
            matrix, _ = cache.get(
                "classifier", key,
                lambda: CaR._score(self, image, proposals, names, prompts, False, {}, None),
            )  # fmt: skip
            return matrix.copy(), {}

        def _postprocess(
            self, image: np.ndarray, proposals: np.ndarray, bg_factor: float, crf_fn: Any = None
        ) -> tuple[np.ndarray, np.ndarray]:
            cfg = self.config
            key = _digest(image, proposals, bg_factor, cfg.crf, cfg.mode)
            masks, lost = cache.get(
                "crf", key, lambda: CaR._postprocess(self, image, proposals, bg_factor)
            )
            return masks.copy(), lost.copy()

    return car.sharing_models(engine_class=CachingCaR, **overrides)
