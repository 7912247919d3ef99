"""Provenance: each segmentation run is recorded as a FiftyOne run with its full config."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import fiftyone as fo

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


def record_run(
    collection: fo.core.collections.SampleCollection,
    label_field: str,
    record: Mapping[str, Any],
) -> None:
    """Register (or replace) the run record for ``label_field``, before any write."""
    cfg = collection.init_run(
        method=METHOD, cliprnn_version=_version(), label_field=label_field, **record
    )
    collection.register_run(run_key_for(label_field), cfg, overwrite=True, cleanup=False)


def record_run_results(
    collection: fo.core.collections.SampleCollection,
    label_field: str,
    results: Mapping[str, Any],
) -> None:
    """Attach the run's counts (processed, skipped, failed, first errors, seconds)."""
    key = run_key_for(label_field)
    data = {k: v for k, v in results.items() if k != "run_key"}
    collection.save_run_results(key, collection.init_run_results(key, **data), overwrite=True)


def note_mask_edits(
    dataset: fo.Dataset,
    label_field: str,
    detections_field: str,
    updated: int,
    new_classes: list[str],
) -> None:
    """Add a line to the run record of ``label_field`` saying edits were folded into it."""
    key = run_key_for(label_field)
    if not dataset.has_run(key):
        return
    cfg = dataset.get_run_info(key).config
    entry = dict(
        at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        from_field=detections_field,
        samples_updated=int(updated),
        new_classes=list(new_classes),
    )
    cfg.mask_edits = [*(getattr(cfg, "mask_edits", None) or []), entry]
    dataset.update_run_config(key, cfg)


def run_info(dataset: fo.Dataset, label_field: str) -> dict[str, Any] | None:
    """The recorded config of the last run that wrote ``label_field`` (None if none)."""
    key = run_key_for(label_field)
    if not dataset.has_run(key):
        return None
    return dataset.get_run_info(key).config.serialize()
