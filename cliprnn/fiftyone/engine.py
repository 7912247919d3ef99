"""Build the CaR configuration of a run, and keep loaded engines for reuse between runs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from cliprnn.config import CaRConfig
from cliprnn.errors import ConfigError

DEFAULT_PRESET = "voc"
_CACHE_SIZE = 2
_cache: OrderedDict[CaRConfig, Any] = OrderedDict()
_lock = threading.Lock()
#: Config fields only the labels written to FiftyOne depend on, not the engine: configs that
#: differ only in them share one loaded engine.
LABEL_ONLY = {"min_region_pixels": 0}


def resolve_config(
    config: CaRConfig | str | Mapping[str, Any] | None = None, **overrides: Any
) -> CaRConfig:
    """A validated CaRConfig from a config, a preset name, or a dict with an optional
    ``"preset"`` key plus field values; ``overrides`` whose value is None are ignored."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config is None:
        config = DEFAULT_PRESET
    if isinstance(config, CaRConfig):
        return config.replace(**overrides) if overrides else config
    if isinstance(config, str):
        return CaRConfig.preset(config, **overrides)
    if isinstance(config, Mapping):
        fields = dict(config)
        preset = fields.pop("preset", None) or DEFAULT_PRESET
        return CaRConfig.preset(preset, **{**fields, **overrides})
    raise ConfigError(f"config must be a CaRConfig, a preset name or a dict, got {config!r}")


def get_car(config: CaRConfig, load: bool = True) -> Any:
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
