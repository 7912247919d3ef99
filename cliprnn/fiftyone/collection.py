"""Segment a whole FiftyOne collection with CaR: the run that fits the collection, and the
one-call API over it.

A run is made of parts in their own modules: :mod:`~cliprnn.fiftyone.results` (progress,
summary, errors), :mod:`~cliprnn.fiftyone.stores` (where the label fields live),
:mod:`~cliprnn.fiftyone.run` (the image run), :mod:`~cliprnn.fiftyone.video` (the video run)
and :mod:`~cliprnn.fiftyone.spec` (a sharded run's fixed settings). Their public names stay
importable from here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import fiftyone as fo

from cliprnn.config import CaRConfig
from cliprnn.exemplars import Exemplars
from cliprnn.fiftyone.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_INSTANCES,
    DEFAULT_LABEL_FIELD,
    DEFAULT_NUM_WORKERS,
    DEFAULT_OUTPUTS,
    DEFAULT_PREFETCH_AHEAD,
    DEFAULT_PRESET,
)
from cliprnn.fiftyone.results import DatabaseError, Progress, RunSummary, SampleError
from cliprnn.fiftyone.run import SegmentationRun
from cliprnn.fiftyone.spec import config_from_dict
from cliprnn.fiftyone.stores import (
    FrameFields,
    FramesViewFields,
    SampleFields,
    write_whole,
)
from cliprnn.fiftyone.video import VideoSegmentationRun

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PREFETCH_AHEAD",
    "DatabaseError",
    "FrameFields",
    "FramesViewFields",
    "Progress",
    "RunSummary",
    "SampleError",
    "SampleFields",
    "SegmentationRun",
    "VideoSegmentationRun",
    "config_from_dict",
    "make_run",
    "segment_collection",
    "write_whole",
]


def make_run(
    sample_collection: fo.core.collections.SampleCollection,
    queries: Sequence[str | Exemplars] | str | None = None,
    **options: Any,
) -> SegmentationRun:
    """The validated run that segments ``sample_collection``: a
    :class:`~cliprnn.fiftyone.video.VideoSegmentationRun` (frame fields) for a video
    collection, a :class:`~cliprnn.fiftyone.run.SegmentationRun` for images or a frames view.

    ``options`` are the keyword arguments of :class:`SegmentationRun` (and ``frame_step`` for
    videos). Nothing is segmented until the run is iterated or its ``run()`` is called."""
    if getattr(sample_collection, "media_type", None) == "video":
        return VideoSegmentationRun(sample_collection, queries, **options)
    return SegmentationRun(sample_collection, queries, **options)


#: The parameters ``segment_collection`` took positionally after ``queries`` before 0.2.
_OLD_POSITIONAL = (
    "classes_from",
    "label_field",
    "config",
    "overwrite",
    "skip_existing",
    "skip_failures",
    "outputs",
    "output_dir",
    "batch_size",
    "progress",
)
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(CaRConfig))


def _old_spellings(func: Callable[..., RunSummary]) -> Callable[..., RunSummary]:
    """Let ``func`` (segment_collection) take, for one more release and with a FutureWarning
    naming the new spelling, its options positionally and CaRConfig fields as keywords."""
    own = set(inspect.signature(func).parameters)

    @functools.wraps(func)
    def accept(
        sample_collection: Any, queries: Any = None, *args: Any, **kwargs: Any
    ) -> RunSummary:
        if args:
            if len(args) > len(_OLD_POSITIONAL):
                raise TypeError(
                    f"segment_collection() takes at most {2 + len(_OLD_POSITIONAL)} positional "
                    f"arguments ({2 + len(args)} given)"
                )
            given = dict(zip(_OLD_POSITIONAL, args, strict=False))
            for name in given:
                if name in kwargs:
                    raise TypeError(f"segment_collection() got multiple values for {name!r}")
            spelled = ", ".join(f"{name}=..." for name in given)
            warnings.warn(
                "segment_collection() takes only the collection and the queries positionally; "
                f"passing the others by position is deprecated and stops working in cliprnn "
                f"0.3: write segment_collection(collection, queries, {spelled})",
                FutureWarning,
                stacklevel=2,
            )
            kwargs.update(given)
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k not in own}
        unknown = sorted(k for k in overrides if k not in _CONFIG_FIELDS)
        if unknown:
            raise TypeError(
                f"segment_collection() got an unexpected keyword argument {unknown[0]!r}"
            )
        if overrides:
            kwargs["config"], spelled = _config_with(kwargs.get("config"), overrides)
            warnings.warn(
                f"segment_collection({', '.join(f'{k}=...' for k in overrides)}): CaRConfig "
                "fields as keyword arguments are deprecated and stop working in cliprnn 0.3: "
                f"write {spelled}",
                FutureWarning,
                stacklevel=2,
            )
        return func(sample_collection, queries, **kwargs)

    return accept


def _config_with(
    config: CaRConfig | str | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> tuple[CaRConfig | dict[str, Any], str]:
    """``config`` with the field values ``overrides`` (None values ignored, as
    :func:`~cliprnn.fiftyone.engine.resolve_config` does), and how to spell that."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(config, CaRConfig):
        args = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        return config.replace(**values), f"config=config.replace({args})"
    if isinstance(config, Mapping):
        merged = {**config, **values}
    else:
        merged = {"preset": config or DEFAULT_PRESET, **values}
    return merged, f"config={ {**merged, **overrides}!r}"


@_old_spellings
def segment_collection(
    sample_collection: fo.core.collections.SampleCollection,
    queries: Sequence[str | Exemplars] | str | None = None,
    *,
    config: CaRConfig | str | Mapping[str, Any] | None = None,
    label_field: str = DEFAULT_LABEL_FIELD,
    outputs: Sequence[str] = DEFAULT_OUTPUTS,
    classes_from: str | None = None,
    classes: Sequence[str] | None = None,
    queries_from: str | None = None,
    instances: str = DEFAULT_INSTANCES,
    output_dir: str | None = None,
    allow_media_dir: bool = False,
    overwrite: bool = False,
    skip_existing: bool = False,
    skip_failures: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int = DEFAULT_NUM_WORKERS,
    prefetch_ahead: int = DEFAULT_PREFETCH_AHEAD,
    frame_step: int | None = None,
    carry_queries: bool | None = None,
    progress: bool | Callable[[Progress], Any] | None = None,
) -> RunSummary:
    """Segment every image (or video frame) of ``sample_collection`` with CaR and store the
    results as label fields; returns what the run did.

    Args:
        sample_collection: a dataset or view of images or videos, or a frames view
            (``to_frames()``), whose labels land in the video's frame fields.
        queries: the text queries (a list, or one per line) and
            :class:`cliprnn.exemplars.Exemplars` (example images; the mask targets name them
            by their ``name``), after the classes of ``classes_from``.
        config: a CaRConfig, a preset name (``"voc"``, ``"mini"``...) or a dict of CaRConfig
            fields with an optional ``"preset"`` (default: the ``"voc"`` preset).
        label_field: the semantic mask field; the other outputs are named after it.
        outputs: any of ``"segmentation"`` (``label_field``, mask value 0 = background),
            ``"detections"`` (``<label_field>_det``, editable instance masks with scores)
            and ``"heatmaps"`` (``<label_field>_heat_<query>``, PNGs under ``output_dir``).
        classes_from: a class list of the dataset to query: ``"mask_targets:FIELD"``,
            ``"classes:FIELD"``, ``"labels:FIELD"``, ``"default_mask_targets"`` or
            ``"default_classes"``.
        classes: the subset of the classes of ``classes_from`` to query.
        queries_from: ``"tags"`` or a label field: each sample is queried for its own
            labels (plus ``queries``).
        instances: one instance per connected ``"region"`` or per ``"class"``.
        output_dir: an absolute folder for the mask and heatmap PNGs.
        allow_media_dir: let ``output_dir`` lie inside the images' folders.
        overwrite: replace the fields an earlier run wrote.
        skip_existing: segment only the samples (frames) that lack the outputs; an
            interrupted run completes this way.
        skip_failures: record a failing sample's error in ``<label_field>_error`` and go on,
            instead of stopping with a :class:`SampleError`.
        batch_size: samples (frames) written to the database together.
        num_workers: threads decoding images ahead of inference.
        prefetch_ahead: images decoded ahead of inference.
        frame_step: on videos, label frames 1, 1 + k, 1 + 2k, ... (default every frame).
        carry_queries: on videos, start each frame's recurrence from the queries the previous
            labelled frame kept (None: the config's setting, on by default).
        progress: True/None for a progress bar (FiftyOne's default setting), False for none,
            or a callable receiving each :class:`Progress`.

    On a video collection the fields are frame fields (``frames.<label_field>``...), and
    ``skip_existing`` skips frames; see :class:`cliprnn.fiftyone.video.VideoSegmentationRun`.

    Example::

        import fiftyone.zoo as foz
        from cliprnn.fiftyone import segment_collection

        ds = foz.load_zoo_dataset("quickstart")
        segment_collection(ds.take(10), ["person", "dog", "car"], config="voc")
        # ds.cliprnn: the semantic masks; ds.cliprnn_det: the editable instances
    """
    options: dict[str, Any] = {}
    if frame_step is not None:
        options["frame_step"] = frame_step
    if carry_queries is not None:
        options["carry_queries"] = carry_queries
    run = make_run(
        sample_collection,
        queries,
        classes_from=classes_from,
        classes=classes,
        queries_from=queries_from,
        label_field=label_field,
        config=config,
        outputs=outputs,
        instances=instances,
        output_dir=output_dir,
        allow_media_dir=allow_media_dir,
        overwrite=overwrite,
        skip_existing=skip_existing,
        skip_failures=skip_failures,
        batch_size=batch_size,
        num_workers=num_workers,
        prefetch_ahead=prefetch_ahead,
        **options,
    )
    return run.run(progress)
