"""Video: streamed frame reading (decoded ahead of inference) and CaR over a clip's frames.

:func:`read_frames` decodes a file with PyAV (FFmpeg) one frame at a time on a background
thread, a few frames ahead of the consumer, in presentation order; the whole video is never in
memory. :func:`segment_video` runs :class:`cliprnn.car.CaR` on the frames and can carry the
query set through time: a frame's recurrence starts from the previous labelled frame's kept
queries instead of the full list, and restarts from the full list on the first frame, every
``refresh_every`` frames, after a frame that kept nothing, and on a scene cut (consecutive
labelled frames whose CLIP image embeddings' cosine falls below ``scene_cut_threshold``).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from cliprnn.errors import VideoError

if TYPE_CHECKING:
    from cliprnn.car import CaR
    from cliprnn.result import CaRResult

T = TypeVar("T")

#: What a frame with a new size becomes: resized to the first frame's size, kept, or an error.
SIZE_CHANGES = ("resize", "keep", "error")

#: Why a frame's recurrence started where it did (VideoFrameResult.start).
STARTS = ("first", "refresh", "scene_cut", "empty", "carried", "scratch")


@dataclass(frozen=True)
class VideoInfo:
    """What a video file's header says: its first video stream's size, rate and length.

    ``frame_count`` is the container's count, or one estimated from its duration, or None.
    """

    path: Path
    width: int
    height: int
    fps: float
    frame_count: int | None
    codec: str
    pix_fmt: str | None
    container: str


def _open(path: Path) -> Any:
    """The opened PyAV container of ``path`` and its first video stream (VideoError if none)."""
    import av

    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{path}: not a readable video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: the file holds no video stream (no frames)")
    return container, container.streams.video[0]


def _expected_frames(container: Any, stream: Any) -> tuple[int | None, bool]:
    """(frame count, exact?): the container's count, else one estimated from its duration."""
    if stream.frames:
        return int(stream.frames), True
    rate = stream.average_rate or stream.guessed_rate
    if container.duration and rate:
        return round(container.duration / 1_000_000 * float(rate)), False
    return None, False


def probe_video(path: str | Path) -> VideoInfo:
    """The header of a video file; raises VideoError naming the file if it cannot be read."""
    path = Path(path)
    container, stream = _open(path)
    with container:
        count, _ = _expected_frames(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        ctx = stream.codec_context
        return VideoInfo(
            path=path,
            width=int(ctx.width),
            height=int(ctx.height),
            fps=float(rate) if rate else 0.0,
            frame_count=count,
            codec=ctx.name,
            pix_fmt=ctx.pix_fmt,
            container=container.format.name,
        )


def read_frames(
    path: str | Path,
    *,
    step: int = 1,
    ahead: int = 4,
    size_change: str = "resize",
) -> Iterator[np.ndarray]:
    """Frames of a video file as RGB uint8 [H, W, 3], in order, decoded ``ahead`` frames early.

    Yields frames 0, ``step``, 2·``step``, ... (every frame is decoded; the others are not
    converted). A frame whose size differs from the first one's is resized to it
    (``size_change="resize"``), yielded as decoded (``"keep"``) or refused (``"error"``).
    A file that cannot be opened raises VideoError here; one that holds no frame, is
    truncated (fewer frames than its header announces) or fails to decode raises VideoError,
    naming the file, when the iteration reaches the fault. ``ahead=0`` decodes in the
    consumer's thread.
    """
    path = Path(path)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if size_change not in SIZE_CHANGES:
        raise ValueError(f"size_change must be one of {list(SIZE_CHANGES)}, got {size_change!r}")
    probe_video(path)  # a missing or unreadable file fails now, not at the first frame
    return read_ahead(_decode(path, step, size_change), ahead)


def _decode(path: Path, step: int, size_change: str) -> Iterator[np.ndarray]:
    import av

    container, stream = _open(path)
    with container:
        expected, exact = _expected_frames(container, stream)
        stream.thread_type = "AUTO"
        first: tuple[int, int] | None = None
        index = 0
        try:
            for frame in container.decode(stream):
                hw = (frame.height, frame.width)
                if first is None:
                    first = hw
                elif hw != first and size_change == "error":
                    raise VideoError(
                        f"{path}: frame {index} is {hw[1]}x{hw[0]}, the video started at "
                        f"{first[1]}x{first[0]}"
                    )
                if index % step == 0:
                    if hw != first and size_change == "resize":
                        frame = frame.reformat(width=first[1], height=first[0])
                    yield frame.to_ndarray(format="rgb24")
                index += 1
        except av.FFmpegError as exc:
            raise VideoError(
                f"{path}: decoding failed after {index} frame(s), the file is corrupt or "
                f"truncated ({exc})"
            ) from exc
    if index == 0:
        raise VideoError(f"{path}: the video holds no frames")
    # An estimate from the duration may be off by one; the container's count is exact.
    if expected is not None and index < expected - (0 if exact else 1):
        raise VideoError(
            f"{path}: truncated video, decoded {index} of the {expected} frames its header "
            "announces"
        )


_END = object()


def read_ahead(items: Iterable[T], ahead: int = 4) -> Iterator[T]:
    """Yield ``items`` in order while a background thread produces up to ``ahead`` more.

    The image path's prefetch (:mod:`cliprnn.prefetch`) loads independent items on a pool;
    decoding a video is one sequential producer, so here one thread runs it into a bounded
    queue. An exception raised by the producer is re-raised to the consumer at its place in
    the order. Closing the returned generator stops the thread and closes ``items``.
    ``ahead=0`` produces in the consumer's thread.
    """
    if ahead < 0:
        raise ValueError(f"ahead must be >= 0, got {ahead}")
    if ahead == 0:
        yield from items
        return
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put((True, item)):
                    return
            put((False, _END))
        except BaseException as exc:  # handed to the consumer
            put((False, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="cliprnn-video-decode", daemon=True)
    worker.start()
    try:
        while True:
            ok, value = slots.get()
            if ok:
                yield value
            elif value is _END:
                return
            else:
                raise value
    finally:
        stop.set()
        worker.join()


# --------------------------------------------------------------------------------------------
# segmentation


@dataclass
class VideoFrameResult:
    """One labelled frame of :func:`segment_video`.

    ``result`` is laid out as ``car.segment(frame, queries)`` would return it, whatever subset
    the recurrence started from: ``result.queries`` is the full normalised query list and
    ``label_map`` holds 0 for background and i + 1 for ``result.queries[i]``. ``start`` says
    where the recurrence started: ``"first"``, ``"refresh"``, ``"scene_cut"``, ``"empty"``
    (the previous labelled frame kept nothing) and ``"scratch"`` (carrying off) start from the
    full list, ``"carried"`` from ``queried``, the previous labelled frame's kept queries.
    """

    index: int  # frame index in the video, from 0
    result: CaRResult
    start: str
    queried: list[str]  # the queries the recurrence started from
    similarity: float | None  # cosine of the CLIP embeddings to the previous labelled frame
    seconds: float  # inference time of this frame (embedding included), decoding excluded

    @property
    def steps(self) -> int:
        """Recurrent steps this frame ran."""
        return self.result.steps

    @property
    def restarted(self) -> bool:
        """Whether the recurrence started from the full query list."""
        return self.start != "carried"


@dataclass(frozen=True)
class LabelledFrame:
    """A frame an earlier run labelled, which :func:`segment_video` does not segment again.

    ``start`` is where its recurrence started (one of STARTS), ``kept`` the queries it kept
    and ``queries`` the full normalised query list its labels are laid out on. Carrying goes
    on from it as from a frame just segmented (its embedding is computed when the next
    frame needs it), so a resumed video gets the labels of an uninterrupted run.
    """

    start: str
    kept: tuple[str, ...]
    queries: tuple[str, ...]


def segment_video(
    car: CaR,
    frames: str | Path | Iterable[np.ndarray],
    queries: Sequence[Any],
    *,
    stuff: Sequence[str] | None = None,
    carry: bool | None = None,
    refresh_every: int | None = None,
    scene_cut_threshold: float | None = None,
    frame_step: int = 1,
    ahead: int = 4,
    done: Mapping[int, LabelledFrame] | None = None,
) -> Iterator[VideoFrameResult]:
    """Segment every ``frame_step``-th frame of a video (a file or RGB frames) for ``queries``.

    ``carry``, ``refresh_every`` and ``scene_cut_threshold`` default to the config's
    ``carry_queries``, ``refresh_every`` and ``scene_cut_threshold``. Without carrying every
    labelled frame is ``car.segment(frame, queries)``. Refresh counts video frames since the
    last start from the full list (0: never). A file is decoded ``ahead`` frames in advance
    (see :func:`read_frames`; an unreadable file raises VideoError here, other faults while
    iterating). Raises what ``CaR.segment`` and ``read_frames`` raise.

    ``done`` maps video frame indices to frames labelled before (:class:`LabelledFrame`): they
    are decoded but neither segmented nor yielded. A query may be an
    :class:`cliprnn.exemplars.Exemplars`; it is carried by its name.
    """
    cfg = car.config
    carry = cfg.carry_queries if carry is None else carry
    refresh = cfg.refresh_every if refresh_every is None else refresh_every
    threshold = cfg.scene_cut_threshold if scene_cut_threshold is None else scene_cut_threshold
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    if refresh < 0:
        raise ValueError(f"refresh_every must be >= 0, got {refresh}")
    if isinstance(frames, (str, Path)):
        labelled: Iterable[np.ndarray] = read_frames(frames, step=frame_step, ahead=ahead)
    else:
        labelled = (f for i, f in enumerate(frames) if i % frame_step == 0)
    return _segment_frames(
        car, labelled, list(queries), stuff, carry, refresh, threshold, frame_step, done or {}
    )


def _segment_frames(
    car: CaR,
    labelled: Iterable[np.ndarray],
    queries: list[Any],
    stuff: Sequence[str] | None,
    carry: bool,
    refresh: int,
    threshold: float,
    frame_step: int,
    done: Mapping[int, LabelledFrame],
) -> Iterator[VideoFrameResult]:
    """:func:`segment_video` over the labelled frames (``labelled[k]`` is video frame k·step)."""
    full: list[str] | None = None  # the normalised full list, known after the first frame
    kept: list[str] = []
    last_full = 0
    previous: np.ndarray | None = None
    unembedded: np.ndarray | None = None  # a frame labelled before, its embedding not yet taken
    by_name = {getattr(q, "name", q): q for q in queries}  # exemplar queries, by name
    for k, frame in enumerate(labelled):
        index = k * frame_step
        before = done.get(index)
        if before is not None:
            full = full or list(before.queries) or None
            kept = list(before.kept)
            if before.start != "carried":
                last_full = index
            unembedded, previous = frame, None
            continue
        began = time.perf_counter()
        similarity = None
        if carry:
            if unembedded is not None:
                previous, unembedded = frame_embedding(car, unembedded), None
            embedding = frame_embedding(car, frame)
            if previous is not None:
                similarity = float(embedding @ previous)
            previous = embedding
        due = refresh > 0 and index - last_full >= refresh
        start = _start_reason(k, carry, similarity, threshold, bool(kept), due)
        subset = (full or queries) if start != "carried" else kept
        subset = [by_name.get(q, q) if isinstance(q, str) else q for q in subset]
        result = car.segment(frame, subset, stuff=stuff)
        if full is None:
            full = list(result.queries)
        if start != "carried":
            last_full = index
        kept = list(result.kept)
        yield VideoFrameResult(
            index=index,
            result=_on_full_list(result, full),
            start=start,
            queried=list(result.queries),
            similarity=similarity,
            seconds=time.perf_counter() - began,
        )


def _start_reason(
    k: int, carry: bool, similarity: float | None, threshold: float, any_kept: bool, due: bool
) -> str:
    """Where labelled frame k's recurrence starts (one of STARTS)."""
    if not carry:
        return "scratch"
    if k == 0:
        return "first"
    if similarity is not None and similarity < threshold:
        return "scene_cut"
    if due:
        return "refresh"
    if not any_kept:
        return "empty"
    return "carried"


def frame_embedding(car: CaR, frame: np.ndarray) -> np.ndarray:
    """The classifier CLIP's L2-normalised image embedding [d] of one RGB frame."""
    backend = car.classifier_backend
    pixels = backend.classifier_input([frame], crop=car.config.classifier_crop)
    return backend.image_embeddings(pixels, truncated=False)[0].cpu().numpy()


def _on_full_list(result: CaRResult, full: list[str]) -> CaRResult:
    """``result`` of a query subset laid out on the full list (label values, scores, masks)."""
    if result.queries == full:
        return result
    where = {q: i for i, q in enumerate(full)}
    pos = np.array([where[q] for q in result.queries], np.int64)
    lookup = np.zeros(len(result.queries) + 1, np.int32)
    lookup[1:] = pos + 1
    scores = np.zeros(len(full), np.float32)
    scores[pos] = result.scores
    masks = np.zeros((len(full), *result.label_map.shape), bool)
    masks[pos] = result.masks
    soft = None
    if result.soft_masks is not None:
        soft = np.zeros((len(full), *result.label_map.shape), np.float32)
        soft[pos] = result.soft_masks
    return dataclasses.replace(
        result,
        label_map=lookup[result.label_map],
        queries=list(full),
        scores=scores,
        masks=masks,
        soft_masks=soft,
    )
