"""The FiftyOne-facing layer of cliprnn: segment whole collections, store editable labels.

This is the only part of cliprnn that imports fiftyone.
"""

from cliprnn.fiftyone.collection import (
    Progress,
    RunSummary,
    SampleError,
    SegmentationRun,
    segment_collection,
)
from cliprnn.fiftyone.edits import apply_mask_edits, edit_mask_classes, rebuild_instances
from cliprnn.fiftyone.engine import resolve_config
from cliprnn.fiftyone.lock import FieldLockedError
from cliprnn.fiftyone.model import CaRModel
from cliprnn.fiftyone.queries import class_sources, resolve_queries, source_classes
from cliprnn.fiftyone.runs import run_info

__all__ = [
    "CaRModel",
    "FieldLockedError",
    "Progress",
    "RunSummary",
    "SampleError",
    "SegmentationRun",
    "apply_mask_edits",
    "class_sources",
    "edit_mask_classes",
    "rebuild_instances",
    "resolve_config",
    "resolve_queries",
    "run_info",
    "segment_collection",
    "source_classes",
]
