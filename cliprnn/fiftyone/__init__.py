"""The FiftyOne-facing layer of cliprnn: segment whole collections, store editable labels.

This is the only part of cliprnn that imports fiftyone.
"""

from cliprnn.fiftyone.calibration import (
    calibrate_view,
    calibration_config,
    delete_calibration,
    list_calibrations,
    load_calibration,
)
from cliprnn.fiftyone.collection import (
    Progress,
    RunSummary,
    SampleError,
    SegmentationRun,
    make_run,
    segment_collection,
)
from cliprnn.fiftyone.edits import apply_mask_edits, edit_mask_classes, rebuild_instances
from cliprnn.fiftyone.engine import resolve_config
from cliprnn.fiftyone.exemplar_sets import (
    delete_exemplar_set,
    exemplars_from,
    list_exemplar_sets,
    load_exemplar_set,
    rename_exemplar_set,
    save_exemplar_set,
)
from cliprnn.fiftyone.lock import FieldLockedError
from cliprnn.fiftyone.model import CaRModel
from cliprnn.fiftyone.queries import class_sources, resolve_queries, source_classes
from cliprnn.fiftyone.runs import run_info
from cliprnn.fiftyone.shards import cancel_run, queue_sharded_run, resume_run, run_status

__all__ = [
    "CaRModel",
    "FieldLockedError",
    "Progress",
    "RunSummary",
    "SampleError",
    "SegmentationRun",
    "apply_mask_edits",
    "calibrate_view",
    "calibration_config",
    "cancel_run",
    "class_sources",
    "delete_calibration",
    "delete_exemplar_set",
    "edit_mask_classes",
    "exemplars_from",
    "list_calibrations",
    "list_exemplar_sets",
    "load_calibration",
    "load_exemplar_set",
    "make_run",
    "queue_sharded_run",
    "rebuild_instances",
    "rename_exemplar_set",
    "resolve_config",
    "resolve_queries",
    "resume_run",
    "run_info",
    "run_status",
    "save_exemplar_set",
    "segment_collection",
    "source_classes",
]
