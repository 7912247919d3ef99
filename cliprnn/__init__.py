"""cliprnn: CLIP as RNN (CaR) open-vocabulary segmentation with frozen CLIP models.

Public API: :class:`CaR`, :class:`CaRConfig`, :class:`CaRResult`, :class:`Exemplars` (a query
made of example images), :func:`convert_openai_checkpoint`.
The FiftyOne layer lives in :mod:`cliprnn.fiftyone` (imported only on demand).
"""

from pathlib import Path
from typing import Any

from cliprnn.car import CaR
from cliprnn.config import DEFAULT_PRESET, PRESETS, CaRConfig
from cliprnn.errors import CaRError, ConfigError, ImageError, ModelLoadError, QueryError
from cliprnn.exemplars import Exemplars
from cliprnn.result import CaRResult, StepTrace

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "CaR",
    "CaRConfig",
    "CaRError",
    "CaRResult",
    "ConfigError",
    "Exemplars",
    "ImageError",
    "ModelLoadError",
    "QueryError",
    "StepTrace",
    "convert_openai_checkpoint",
    "segment_collection",
]


def convert_openai_checkpoint(src: str | Path, dst_folder: str | Path) -> Path:
    """Convert an OpenAI-layout CLIP state dict into a Hugging Face CLIPModel folder."""
    from cliprnn.convert import convert_openai_checkpoint as _convert

    return _convert(src, dst_folder)


def segment_collection(*args: Any, **kwargs: Any) -> Any:
    """Deprecated: use :func:`cliprnn.fiftyone.segment_collection` (removed in 0.3)."""
    import warnings

    warnings.warn(
        "cliprnn.segment_collection is deprecated and will be removed in cliprnn 0.3: "
        "use cliprnn.fiftyone.segment_collection (the engine package does not import FiftyOne)",
        FutureWarning,
        stacklevel=2,
    )
    from cliprnn.fiftyone import segment_collection as _segment_collection

    return _segment_collection(*args, **kwargs)
