"""CaR as a FiftyOne model, so ``collection.apply_model(CaRModel(...), label_field)`` works."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import fiftyone as fo
import fiftyone.core.models as fom
import numpy as np

from cliprnn.config import CaRConfig
from cliprnn.fiftyone import labels as L
from cliprnn.fiftyone.engine import get_car, resolve_config
from cliprnn.fiftyone.queries import assign_values, clean_queries


class CaRModel(fom.Model):
    """Text-queried semantic segmentation with CLIP as RNN, for ``apply_model``.

    Predicts a ``Segmentation`` (values ``mask_targets``: 1..K in query order unless ``values``
    fixes them) or, with ``output="detections"``, ``Detections`` with one instance mask per
    kept query. ``apply_model`` does not set mask targets; :meth:`set_mask_targets` does.

    Example::

        model = CaRModel("voc", queries=["cat", "dog"])
        view.apply_model(model, label_field="cliprnn")
        model.set_mask_targets(view, "cliprnn")
    """

    def __init__(
        self,
        config: CaRConfig | str | Mapping[str, Any] | None = None,
        queries: Sequence[str] = (),
        output: str = "segmentation",
        values: Mapping[str, int] | None = None,
        **config_overrides: Any,
    ) -> None:
        from cliprnn.errors import ConfigError, QueryError

        self.config = resolve_config(config, **config_overrides)
        self.queries = clean_queries(queries)
        if not self.queries:
            raise QueryError("CaRModel needs at least one query")
        if output not in ("segmentation", "detections"):
            raise ConfigError(f"output must be 'segmentation' or 'detections', got {output!r}")
        self.output = output
        self.values = assign_values(self.queries, values)
        self.dtype = L.mask_dtype(max(self.values.values()))
        self._car = None

    @property
    def mask_targets(self) -> dict[int, str]:
        """Mask value -> query, for ``dataset.mask_targets[label_field]``."""
        return {v: q for q, v in sorted(self.values.items(), key=lambda kv: kv[1])}

    def set_mask_targets(
        self, collection: fo.core.collections.SampleCollection, field: str
    ) -> None:
        """Record this model's mask targets for ``field`` on the collection's root dataset."""
        ds = collection._root_dataset
        ds.mask_targets = {**ds.mask_targets, field: self.mask_targets}
        ds.save()

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return True

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return False

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        pass

    def __enter__(self) -> CaRModel:
        self._car = get_car(self.config)
        return self

    def predict(self, arg: np.ndarray) -> fo.Label:
        """Segment one RGB uint8 image (H×W×3)."""
        if self._car is None:
            self._car = get_car(self.config)
        result = self._car.segment(np.asarray(arg), self.queries)
        result = L.without_specks(result, self.config.min_region_pixels)
        if self.output == "detections":
            return L.detections_label(result, self.values)
        return L.segmentation_label(result, self.values, self.dtype)

    def predict_all(self, args: Sequence[np.ndarray]) -> list[fo.Label]:
        """Segment several images, one after another."""
        return [self.predict(a) for a in args]
