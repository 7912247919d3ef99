"""Segment the frames of a collection's videos with CaR and store them as frame-level fields.

A video run labels ``frames.<label_field>`` (and ``frames.<label_field>_det``,
``frames.<label_field>_scores``, heatmaps) on every ``frame_step``-th frame, from frame 1,
carrying the query set from frame to frame (:func:`cliprnn.video.segment_video`). Frames are
written in batches of ``batch_size``, so an interrupted run keeps its finished frames; with
``skip_existing`` a frame that has the field is not segmented again, and carrying resumes
from the stored labels of the frames before it (each frame's scores label records where its
recurrence started and what it kept), so a resumed run writes what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
from fiftyone import ViewField as F

from cliprnn.errors import ConfigError
from cliprnn.fiftyone.engine import get_car
from cliprnn.fiftyone.results import Progress, RunSummary, SampleError
from cliprnn.fiftyone.run import SegmentationRun
from cliprnn.fiftyone.stores import Batch, FrameFields, SampleFields
from cliprnn.video import LabelledFrame, segment_video


@dataclass
class VideoProgress(Progress):
    """How far a video run has got: videos done (written, skipped or failed) out of ``total``,
    and frames labelled (now or before) out of the frames to label (from the videos'
    metadata)."""

    frames_done: int = 0
    frames_total: int = 0

    @property
    def fraction(self) -> float:
        if not self.frames_total:
            return super().fraction
        return min(1.0, self.frames_done / self.frames_total)

    @property
    def label(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"Segmented {self.frames_done}/{self.frames_total} frames of {self.done}/"
            f"{self.total} videos{failed}"
        )


@dataclass
class VideoRunSummary(RunSummary):
    """What a video run did: ``processed`` / ``skipped`` / ``failed`` count videos,
    ``frames`` the frames labelled now, ``frames_skipped`` those labelled before (kept)."""

    frames: int = 0
    frames_skipped: int = 0
    frame_step: int = 1
    labelled_frames: str = "every frame"


def labelled_frames(frame_step: int) -> str:
    """Which frames a run with ``frame_step`` labels, in words ("every 3rd frame from 1")."""
    if frame_step == 1:
        return "every frame"
    last = frame_step % 10 if frame_step % 100 not in (11, 12, 13) else 0
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(last, "th")
    k = frame_step
    return f"every {k}{suffix} frame from 1 (1, {1 + k}, {1 + 2 * k}, ...)"


def carry_record(scores: fo.Classifications | None) -> LabelledFrame:
    """What carrying the query set needs from a labelled frame, read from its scores label:
    where its recurrence started, the queries it kept, the full query list. A frame whose
    scores this module did not write makes the next frame start from the full list."""
    start = getattr(scores, "start", None) if scores is not None else None
    if start is None:
        return LabelledFrame("scratch", (), ())
    labels = scores.classifications
    return LabelledFrame(
        str(start),
        tuple(c.label for c in labels if c.kept),
        tuple(c.label for c in labels),
    )


class VideoSegmentationRun(SegmentationRun):
    """A validated run over the videos of a collection, writing frame-level fields.

    Takes the arguments of :class:`cliprnn.fiftyone.SegmentationRun` plus ``frame_step``
    (label frames 1, 1 + k, 1 + 2k, ...; the others are left empty). Carrying the query set
    through time is the config's ``carry_queries`` (on by default; ``carry_queries=False``
    segments every frame from the full list), with its ``refresh_every`` and
    ``scene_cut_threshold``. ``skip_existing`` works per frame; ``overwrite`` clears a video's
    earlier frame labels before relabelling it. A video that cannot be decoded (missing,
    corrupt, truncated, no frame) fails as one sample: a :class:`SampleError` naming it, or
    with ``skip_failures`` its message in the sample-level ``<label_field>_error`` field,
    the frames labelled before the fault kept.
    """

    def __init__(
        self,
        sample_collection: fo.core.collections.SampleCollection,
        *args: Any,
        frame_step: int = 1,
        **kwargs: Any,
    ) -> None:
        if isinstance(frame_step, bool) or not isinstance(frame_step, int) or frame_step < 1:
            raise ConfigError(f"frame_step must be an integer >= 1, got {frame_step!r}")
        self.frame_step = frame_step
        super().__init__(sample_collection, *args, **kwargs)
        self.summary = VideoRunSummary(
            **vars(self.summary),
            frame_step=frame_step,
            labelled_frames=labelled_frames(frame_step),
        )

    # -- the hooks of SegmentationRun ------------------------------------------------------

    def _check_media(self, coll: fo.core.collections.SampleCollection) -> None:
        if coll.media_type != "video":
            raise ConfigError(f"expected a video collection, got media type '{coll.media_type}'")
        if getattr(coll, "_is_clips", False):
            raise ConfigError(
                "clips views are not segmented; run on the video dataset or a view of its "
                "samples (frame_step chooses the frames)"
            )

    def _stores(
        self, coll: fo.core.collections.SampleCollection
    ) -> tuple[SampleFields, SampleFields]:
        """Labels in frame fields, each video's error in a sample field."""
        return FrameFields(self.dataset), SampleFields(self.dataset)

    def _pending(self, coll: fo.core.collections.SampleCollection) -> set[str] | None:
        """Every video: ``skip_existing`` skips frames, not samples (see segment_samples)."""
        return None

    def _summary_fields(self) -> list[str]:
        return [self.store.path(n) for n in self.fields.all()]

    def _record(self) -> dict[str, Any]:
        record = super()._record()
        record.update(
            media_type="video",
            frame_step=self.frame_step,
            labelled_frames=labelled_frames(self.frame_step),
            carry_queries=self.config.carry_queries,
        )
        return record

    # -- the frame loop --------------------------------------------------------------------

    def segment_samples(
        self, on_write: Callable[[int], Any] | None = None
    ) -> Iterator[VideoProgress]:
        """Segment the videos in order, writing every ``batch_size`` labelled frames at once
        and yielding progress after each write and each video; ``on_write(videos done)``
        runs after each write. Videos without ``metadata`` get it first (the App's video
        player needs it, and its frame count sizes the progress)."""
        started = time.perf_counter()
        if self.car is None:
            self.car = get_car(self.config)
        counts = self._frame_counts()
        step = self.frame_step
        total = sum(math.ceil(c / step) for c in counts.values() if c)
        progress = VideoProgress(0, len(self.ids), 0, frames_total=total)
        batch = _FrameBatch(self.fields.all())

        def flush() -> None:
            labels, errors = batch.take()
            if errors or any(labels.values()):
                self._write(labels, errors)
                if on_write is not None:
                    on_write(progress.done)

        def report() -> VideoProgress:
            self.summary.seconds = time.perf_counter() - started
            progress.failed = self.summary.failed
            return dataclasses.replace(progress)

        try:
            for sid, path in zip(self.ids, self.paths, strict=True):
                for _ in self._segment_video(sid, path, counts.get(sid), batch, progress):
                    flush()
                    yield report()
                progress.done += 1
                yield report()
        finally:
            flush()
        self.summary.seconds = time.perf_counter() - started

    def _segment_video(
        self,
        sid: str,
        path: str,
        count: int | None,
        batch: _FrameBatch,
        progress: VideoProgress,
    ) -> Iterator[None]:
        """Label one video's frames into ``batch``, yielding whenever it holds ``batch_size``
        frames; the video's outcome goes to ``batch.errors`` and the summary."""
        done = self._labelled(sid) if self.skip_existing else {}
        ours = sum(1 for i in done if i % self.frame_step == 0)
        progress.frames_done += ours
        self.summary.frames_skipped += ours
        if count and all(i in done for i in range(0, count, self.frame_step)):
            self.summary.skipped += 1
            return
        if self.overwrite and not self.skip_existing:
            self.dataset.select(sid).clear_frame_fields(self.fields.all())
        try:
            frames = segment_video(
                self.car,
                path,
                self._queries_for((sid, path)),
                frame_step=self.frame_step,
                done=done,
            )
            with contextlib.closing(frames):
                for frame in frames:
                    number = frame.index + 1  # FiftyOne numbers frames from 1
                    labels = self.labels_for(f"{sid}_{number}", frame.result)
                    labels[self.fields.scores].set_field("start", frame.start)
                    batch.add(sid, number, labels)
                    self.summary.frames += 1
                    progress.frames_done += 1
                    if batch.frames >= self.batch_size:
                        yield
        except Exception as e:
            if not self.skip_failures:
                raise SampleError(sid, path, e) from e
            batch.errors[sid] = self._note_failure(sid, e)
        else:
            batch.errors[sid] = None
            self.summary.processed += 1

    def _frame_counts(self) -> dict[str, int | None]:
        """Each video's frame count from its metadata (computed where missing)."""
        videos = self.dataset.select(self.ids)
        missing = videos.exists("metadata", False)
        if missing.count():
            missing.compute_metadata(progress=False)
        ids, counts = videos.values(["id", "metadata.total_frame_count"])
        return dict(zip(ids, counts, strict=True))

    def _labelled(self, sid: str) -> dict[int, LabelledFrame]:
        """The frames of video ``sid`` that hold every output the run writes on each frame
        (mask, instances, scores; they are written field by field), by frame index (from 0),
        with what carrying needs from each."""
        f = self.fields
        written = [F(n).exists() for n in (f.segmentation, f.detections, f.scores) if n]
        view = self.dataset.select(sid).match_frames(F.all(written))
        numbers, scores = view.values(["frames.frame_number", f"frames.{f.scores}"])
        if not numbers:
            return {}
        return {n - 1: carry_record(s) for n, s in zip(numbers[0], scores[0], strict=True)}


class _FrameBatch(Batch):
    """Frame labels waiting to be written (per output field: video sample id -> frame number
    -> label), and the error (None when it succeeded) of each video finished since."""

    def __init__(self, fields: Sequence[str]) -> None:
        super().__init__(fields)
        self.frames = 0

    def add(self, sid: str, number: int, labels: Mapping[str, Any]) -> None:
        """Add the labels of frame ``number`` of video ``sid``."""
        for name, label in labels.items():
            self.labels[name].setdefault(sid, {})[number] = label
        self.frames += 1

    def take(self) -> tuple[dict[str, dict[str, Any]], dict[str, str | None]]:
        self.frames = 0
        return super().take()
