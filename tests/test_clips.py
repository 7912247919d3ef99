"""The clip generator (moving objects over a still background, cuts) and writing video files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from cliprnn.dev.clips import generate_clip, write_video
from cliprnn.dev.scenes import CLASSES, STUFF, generate_scene
from cliprnn.errors import VideoError


def test_a_clip_is_a_pure_function_of_its_seed() -> None:
    a, b = generate_clip(3, n_frames=6), generate_clip(3, n_frames=6)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.label_maps, b.label_maps)
    assert not np.array_equal(a.frames, generate_clip(4, n_frames=6).frames)
    assert a.frames.shape == (6, 128, 128, 3) and a.frames.dtype == np.uint8
    assert a.label_maps.shape == (6, 128, 128) and a.label_maps.max() <= len(CLASSES)


def test_making_clips_leaves_the_scenes_unchanged() -> None:
    before = generate_scene(12345)
    generate_clip(12345, n_frames=4)
    after = generate_scene(12345)
    np.testing.assert_array_equal(before.image, after.image)
    np.testing.assert_array_equal(before.label_map, after.label_map)


def test_objects_move_over_a_background_that_stays() -> None:
    clip = generate_clip(0, n_frames=8, n_objects=2)
    assert len(set(clip.stuff)) == 1 and clip.cut_at is None
    first, last = clip.label_maps[0], clip.label_maps[-1]
    assert (first != last).mean() > 0.01  # the objects moved
    # Pixels that are background in both frames differ by sensor noise only; where the labels
    # differ, the pixels differ much more (the label maps follow what was drawn).
    diff = np.abs(clip.frames[0].astype(int) - clip.frames[-1].astype(int)).max(axis=-1)
    background = diff[(first == 0) & (last == 0)].mean()
    assert background < 8
    assert diff[first != last].mean() > 3 * background


def test_objects_enter_and_leave_the_frame() -> None:
    entered = left = 0
    for seed in range(12):
        clip = generate_clip(seed, n_frames=16)
        start, end = set(clip.present(0)), set(clip.present(len(clip) - 1))
        entered += bool(end - start)
        left += bool(start - end)
    assert entered >= 3 and left >= 3


def test_a_cut_changes_background_and_objects_at_the_given_frame() -> None:
    clip = generate_clip(7, n_frames=10, cut_at=4)
    assert clip.cut_at == 4 and len(clip) == 10
    assert clip.stuff[3] != clip.stuff[4] and clip.stuff[4] in STUFF
    assert len(set(clip.stuff[:4])) == 1 and len(set(clip.stuff[4:])) == 1

    def change(t: int) -> float:
        return float(np.abs(clip.frames[t].astype(int) - clip.frames[t - 1].astype(int)).mean())

    assert change(4) > 5 * max(change(t) for t in (1, 2, 3, 5, 6))
    with pytest.raises(ValueError, match="cut_at"):
        generate_clip(7, n_frames=10, cut_at=10)


def _ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize(
    ("suffix", "codec", "container"),
    [(".mp4", "h264", "mov,mp4"), (".webm", "vp9", "matroska,webm"), (".mkv", "h264", "matroska")],
)
def test_written_videos_use_browser_codecs(
    tmp_path: Path, suffix: str, codec: str, container: str
) -> None:
    clip = generate_clip(1, n_frames=5)
    path = clip.write(tmp_path / f"clip{suffix}")
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == codec
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height) == (128, 128)
        assert float(stream.average_rate) == pytest.approx(clip.fps)
        assert c.format.name.startswith(container)
    if suffix == ".mp4":  # faststart: the index precedes the media data, for streaming playback
        data = path.read_bytes()
        assert data.index(b"moov") < data.index(b"mdat")


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="Debian's ffmpeg is not installed")
def test_ffprobe_reads_what_was_written(tmp_path: Path) -> None:
    """FiftyOne reads video metadata with ffprobe; it must agree with the generator."""
    path = generate_clip(2, n_frames=7).write(tmp_path / "clip.mp4")
    info = _ffprobe(path)
    (stream,) = [s for s in info["streams"] if s["codec_type"] == "video"]
    assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
    assert int(stream["nb_frames"]) == 7
    assert (stream["width"], stream["height"]) == (128, 128)


def test_write_video_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even sides"):
        write_video([np.zeros((15, 16, 3), np.uint8)], tmp_path / "odd.mp4")
    frames = [np.zeros((16, 16, 3), np.uint8), np.zeros((16, 32, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 1"):
        write_video(frames, tmp_path / "mixed.mp4")
    with pytest.raises(ValueError, match="suffix"):
        write_video(frames[:1], tmp_path / "clip.gif")
    with pytest.raises(VideoError, match=r"nowhere\.mp4"):
        write_video(frames[:1], Path("/proc/nowhere.mp4"))
