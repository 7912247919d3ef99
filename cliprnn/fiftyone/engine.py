"""Build the CaR configuration of a run, and keep loaded engines for reuse between runs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from cliprnn.config import DEFAULT_PRESET, CaRConfig, ConfigLike

if TYPE_CHECKING:
    from cliprnn.car import CaR

__all__ = ["DEFAULT_PRESET", "LABEL_ONLY", "clear_cache", "get_car", "resolve_config"]

_CACHE_SIZE = 2
_cache: OrderedDict[CaRConfig, CaR] = OrderedDict()
_lock = threading.Lock()
#: Config fields only the labels written to FiftyOne depend on, not the engine: configs that
#: differ only in them share one loaded engine.
LABEL_ONLY = {"min_region_pixels": 0}


def resolve_config(config: ConfigLike = None, **overrides: Any) -> CaRConfig:
    """:meth:`CaRConfig.resolve` for the FiftyOne layer: an override whose value is None is
    left out, as an operator's form field left empty (so ``None`` cannot set a field here;
    pass it in ``config`` instead). ``DEFAULT_PRESET`` is the library's."""
    return CaRConfig.resolve(config, **{k: v for k, v in overrides.items() if v is not None})


def get_car(config: CaRConfig, load: bool = True) -> CaR:
    """A CaR engine for ``config``, loaded once and reused by later runs in this process.

    ``load=True`` loads the models now, so a bad model name fails before any sample is touched.
    """
    from cliprnn.car import CaR

    key = config.replace(**LABEL_ONLY)
    with _lock:
        car = _cache.get(key)
        if car is None:
            car = CaR(key)
            if load:
                car.load()
            _cache[key] = car
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        else:
            _cache.move_to_end(key)
    return car


def clear_cache() -> None:
    """Forget every loaded engine (frees their memory once no run uses them)."""
    with _lock:
        _cache.clear()
