"""The defaults of a segmentation run, shared by the Python API and the App's Segment form,
and of the edits of its results."""

from __future__ import annotations

from cliprnn.fiftyone.engine import DEFAULT_PRESET
from cliprnn.fiftyone.instances import DEFAULT_INSTANCES

#: The field a run writes unless told otherwise: not a class name, so a field listing never
#: reads as a class (instances go to ``cliprnn_det``, heatmaps to ``cliprnn_heat_<query>``).
DEFAULT_LABEL_FIELD = "cliprnn"
#: The semantic mask and the editable instances the labeling loop edits.
DEFAULT_OUTPUTS: tuple[str, ...] = ("segmentation", "detections")
#: Samples whose labels are written to the database together.
DEFAULT_BATCH_SIZE = 8
#: Threads decoding images ahead of inference.
DEFAULT_NUM_WORKERS = 2
#: Images decoded ahead of inference (on ``num_workers`` threads).
DEFAULT_PREFETCH_AHEAD = 4
#: Samples an edit of stored results (fold-back, rebuild, class edit) saves together.
EDIT_BATCH_SIZE = 64

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_INSTANCES",
    "DEFAULT_LABEL_FIELD",
    "DEFAULT_NUM_WORKERS",
    "DEFAULT_OUTPUTS",
    "DEFAULT_PREFETCH_AHEAD",
    "DEFAULT_PRESET",
    "EDIT_BATCH_SIZE",
]
