"""Provenance: each segmentation run is recorded as a FiftyOne run with its full config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fiftyone as fo

if TYPE_CHECKING:
    from cliprnn.fiftyone.collection import SegmentationRun

METHOD = "cliprnn.segment"


def run_key_for(label_field: str) -> str:
    """The run key under which runs writing ``label_field`` are recorded."""
    return f"cliprnn_{label_field}"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cliprnn")
    except Exception:
        return "unknown"


def record_run(collection: fo.core.collections.SampleCollection, run: SegmentationRun) -> None:
    """Register (or replace) the run record for the run's label field, before any write."""
    fields = run.fields
    cfg = collection.init_run(
        method=METHOD,
        cliprnn_version=_version(),
        label_field=fields.label_field,
        fields=dict(
            segmentation=fields.segmentation,
            detections=fields.detections,
            heatmaps=dict(fields.heatmaps),
            error=fields.error,
        ),
        queries=list(run.queries),
        classes_from=run.classes_from,
        mask_targets={str(k): v for k, v in run.mask_targets.items()},
        outputs=list(run.outputs),
        output_dir=str(run.output_dir) if run.output_dir else None,
        overwrite=run.overwrite,
        skip_existing=run.skip_existing,
        skip_failures=run.skip_failures,
        config=run.config.to_dict(),
    )
    collection.register_run(run_key_for(fields.label_field), cfg, overwrite=True, cleanup=False)


def record_run_results(
    collection: fo.core.collections.SampleCollection, run: SegmentationRun
) -> None:
    """Attach the run's counts (processed, skipped, failed, first errors, seconds)."""
    key = run_key_for(run.fields.label_field)
    data = {k: v for k, v in run.summary.to_dict().items() if k != "run_key"}
    results = collection.init_run_results(key, **data)
    collection.save_run_results(key, results, overwrite=True)


def run_info(dataset: fo.Dataset, label_field: str) -> dict[str, Any] | None:
    """The recorded config of the last run that wrote ``label_field`` (None if none)."""
    key = run_key_for(label_field)
    if not dataset.has_run(key):
        return None
    return dataset.get_run_info(key).config.serialize()
