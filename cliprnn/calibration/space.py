"""What a calibration searches: the configuration fields (knobs) and the values each may take."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cliprnn.config import BACKGROUND_WORDS, PRESETS, VISUAL_PROMPTS, CaRConfig
from cliprnn.errors import CalibrationError

#: The searched configuration fields, in the order coordinate ascent visits them.
KNOBS: tuple[str, ...] = (
    "confidence_threshold", "mask_threshold", "visual_prompts", "background_words", "crf",
)  # fmt: skip

#: Default θ grid: the presets' values and the range between (classifier scores are softmax
#: probabilities over the live queries, so useful values fall as the query list grows).
DEFAULT_THETAS: tuple[float, ...] = (
    0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7,
)  # fmt: skip
#: Default η grid (the presets use 0.4-0.6).
DEFAULT_ETAS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
#: Default visual-prompt sets: the presets' and the paper's ablation's single prompts.
DEFAULT_PROMPT_SETS: tuple[tuple[str, ...], ...] = (
    ("circle", "blur"), ("blur", "gray"), ("circle", "blur", "gray"), ("circle",), ("blur",),
    ("contour", "blur"),
)  # fmt: skip

#: Model passes counted per kind (one image each): the proposal CLIP's dense pass, one Grad-CAM
#: pass over a live query set, one classifier pass over its prompted images, one CRF.
PASS_KINDS: tuple[str, ...] = ("dense", "cam", "classifier", "crf")


@dataclass(frozen=True)
class SearchSpace:
    """The values each searched field may take."""

    confidence_thresholds: tuple[float, ...] = DEFAULT_THETAS
    mask_thresholds: tuple[float, ...] = DEFAULT_ETAS
    visual_prompt_sets: tuple[tuple[str, ...], ...] = DEFAULT_PROMPT_SETS
    background_word_sets: tuple[tuple[str, ...], ...] = (BACKGROUND_WORDS,)
    crf: tuple[bool, ...] = (True, False)

    def __post_init__(self) -> None:
        def tidy(values: Iterable[Any], convert: Callable[[Any], Any]) -> tuple[Any, ...]:
            out: list[Any] = []
            for v in values:
                v = convert(v)
                if v not in out:
                    out.append(v)
            return tuple(out)

        prompts = tidy(self.visual_prompt_sets, lambda p: canonical_prompts(p))
        object.__setattr__(self, "confidence_thresholds", tidy(self.confidence_thresholds, float))
        object.__setattr__(self, "mask_thresholds", tidy(self.mask_thresholds, float))
        object.__setattr__(self, "visual_prompt_sets", prompts)
        words = tidy(self.background_word_sets, lambda ws: tuple(str(w) for w in ws))
        object.__setattr__(self, "background_word_sets", words)
        object.__setattr__(self, "crf", tidy(self.crf, bool))
        for name, values in zip(KNOBS, self._values(), strict=True):
            if not values:
                raise CalibrationError(f"search space: {name} has no value to try")
        for name, value in (("confidence_thresholds", self.confidence_thresholds),
                            ("mask_thresholds", self.mask_thresholds)):  # fmt: skip
            bad = [v for v in value if not 0.0 <= v <= 1.0]
            if bad:
                raise CalibrationError(f"search space: {name} must lie in [0, 1], got {bad}")
        for words in self.background_word_sets:
            if not words:
                raise CalibrationError("search space: a background word set is empty")

    @classmethod
    def default(cls, base: CaRConfig, extra_background: Sequence[str] = ()) -> SearchSpace:
        """The default grid around ``base``: its own values plus the presets', and background
        words from ``base``, the paper's list, and ``base``'s with ``extra_background`` (for
        instance the dataset's own stuff classes) added, and those alone."""
        extra = tuple(w for w in dict.fromkeys(str(w).strip() for w in extra_background) if w)
        word_sets: list[tuple[str, ...]] = [tuple(base.background_words), BACKGROUND_WORDS]
        if extra:
            word_sets += [tuple(dict.fromkeys((*base.background_words, *extra))), extra]
        thetas = sorted({*DEFAULT_THETAS, float(base.confidence_threshold)})
        etas = sorted({*DEFAULT_ETAS, float(base.mask_threshold)})
        preset_prompts = [tuple(p().get("visual_prompts", ())) for p in _plain_presets()]
        prompt_sets = [tuple(base.visual_prompts), *DEFAULT_PROMPT_SETS, *preset_prompts]
        return cls(
            confidence_thresholds=tuple(thetas),
            mask_thresholds=tuple(etas),
            visual_prompt_sets=tuple(p for p in prompt_sets if p),
            background_word_sets=tuple(word_sets),
            crf=(bool(base.crf), not base.crf),
        )

    def _values(self) -> tuple[tuple[Any, ...], ...]:
        return (self.confidence_thresholds, self.mask_thresholds, self.visual_prompt_sets,
                self.background_word_sets, self.crf)  # fmt: skip

    def values(self, knob: str) -> tuple[Any, ...]:
        """The values ``knob`` (one of :data:`KNOBS`) may take."""
        return self._values()[KNOBS.index(knob)]

    def size(self) -> int:
        """Candidates in the full Cartesian grid."""
        return int(np.prod([len(v) for v in self._values()]))

    def including(self, config: CaRConfig) -> SearchSpace:
        """This space with ``config``'s own value of every knob added (so it is a candidate)."""
        start = knob_values(config)
        return SearchSpace(*[
            values if start[k] in values else (start[k], *values)
            for k, values in zip(KNOBS, self._values(), strict=True)
        ])  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-able field values."""
        return {
            "confidence_thresholds": list(self.confidence_thresholds),
            "mask_thresholds": list(self.mask_thresholds),
            "visual_prompt_sets": [list(p) for p in self.visual_prompt_sets],
            "background_word_sets": [list(w) for w in self.background_word_sets],
            "crf": list(self.crf),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """The space :meth:`to_dict` wrote."""
        return cls(
            confidence_thresholds=tuple(data["confidence_thresholds"]),
            mask_thresholds=tuple(data["mask_thresholds"]),
            visual_prompt_sets=tuple(tuple(p) for p in data["visual_prompt_sets"]),
            background_word_sets=tuple(tuple(w) for w in data["background_word_sets"]),
            crf=tuple(data["crf"]),
        )


def canonical_prompts(prompts: Iterable[str]) -> tuple[str, ...]:

    chosen = set(prompts)
    unknown = sorted(chosen - set(VISUAL_PROMPTS))
    if unknown:
        raise CalibrationError(f"search space: unknown visual prompt(s) {unknown}")
    return tuple(p for p in VISUAL_PROMPTS if p in chosen)  # the order CaR applies them in


def _plain_presets() -> list[Callable[[], dict[str, Any]]]:
    return [make for name, make in PRESETS.items() if name != "mini"]


def knob_values(config: CaRConfig) -> dict[str, Any]:
    return {
        "confidence_threshold": float(config.confidence_threshold),
        "mask_threshold": float(config.mask_threshold),
        "visual_prompts": canonical_prompts(config.visual_prompts),
        "background_words": tuple(config.background_words),
        "crf": bool(config.crf),
    }
