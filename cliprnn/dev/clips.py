"""Short synthetic clips with exact per-frame labels, and writing frames to a video file.

A clip is one or two *shots*. In a shot the background (one stuff kind of
:mod:`cliprnn.dev.scenes`) stays still while 1-4 thing objects slide across it: some stay in
view the whole time, some enter through an edge, some leave through one. A clip with
``cut_at=k`` changes shot at frame ``k`` (another background, other objects): a scene cut at a
known frame. Every clip is a pure function of its arguments; label maps are exact (0 =
background, i + 1 = ``CLASSES[i]``, as in :class:`cliprnn.dev.scenes.Scene`).

:func:`write_video` encodes frames to a file a browser plays: H.264 (yuv420p, ``faststart``)
in ``.mp4`` / ``.mkv`` / ``.ts``, VP9 (yuv420p) in ``.webm``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cliprnn.dev.scenes import (
    CLASSES,
    DEFAULT_SIZE,
    STUFF,
    THINGS,
    _shape_mask,
    _stuff_image,
    _texture,
)
from cliprnn.errors import VideoError

DEFAULT_FRAMES = 16
DEFAULT_FPS = 8.0

#: How each kind of object moves during a shot, and how often it is drawn.
MOTIONS: tuple[str, ...] = ("stay", "enter", "leave")
_MOTION_P = (0.5, 0.25, 0.25)


@dataclass
class Clip:
    """A generated clip: frames and their exact label maps.

    ``label_maps[t]`` holds 0 for background and i + 1 for ``CLASSES[i]`` in ``frames[t]``;
    ``stuff[t]`` is frame t's background kind; ``cut_at`` is the first frame of the second
    shot (None: one shot).
    """

    seed: int
    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    label_maps: np.ndarray  # uint8 [T, H, W]
    stuff: list[str]
    cut_at: int | None
    fps: float = DEFAULT_FPS

    def __len__(self) -> int:
        return len(self.frames)

    def present(self, t: int) -> list[int]:
        """Indices into CLASSES of the classes visible in frame t."""
        values = np.unique(self.label_maps[t])
        return [int(v) - 1 for v in values if v > 0]

    def present_names(self, t: int) -> list[str]:
        """Names of the classes visible in frame t."""
        return [CLASSES[i] for i in self.present(t)]

    def write(self, path: str | Path) -> Path:
        """Encode the frames to a video file (format from the suffix, see :func:`write_video`)."""
        return write_video(self.frames, path, fps=self.fps)


@dataclass
class _Sprite:
    """One object of a shot: its class, cut-out mask and fill, and its centre per frame."""

    class_index: int
    mask: np.ndarray  # bool [S, S]
    fill: np.ndarray  # float32 [S, S, 3]
    centres: np.ndarray  # float [T, 2] (x, y) in frame pixels


def generate_clip(
    seed: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    n_frames: int = DEFAULT_FRAMES,
    *,
    cut_at: int | None = None,
    n_objects: int | None = None,
    fps: float = DEFAULT_FPS,
) -> Clip:
    """The clip of one seed: a still background, moving objects, optionally a cut at ``cut_at``.

    ``n_objects`` fixes the object count of each shot (default 1-4 at random).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if cut_at is not None and not 0 < cut_at < n_frames:
        raise ValueError(f"cut_at must be in 1..{n_frames - 1}, got {cut_at}")
    rng = np.random.default_rng(seed)
    lengths = [n_frames] if cut_at is None else [cut_at, n_frames - cut_at]
    frames, labels, stuff = [], [], []
    previous: str | None = None
    for length in lengths:
        kinds = [k for k in STUFF if k != previous]
        kind = kinds[int(rng.integers(len(kinds)))]
        shot_frames, shot_labels = _shot(rng, kind, size, length, n_objects)
        frames.append(shot_frames)
        labels.append(shot_labels)
        stuff += [kind] * length
        previous = kind
    return Clip(seed, np.concatenate(frames), np.concatenate(labels), stuff, cut_at, fps)


def _shot(
    rng: np.random.Generator,
    kind: str,
    size: tuple[int, int],
    length: int,
    n_objects: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, H, W, 3] and label maps [T, H, W] of one shot over a ``kind`` background."""
    h, w = size
    background = _stuff_image(kind, rng, h, w)
    if n_objects is None:
        n_objects = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.3, 0.15]))
    chosen = rng.choice(len(THINGS), size=n_objects, replace=False)
    sprites = [_sprite(int(ci), rng, h, w, length) for ci in chosen]
    frames = np.empty((length, h, w, 3), np.uint8)
    labels = np.zeros((length, h, w), np.uint8)
    for t in range(length):
        img = background.copy()
        for sprite in sprites:  # later objects are drawn over earlier ones
            _paste(sprite, t, img, labels[t])
        img += rng.normal(0, 2.5, size=img.shape).astype(np.float32)  # sensor noise
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames, labels


def _sprite(ci: int, rng: np.random.Generator, h: int, w: int, length: int) -> _Sprite:
    """Draw one object and choose how it moves (stay in view, enter or leave through an edge)."""
    thing = THINGS[ci]
    side = min(h, w)
    diameter = side * rng.uniform(0.2, 0.45)
    s = int(np.ceil(diameter * 1.5)) + 2  # the sprite canvas holds any shape of that size
    angle = rng.uniform(-0.5, 0.5) if thing.shape != "circle" else 0.0
    aspect = rng.uniform(0.8, 1.2)
    mask = _shape_mask(thing.shape, s, s, s / 2, s / 2, diameter, angle, aspect).astype(bool)
    fill = _texture(thing, rng, s, s, s / 2, s / 2)
    motion = MOTIONS[int(rng.choice(len(MOTIONS), p=_MOTION_P))]
    t = np.arange(length, dtype=np.float64)[:, None]
    if motion == "stay" or length < 4:
        start = rng.uniform(0.2, 0.8, 2) * (w, h)
        heading = rng.uniform(0, 2 * np.pi)
        velocity = rng.uniform(0.5, 2.5) * np.array([np.cos(heading), np.sin(heading)])
        centres = _bounce(start + velocity * t, (0.15 * w, 0.15 * h), (0.85 * w, 0.85 * h))
    else:
        # Through an edge: ``depth`` is how far the centre is inside the edge; at t_edge the
        # shape is just out of view (entering: first visible after it; leaving: gone by then).
        edge = int(rng.integers(4))
        along = rng.uniform(0.25, 0.75)
        inward = [(1, 0), (-1, 0), (0, 1), (0, -1)][edge]
        deviation = rng.uniform(-0.4, 0.4)
        heading = np.arctan2(inward[1], inward[0]) + deviation
        direction = np.array([np.cos(heading), np.sin(heading)])
        border = np.array(
            [(0, along * h), (w, along * h), (along * w, 0), (along * w, h)][edge], np.float64
        )
        outside = -0.6 * diameter
        deepest = rng.uniform(0.3, 0.55) * side
        if motion == "enter":
            t_edge = int(rng.integers(1, length // 2 + 1))
            depth = outside + (deepest - outside) * (t - t_edge) / (length - 1 - t_edge)
        else:
            t_edge = int(rng.integers(length // 2, length - 1))
            depth = deepest + (outside - deepest) * t / t_edge
        centres = border + direction * depth / np.cos(deviation)
    return _Sprite(ci, mask, fill, centres)


def _bounce(path: np.ndarray, low: tuple[float, float], high: tuple[float, float]) -> np.ndarray:
    """Fold a straight path [T, 2] back into the box [low, high] (reflecting at its sides)."""
    lo, hi = np.asarray(low), np.asarray(high)
    span = hi - lo
    u = np.mod(path - lo, 2 * span)
    return lo + np.where(u > span, 2 * span - u, u)


def _paste(sprite: _Sprite, t: int, img: np.ndarray, labels: np.ndarray) -> None:
    """Draw the sprite at its frame-t position (clipped at the frame's edges)."""
    s = sprite.mask.shape[0]
    h, w = labels.shape
    x0 = round(float(sprite.centres[t, 0]) - s / 2)
    y0 = round(float(sprite.centres[t, 1]) - s / 2)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return  # out of view
    window = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
    mask = sprite.mask[window]
    img[fy0:fy1, fx0:fx1][mask] = sprite.fill[window][mask]
    labels[fy0:fy1, fx0:fx1][mask] = sprite.class_index + 1


# --------------------------------------------------------------------------------------------
# writing video files

#: Suffix -> (container format, encoder, encoder options, container options). Each is played
#: by browsers (H.264 / VP9 in yuv420p); ``faststart`` puts the mp4 index first, so a player
#: starts before the whole file has arrived.
CONTAINERS: dict[str, tuple[str, str, dict[str, str], dict[str, str]]] = {
    ".mp4": ("mp4", "libx264", {"crf": "18", "preset": "medium"}, {"movflags": "+faststart"}),
    ".mkv": ("matroska", "libx264", {"crf": "18", "preset": "medium"}, {}),
    ".ts": ("mpegts", "libx264", {"crf": "18", "preset": "medium"}, {}),
    ".webm": ("webm", "libvpx-vp9", {"crf": "20", "b": "0", "deadline": "good"}, {}),
}


def write_video(
    frames: Iterable[np.ndarray],
    path: str | Path,
    fps: float = DEFAULT_FPS,
    *,
    size: tuple[int, int] | None = None,
) -> Path:
    """Encode RGB uint8 frames [H, W, 3] to ``path`` (format from its suffix, see CONTAINERS).

    Frames are encoded as they arrive (``frames`` may be a generator). Every frame must have
    the first one's size, with even sides (yuv420p). ``size`` (H, W) is used only when
    ``frames`` is empty: the file then holds no frame. Returns ``path``.
    """
    from fractions import Fraction

    import av

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONTAINERS:
        raise ValueError(
            f"{path}: unsupported video suffix {suffix!r}; use one of {list(CONTAINERS)}"
        )
    fmt, codec, codec_options, container_options = CONTAINERS[suffix]
    rate = Fraction(fps).limit_denominator(1001)
    source = iter(frames)
    first = next(source, None)
    hw = first.shape[:2] if first is not None else size or (16, 16)
    if hw[0] % 2 or hw[1] % 2:
        raise ValueError(f"{path}: frame size {hw[1]}x{hw[0]} must have even sides (yuv420p)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(path), "w", format=fmt, options=container_options) as container:
            stream = container.add_stream(codec, rate=rate, options=codec_options)
            stream.height, stream.width = int(hw[0]), int(hw[1])
            stream.pix_fmt = "yuv420p"
            container.start_encoding()
            pending = [] if first is None else [first]
            for index, frame in enumerate(itertools.chain(pending, source)):
                frame = np.asarray(frame)
                if frame.shape != (*hw, 3) or frame.dtype != np.uint8:
                    raise ValueError(
                        f"{path}: frame {index} is {frame.dtype} {frame.shape}; every frame "
                        f"must be uint8 {(*hw, 3)} like the first"
                    )
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{path}: could not write the video ({exc})") from exc
    return path
