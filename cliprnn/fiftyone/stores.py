"""Where a run's label fields live (sample fields, or the frame fields of a video dataset),
how their values are written, and the batch of values waiting to be written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import fiftyone as fo


class Batch:
    """Labels per output field and the error (None when it succeeded) per sample id, waiting
    to be written together."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = list(fields)
        self.labels: dict[str, dict[str, Any]] = {f: {} for f in self.fields}
        self.errors: dict[str, str | None] = {}

    def __len__(self) -> int:
        return len(self.errors)

    def take(self) -> tuple[dict[str, dict[str, Any]], dict[str, str | None]]:
        """The pending labels and errors; leaves the batch empty."""
        out = self.labels, self.errors
        self.labels, self.errors = {f: {} for f in self.fields}, {}
        return out


class SampleFields:
    """A run's fields as sample fields of ``dataset``; values are keyed by sample id."""

    #: What the fields' paths in ``dataset`` start with (mask targets, colours, label schema).
    prefix = ""

    def __init__(self, dataset: fo.Dataset) -> None:
        self.dataset = dataset

    def path(self, name: str | None) -> str | None:
        """The path of field ``name`` in ``dataset`` (None stays None)."""
        return None if name is None else self.prefix + name

    def schema(self) -> dict[str, Any]:
        return self.dataset.get_field_schema()

    def has(self, name: str) -> bool:
        return name in self.schema()

    def declare(self, name: str, ftype: type, **kwargs: Any) -> None:
        """Add field ``name`` unless it exists."""
        if not self.has(name):
            self.dataset.add_sample_field(name, ftype, **kwargs)

    def declare_labels(self, types: Mapping[str, type]) -> None:
        """Add the label fields ``types`` (name -> label class) that do not exist, in one
        schema update (a run with a heatmap field per query adds hundreds)."""
        schema = self.schema()
        missing = {n: c for n, c in types.items() if n not in schema}
        if missing:
            _merge_label_fields(self.dataset, self._doc_cls(), missing)

    def _doc_cls(self) -> Any:
        """The document class whose schema holds the fields."""
        return self.dataset._sample_doc_cls

    def write(self, labels: Mapping[str, Mapping[str, Any]]) -> None:
        """Write ``labels`` (field -> sample id -> value); each sample's fields in one update,
        so a sample is written whole or not at all."""
        write_whole(self.dataset, labels)


def _merge_label_fields(dataset: fo.Dataset, doc_cls: Any, types: Mapping[str, type]) -> None:
    """Declare embedded label fields on ``doc_cls`` (a dataset's sample or frame document
    class) with one save of the dataset document, as ``add_sample_field`` does for one."""
    fields = {
        name: doc_cls._create_field(name, fo.EmbeddedDocumentField, embedded_doc_type=cls)
        for name, cls in types.items()
    }
    if doc_cls.merge_field_schema(fields):
        dataset._reload()


def write_whole(
    collection: fo.core.collections.SampleCollection, labels: Mapping[str, Mapping[str, Any]]
) -> None:
    """Set ``labels`` (field -> sample id -> value) on the samples of ``collection``, each
    sample's fields in one database update."""
    rows: dict[str, dict[str, Any]] = {}
    for name, values in labels.items():
        for sid, value in values.items():
            rows.setdefault(sid, {})[name] = value
    if not rows:
        return
    view = collection.select(list(rows)).select_fields(list(labels))
    for sample in view.iter_samples(autosave=True, batch_size=len(rows)):
        for name, value in rows[sample.id].items():
            sample[name] = value


class FrameFields(SampleFields):
    """A run's fields as frame fields of the video ``dataset``; values are keyed by video
    sample id, each a mapping of frame number (from 1) to label."""

    prefix = "frames."

    def schema(self) -> dict[str, Any]:
        return self.dataset.get_frame_field_schema() or {}

    def declare(self, name: str, ftype: type, **kwargs: Any) -> None:
        if not self.has(name):
            self.dataset.add_frame_field(name, ftype, **kwargs)

    def _doc_cls(self) -> Any:
        return self.dataset._frame_doc_cls

    def write(self, labels: Mapping[str, Mapping[str, Any]]) -> None:
        """Write ``labels`` (field -> video sample id -> frame number -> label), field by
        field (a resume checks each frame's outputs, see the video run)."""
        for name, values in labels.items():
            self.dataset.set_values(self.prefix + name, dict(values), key_field="id")


class FramesViewFields(FrameFields):
    """A run's fields on a frames view (``to_frames()``): sample fields of the view's frames,
    keyed by frame sample id, written through to the frame fields of its video dataset."""

    def __init__(self, view: fo.core.collections.SampleCollection) -> None:
        super().__init__(view._root_dataset)
        self.view = view

    def declare(self, name: str, ftype: type, **kwargs: Any) -> None:
        super().declare(name, ftype, **kwargs)
        frames = self.view._frames_dataset
        if not frames.has_field(name):
            frames.add_sample_field(name, ftype, **kwargs)

    def declare_labels(self, types: Mapping[str, type]) -> None:
        super().declare_labels(types)
        SampleFields(self.view._frames_dataset).declare_labels(types)

    def write(self, labels: Mapping[str, Mapping[str, Any]]) -> None:
        """Write ``labels`` (field -> frame sample id -> label), each frame whole, through
        the frames view to the video dataset's frame fields."""
        write_whole(self.view, labels)
