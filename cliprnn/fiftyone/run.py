"""A segmentation run over the images of a collection (or a frames view): checked when
built, then segmented in order and written in batches, each sample whole."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou
import pymongo.errors
from fiftyone import ViewField as F

from cliprnn.config import CaRConfig
from cliprnn.errors import ConfigError, QueryError
from cliprnn.exemplars import Exemplars, split_queries
from cliprnn.fiftyone import labels as L
from cliprnn.fiftyone.annotation import hide_by_default, make_editable, match_colors
from cliprnn.fiftyone.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_INSTANCES,
    DEFAULT_LABEL_FIELD,
    DEFAULT_NUM_WORKERS,
    DEFAULT_OUTPUTS,
    DEFAULT_PREFETCH_AHEAD,
)
from cliprnn.fiftyone.engine import get_car, resolve_config
from cliprnn.fiftyone.faults import fault_point
from cliprnn.fiftyone.files import validate_output_dir, write_png_atomic
from cliprnn.fiftyone.instances import INSTANCE_MODES
from cliprnn.fiftyone.lock import FieldLock, dataset_edit
from cliprnn.fiftyone.queries import (
    assign_values,
    check_exemplar_names,
    clean_queries,
    describe_exemplars,
    resolve_queries,
    sample_queries,
)
from cliprnn.fiftyone.results import DatabaseError, Progress, RunSummary, SampleError
from cliprnn.fiftyone.runs import record_run, record_run_results, run_key_for
from cliprnn.fiftyone.scheduled import reserved_fields
from cliprnn.fiftyone.spec import restore_run, run_spec
from cliprnn.fiftyone.stores import Batch, FramesViewFields, SampleFields
from cliprnn.fiftyone.superseded import Superseded, relabel_fingerprint
from cliprnn.imageio import load_image
from cliprnn.pipeline import segment_stream
from cliprnn.prefetch import prefetch


class SegmentationRun:
    """A validated run over a collection. Everything that can be checked without touching a
    sample (parameters, fields, output folder, models) is checked in the constructor.

    A frames view (``to_frames()``) runs like images, and its labels land in the video's
    frame fields. A video collection needs :class:`cliprnn.fiftyone.video.VideoSegmentationRun`
    (frame-level fields): :func:`cliprnn.fiftyone.make_run` picks the run for a collection,
    and this class refuses a video collection with a ConfigError saying so."""

    def __init__(
        self,
        sample_collection: fo.core.collections.SampleCollection,
        queries: Sequence[str | Exemplars] | str | None = None,
        classes_from: str | None = None,
        label_field: str = DEFAULT_LABEL_FIELD,
        config: CaRConfig | str | Mapping[str, Any] | None = None,
        outputs: Sequence[str] = DEFAULT_OUTPUTS,
        output_dir: str | None = None,
        overwrite: bool = False,
        skip_existing: bool = False,
        skip_failures: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        allow_media_dir: bool = False,
        num_workers: int = DEFAULT_NUM_WORKERS,
        prefetch_ahead: int = DEFAULT_PREFETCH_AHEAD,
        classes: Sequence[str] | None = None,
        queries_from: str | None = None,
        instances: str = DEFAULT_INSTANCES,
        load_model: bool = True,
        reservation: str | None = None,
        **config_overrides: Any,
    ) -> None:
        coll = sample_collection
        #: The token of the scheduled run this is (its reserved field is its own to write).
        self.reservation = reservation
        self.collection = coll
        self.dataset = coll._root_dataset
        self._check_media(coll)
        if config_overrides.pop("frame_step", None) not in (None, 1):
            raise ConfigError(
                "frame_step labels every k-th frame of a video; this collection holds images "
                "(on a frames view, match the frame_number values to label instead)"
            )
        #: Where the label fields live, and the error field (frame fields on a frames view).
        self.store, self.error_store = self._stores(coll)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(outputs, str):
            outputs = [outputs]
        self.outputs = list(dict.fromkeys(outputs))
        #: The stored calibration ``config`` names ("calibration:<name>"), for the record.
        self.calibration = None
        if isinstance(config, str) and config.startswith("calibration:"):
            from cliprnn.fiftyone.calibration import stored_config

            self.calibration = config.partition(":")[2].strip()
            config = stored_config(self.dataset, config)
        self.config = resolve_config(config, **config_overrides)
        if instances not in INSTANCE_MODES:
            raise ConfigError(f"instances must be one of {list(INSTANCE_MODES)}, got {instances!r}")
        self.instances = instances
        self.queries_from = queries_from or None
        self.per_sample: dict[str, list[str]] | None = None
        if isinstance(queries, str):
            queries = queries.splitlines()
        names, self.exemplars = split_queries(queries or [])
        resolved = resolve_queries(coll, names, classes_from, classes, bool(queries_from))
        #: The queries every sample gets (with ``queries_from``, after the sample's own).
        self.shared_queries = list(resolved.queries)
        if self.queries_from:
            own = sample_queries(coll, self.queries_from)
            self.per_sample = {
                sid: clean_queries([*names, *resolved.queries]) for sid, names in own.items()
            }
            every = clean_queries(
                [*(q for names in own.values() for q in names), *resolved.queries]
            )
            if not every:
                raise QueryError(
                    f"no queries: no sample has labels in '{self.queries_from}' and no other "
                    "queries were given"
                )
            resolved.queries = every
            check_exemplar_names(self.exemplars, [q for n in own.values() for q in n],
                                  f"the labels in '{self.queries_from}'")  # fmt: skip
        check_exemplar_names(self.exemplars, resolved.source_names,
                              f"the classes of {classes_from!r}")  # fmt: skip
        self.queries = resolved.queries
        self.classes_from = resolved.source
        self.source_values = resolved.source_values
        L.check_field_name(label_field)
        self.label_field = label_field
        self.overwrite, self.skip_existing = overwrite, skip_existing
        self.skip_failures = skip_failures
        self.batch_size, self.num_workers = batch_size, max(0, int(num_workers))
        self.prefetch_ahead = max(0, int(prefetch_ahead))
        self.summary = RunSummary(label_field, [], {}, run_key=run_key_for(label_field))
        self._plan()

        self.output_dir: Path | None = None
        if output_dir:
            media = self.paths or coll.values("filepath")
            root = validate_output_dir(output_dir, media, allow_media_dir)
            self.output_dir = root / label_field
        elif self.fields.heatmaps:
            root = Path(fo.config.default_dataset_dir) / "cliprnn" / str(self.dataset._doc.id)
            self.output_dir = validate_output_dir(root, (), True) / label_field
        #: The engine; ``load_model=False`` (planning a sharded run) leaves it to the workers.
        self.car = get_car(self.config) if load_model else None
        self.summary.output_dir = str(self.output_dir) if self.output_dir else None

    def _plan(self) -> None:
        """Decide everything that depends on the field's current state: mask values (the
        field's existing classes keep theirs), output fields, the field checks, and the
        samples to segment. Done when the run is built (to fail early) and again under the
        field's lock (the state may have changed while the models loaded)."""
        targets_key = self.store.prefix + self.label_field
        existing = {int(k): v for k, v in self.dataset.mask_targets.get(targets_key, {}).items()}
        if existing and self.overwrite and self._rewrites_whole_field():
            existing = {}  # every sample holding the field is relabelled: its classes go
        self.values = assign_values(self.queries, self.source_values, existing)
        self.fields = L.output_fields(self.label_field, self.outputs, self.values)
        self._check_fields(self.overwrite, self.skip_existing)
        self.mask_targets = {**existing, **{v: q for q, v in self.values.items()}}
        self.dtype = L.mask_dtype(max(self.mask_targets))

        every, paths = self.collection.values(["id", "filepath"])
        pending = self._pending(self.collection) if self.skip_existing else None
        pairs = zip(every, paths, strict=True)
        todo = [(s, p) for s, p in pairs if pending is None or s in pending]
        self.ids, self.paths = [s for s, _ in todo], [p for _, p in todo]
        self.skipped = len(every) - len(self.ids)
        no_queries: list[str] = []
        if self.per_sample is not None:
            keep = [bool(self.per_sample.get(sid)) for sid in self.ids]
            no_queries = [sid for sid, k in zip(self.ids, keep, strict=True) if not k]
            self.ids = [sid for sid, k in zip(self.ids, keep, strict=True) if k]
            self.paths = [p for p, k in zip(self.paths, keep, strict=True) if k]
            self.skipped += len(no_queries)
        self.summary.fields = self._summary_fields()
        self.summary.mask_targets = dict(sorted(self.mask_targets.items()))
        self.summary.skipped = self.skipped
        self.summary.no_queries = no_queries

    def _summary_fields(self) -> list[str]:
        """The fields the summary lists."""
        return self.fields.all()

    def _rewrites_whole_field(self) -> bool:
        """True when every sample (frame) that holds the field is relabelled by this run, so
        the field's old classes mean nothing any more; a run on a subset keeps them."""
        if self.skip_existing:
            return False
        path = self.store.prefix + self.label_field
        if not self.store.has(self.label_field):
            return True
        own = self.label_field if getattr(self.collection, "_is_frames", False) else path
        return self.collection.count(own) >= self.dataset.count(path)

    def _check_media(self, coll: fo.core.collections.SampleCollection) -> None:
        """ConfigError unless the run can segment ``coll``'s media."""
        _check_collection(coll)

    def _stores(
        self, coll: fo.core.collections.SampleCollection
    ) -> tuple[SampleFields, SampleFields]:
        """Where the run writes its label fields, and its error field."""
        if getattr(coll, "_is_frames", False):
            store: SampleFields = FramesViewFields(coll)
        else:
            store = SampleFields(self.dataset)
        return store, store

    def _pending(self, coll: fo.core.collections.SampleCollection) -> set[str] | None:
        """The ids of the samples of ``coll`` that ``skip_existing`` leaves to segment (None:
        all): those lacking any output the run writes on every sample (mask, instances,
        scores), or whose mask or heatmap file is gone."""
        f = self.fields
        missing = None
        for name in (f.segmentation, f.detections, f.scores):
            if not name:
                continue
            if not self.store.has(name):
                return None
            lacks = F(name) == None  # noqa: E711 (a query expression)
            missing = lacks if missing is None else missing | lacks
        ids = set(coll.match(missing).values("id")) if missing is not None else set()
        files = [f"{f.segmentation}.mask_path"] if f.segmentation else []
        files += [f"{name}.map_path" for name in f.heatmaps.values() if self.store.has(name)]
        for path in files:
            have = coll.exists(path)
            for sid, file in zip(*have.values(["id", path]), strict=True):
                if not os.path.exists(file):
                    ids.add(sid)
        return ids

    def _check_fields(self, overwrite: bool, skip_existing: bool) -> None:
        held = reserved_fields(self.dataset, except_token=self.reservation)
        if self.fields.label_field in held:
            raise ConfigError(
                f"field '{self.fields.label_field}' is reserved by {held[self.fields.label_field]}"
                "; choose another label_field, or wait for that run to finish"
            )
        schema = self.store.schema()
        error_field = self.error_store.schema().get(self.fields.error)
        if error_field is not None:
            if not isinstance(error_field, fo.StringField):
                raise ConfigError(
                    f"field '{self.fields.error}' exists and is not a string field; the run "
                    "records per-sample errors there, so choose another label_field"
                )
            if not overwrite and not skip_existing:
                raise ConfigError(
                    f"field '{self.fields.error}' (errors of an earlier run) already exists; "
                    "pass overwrite=True or skip_existing=True, or choose another label_field"
                )
        wanted = {
            self.fields.segmentation: fo.Segmentation,
            self.fields.detections: fo.Detections,
            self.fields.scores: fo.Classifications,
            **{f: fo.Heatmap for f in self.fields.heatmaps.values()},
        }
        for name, cls in wanted.items():
            if name is None or name not in schema:
                continue
            doc_type = getattr(schema[name], "document_type", None)
            if doc_type is not cls:
                raise ConfigError(
                    f"field '{name}' exists and holds {getattr(doc_type, '__name__', doc_type)}, "
                    f"not {cls.__name__}; choose another label_field"
                )
            if not overwrite and not skip_existing:
                raise ConfigError(
                    f"field '{name}' already exists; pass overwrite=True to replace it, or "
                    "skip_existing=True to fill only the samples that lack it"
                )

    def __iter__(self) -> Iterator[Progress]:
        """Segment the samples in order, writing every ``batch_size`` results at once and
        yielding progress after each write.

        Images are decoded on ``num_workers`` threads, up to ``prefetch_ahead`` samples ahead of
        inference. A failure that stops the run (``skip_failures`` off, an interrupt) still
        writes the results finished before it.
        """
        lock = FieldLock(str(self.dataset._doc.id), self.dataset.name, self.fields.label_field)
        with lock:
            self.dataset.reload()
            self._plan()  # decided again under the lock: the field may have changed meanwhile
            self._prepare_dataset()
            record_run(self.collection, self.fields.label_field, self._record())
            fault_point("prepared")
            yield from self.segment_samples(lambda done: lock.refresh())
            fault_point("finished")
            record_run_results(self.collection, self.fields.label_field, self.summary.to_dict())

    def segment_samples(self, on_write: Callable[[int], Any] | None = None) -> Iterator[Progress]:
        """The sample loop alone: segment ``self.ids`` in order and write them in batches,
        calling ``on_write(done)`` after each write (``done`` = samples written so far, always
        a prefix of ``self.ids``) and yielding progress. It takes no lock and declares no
        field: :meth:`__iter__` does both, and a sharded run does them once, when planned."""
        start = time.perf_counter()
        total = len(self.ids)
        if self.car is None:
            self.car = get_car(self.config)
        done = 0
        batch = Batch(self.fields.all())

        def flush() -> int:
            nonlocal done
            n = self._flush(batch)
            if n:
                done += n
                if on_write is not None:
                    on_write(done)
            return n

        items = zip(self.ids, self.paths, strict=True)
        load = functools.partial(_load, max_pixels=self.config.max_image_pixels)
        loaded = prefetch(items, load, workers=self.num_workers, ahead=self.prefetch_ahead)
        stream = segment_stream(self.car, loaded, self._queries_for, post=self._labels_of)
        with contextlib.closing(loaded), contextlib.closing(stream):
            try:
                for (sid, path), outcome in stream:
                    self._record_one(sid, path, outcome, batch)
                    if len(batch) >= self.batch_size:
                        flush()
                        yield self._progress(done, total, start)
                if len(batch):
                    flush()
                    yield self._progress(done, total, start)
            finally:
                flush()
        self.summary.seconds = time.perf_counter() - start

    @classmethod
    def from_spec(
        cls,
        dataset: fo.Dataset,
        spec: Mapping[str, Any],
        ids: Sequence[str],
        load_model: bool = True,
    ) -> SegmentationRun:
        """The run a shard of a planned run executes: the settings fixed by :meth:`spec`
        (queries, mask values, mask targets, fields, config) over the samples ``ids`` of
        ``dataset``, in that order. Samples deleted since are skipped; with ``queries_from``
        each sample is queried for its own labels now, limited to the planned queries."""
        run = cls.__new__(cls)
        restore_run(run, dataset, spec, ids, load_model)
        return run

    def spec(self) -> dict[str, Any]:
        """Everything the shards of a sharded run must agree on, JSON- and BSON-safe."""
        return run_spec(self)

    def _record(self) -> dict[str, Any]:
        """What the run record keeps: fields, queries and their source, settings, config."""
        f = self.fields
        return dict(
            fields=dict(  # paths in the root dataset ("frames.<name>" for frame fields)
                segmentation=self.store.path(f.segmentation),
                detections=self.store.path(f.detections),
                heatmaps={q: self.store.path(n) for q, n in f.heatmaps.items()},
                error=self.error_store.path(f.error),
                scores=self.store.path(f.scores),
            ),
            queries=list(self.queries),
            exemplars={name: describe_exemplars(e) for name, e in self.exemplars.items()},
            classes_from=self.classes_from,
            queries_from=self.queries_from,
            instances=self.instances,
            mask_targets={str(k): v for k, v in self.mask_targets.items()},
            outputs=list(self.outputs),
            output_dir=str(self.output_dir) if self.output_dir else None,
            overwrite=self.overwrite,
            skip_existing=self.skip_existing,
            skip_failures=self.skip_failures,
            config=self.config.to_dict(),
            calibration=getattr(self, "calibration", None),
        )

    def run(self, progress: bool | Callable[[Progress], Any] | None = None) -> RunSummary:
        """Run to the end; ``progress`` is True/None for a progress bar (FiftyOne's default
        setting), False for none, or a callable receiving each Progress."""
        if callable(progress):
            for p in self:
                progress(p)
            return self.summary
        with fou.ProgressBar(total=len(self.ids), progress=progress) as pb:
            last = 0
            for p in self:
                pb.update(p.done - last)
                last = p.done
        return self.summary

    def _progress(self, done: int, total: int, start: float) -> Progress:
        self.summary.seconds = time.perf_counter() - start
        return Progress(done, total, self.summary.failed)

    def _queries_for(self, key: tuple[str, str]) -> list[str | Exemplars]:
        names = self.queries if self.per_sample is None else self.per_sample[key[0]]
        return [self.exemplars.get(q, q) for q in names]

    def _record_one(self, sid: str, path: str, outcome: Any, batch: Batch) -> None:
        """Put one sample's labels (or its failure: a load, segmentation or label error) into
        ``batch``; a failure is recorded when ``skip_failures`` is on and raised as SampleError
        otherwise."""
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            for name, label in outcome.items():
                batch.labels[name][sid] = label
            batch.errors[sid] = None
        except Exception as e:
            for values in batch.labels.values():
                values.pop(sid, None)
            if not self.skip_failures:
                raise SampleError(sid, path, e) from e
            batch.errors[sid] = self._note_failure(sid, e)
            for values in batch.labels.values():
                values[sid] = None

    def _note_failure(self, sid: str, exc: BaseException) -> str:
        """Count a skipped failure of sample ``sid`` in the summary; returns its message."""
        self.summary.failed += 1
        msg = f"{type(exc).__name__}: {exc}"
        if len(self.summary.errors) < 20:
            self.summary.errors.append((sid, msg))
        return msg

    def _flush(self, batch: Batch) -> int:
        """Write and empty ``batch``; returns how many samples it held."""
        labels, errors = batch.take()
        if errors:
            fault_point("before_write")
            try:
                self._write(labels, errors)
            except pymongo.errors.PyMongoError as e:
                raise DatabaseError(self.summary.processed, len(errors), e) from e
            fault_point("after_write")
            self.summary.processed += sum(v is None for v in errors.values())
        return len(errors)

    def _labels_of(self, key: tuple[str, str], result: Any) -> dict[str, Any]:
        """Every output label of one sample (files written first); runs on a CRF worker
        thread when ``crf_workers`` > 0, so it only reads the run's settings."""
        return self.labels_for(key[0], result)

    def labels_for(self, sid: str, result: Any) -> dict[str, Any]:
        """Every output label of one result, by field; its mask and heatmap files (if any) are
        named after ``sid``."""
        f = self.fields
        labels: dict[str, Any] = {}
        result = L.without_specks(result, self.config.min_region_pixels)
        if f.segmentation:
            path = None
            if self.output_dir is not None:
                mask = L.semantic_mask(result, self.values, self.dtype)
                path = write_png_atomic(mask, self.output_dir / "masks" / f"{sid}.png")
            labels[f.segmentation] = L.segmentation_label(
                result, self.values, self.dtype, mask_path=path
            )
        if f.detections:
            labels[f.detections] = L.detections_label(result, self.values, self.instances)
        labels[f.scores] = L.scores_label(result)
        if f.heatmaps:
            maps = L.heatmap_arrays(result)
            for q, name in f.heatmaps.items():
                if q not in maps:
                    labels[name] = None
                    continue
                p = self.output_dir / "heatmaps" / f"{sid}_{self.values[q]}.png"
                labels[name] = fo.Heatmap(
                    map_path=write_png_atomic(maps[q], p), range=[0, 255], query=q
                )
        return labels

    def _write(self, labels: dict[str, dict[str, Any]], errors: dict[str, str | None]) -> None:
        """Write a batch: each sample's labels (and error) in one update, so a sample is
        written whole or not at all."""
        error = self.fields.error
        if errors and (any(errors.values()) or self.error_store.has(error)):
            if not self.error_store.has(error):
                with dataset_edit(self.dataset):
                    self.error_store.declare(error, fo.StringField)
            if self.error_store is self.store:
                labels = {**labels, error: dict(errors)}
            else:
                self.error_store.write({error: dict(errors)})
        if self.overwrite:
            self._supersede(errors)
        self.store.write({name: values for name, values in labels.items() if values})

    def _supersede(self, ids: Iterable[str]) -> None:
        """Record the instances an overwrite replaces on samples ``ids`` as superseded, so an
        old copy the App still holds is refused by the next fold-back, not folded in."""
        det = self.fields.detections
        if not det or self.store.prefix or not self.store.has(det):
            return
        replaced = Superseded(self.dataset, self.fields.label_field)
        view = self.dataset.select(list(ids)).exists(det)
        for sid, dets in zip(*view.values(["id", f"{det}.detections"]), strict=True):
            replaced.add(sid, [relabel_fingerprint(d) for d in dets or []])
        replaced.flush()

    def _prepare_dataset(self, declare_error: bool = False) -> None:
        """Declare the output fields (a batch may hold only None) and record mask targets.

        ``declare_error`` also declares the error field when failures are skipped (a sharded
        run: its shards must not add a field to the schema, as two could race)."""
        with dataset_edit(self.dataset):
            self._declare_outputs(declare_error)

    def _declare_outputs(self, declare_error: bool) -> None:
        ds = self.dataset
        f = self.fields
        types = {
            f.segmentation: fo.Segmentation,
            f.detections: fo.Detections,
            f.scores: fo.Classifications,
            **{name: fo.Heatmap for name in f.heatmaps.values()},
        }
        self.store.declare_labels({name: cls for name, cls in types.items() if name})
        if declare_error and self.skip_failures:
            self.error_store.declare(f.error, fo.StringField)
        seg, det = self.store.path(f.segmentation), self.store.path(f.detections)
        if seg:
            ds.mask_targets = {**ds.mask_targets, seg: self.mask_targets}
        if det:
            ds.classes = {**ds.classes, det: list(dict.fromkeys(self.mask_targets.values()))}
        hide_by_default(ds, self.store.path(f.scores))
        ds.save()
        if det:
            make_editable(ds, det, list(dict.fromkeys(self.mask_targets.values())))
        match_colors(ds, self.mask_targets, seg, det)


def _load(item: tuple[str, str], max_pixels: int | None = None) -> Any:
    return load_image(item[1], max_pixels)


def _check_collection(coll: fo.core.collections.SampleCollection) -> None:
    if coll.media_type == "video":
        raise ConfigError(
            "SegmentationRun segments images; for a video collection use "
            "cliprnn.fiftyone.make_run(collection, ...) (or VideoSegmentationRun), which "
            "labels its frames"
        )
    if coll.media_type != "image":
        raise ConfigError(
            f"CaR segments images and videos; this collection's media type is "
            f"'{coll.media_type}'"
            + (" (select one group slice first)" if coll.media_type == "group" else "")
        )
    if getattr(coll, "_is_patches", False):
        raise ConfigError("CaR segments whole images; run it on the dataset, not a patches view")
    if getattr(coll, "_is_frames", False):
        sampled = (coll._frames_stage.config or {}).get("sample_frames")
        if sampled == "dynamic":
            raise ConfigError(
                "this frames view reads its frames from the videos (sample_frames='dynamic'); "
                "run segment on the video collection itself, or on to_frames(sample_frames=True)"
            )
