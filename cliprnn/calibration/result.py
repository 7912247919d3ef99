"""A calibration's outcome: the chosen configuration, its cross-validated score, its search."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cliprnn.calibration.space import KNOBS, SearchSpace
from cliprnn.config import CaRConfig
from cliprnn.errors import CalibrationError


@dataclass
class CalibrationResult:
    """A calibration's chosen configuration, its cross-validated score and its search record.

    Scores are mIoU in %. ``score`` is the cross-validated mIoU of the calibration procedure
    (each sample segmented with the configuration a search chose without it); ``base_score``
    is the base configuration's mIoU on the same samples, ``gain`` their paired difference.
    ``fit_score`` is the chosen configuration's mIoU on every labelled sample it was chosen
    on, an optimistic figure. ``kept_base`` says the base configuration was kept because
    the cross-validated gain's 95 % interval was not above 0.
    """

    config: CaRConfig
    overrides: dict[str, Any]
    kept_base: bool
    score: float
    score_interval: tuple[float, float]
    base_score: float
    base_interval: tuple[float, float]
    gain: float
    gain_interval: tuple[float, float]
    fit_score: float
    best_found: dict[str, Any]  # the best candidate on every sample (every knob's value)
    base_values: dict[str, Any]  # the base configuration's value of every knob
    candidates: list[dict[str, Any]]
    slices: dict[str, list[dict[str, Any]]]
    space: SearchSpace
    folds: int
    seed: int
    samples: int
    budget: int
    passes_computed: int
    passes_requested: int
    naive_grid_passes: int
    passes_by_kind: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0
    min_gain_se: float = 0.0  # a search move's required gain, in its standard errors

    def config_overrides(self) -> dict[str, Any]:
        """:attr:`overrides` as ``CaRConfig.replace`` and ``CaR.sharing_models`` take them."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.overrides.items()}

    def curve(self, knob: str) -> list[tuple[Any, float]]:
        """(value, mIoU on every labelled sample) for each value of ``knob``, the other knobs
        at :attr:`best_found`'s values."""
        if knob not in KNOBS:
            raise CalibrationError(f"unknown knob {knob!r}; choose from {list(KNOBS)}")
        return [(jsonable(p["value"]), float(p["miou"])) for p in self.slices.get(knob, [])]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (:meth:`from_dict` reads it back)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["config"] = self.config.to_dict()
        out["config"].pop("extras", None)
        out["space"] = self.space.to_dict()
        record: dict[str, Any] = jsonable(out)
        return record

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationResult:
        """The result :meth:`to_dict` wrote."""
        values = dict(data)
        values["config"] = CaRConfig().replace(**values["config"])
        values["space"] = SearchSpace.from_dict(values["space"])
        for name in ("score_interval", "base_interval", "gain_interval"):
            values[name] = tuple(values[name])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def jsonable(value: Any) -> Any:
    """``value`` with mappings, tuples and numpy scalars turned into JSON's dicts, lists and
    numbers."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
