"""Reading real video files (streamed, in order, with clear errors) and CaR over video frames."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cliprnn.dev.clips import Clip, generate_clip, write_video
from cliprnn.dev.scenes import CLASSES
from cliprnn.errors import ImageError, VideoError
from cliprnn.video import probe_video, read_ahead, read_frames, segment_video


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def _closest(frame: np.ndarray, clip: Clip) -> int:
    return int(np.argmax([_psnr(frame, f) for f in clip.frames]))


@pytest.fixture(scope="module")
def clip() -> Clip:
    return generate_clip(11, n_frames=10)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_decoded_frames_line_up_with_the_written_ones(
    tmp_path: Path, clip: Clip, suffix: str
) -> None:
    path = clip.write(tmp_path / f"clip{suffix}")
    decoded = list(read_frames(path))
    assert len(decoded) == len(clip)
    assert all(f.shape == (128, 128, 3) and f.dtype == np.uint8 for f in decoded)
    assert [_closest(f, clip) for f in decoded] == list(range(len(clip)))  # in order
    assert min(_psnr(f, g) for f, g in zip(decoded, clip.frames, strict=True)) > 28


def test_probe_reports_the_header(tmp_path: Path, clip: Clip) -> None:
    info = probe_video(clip.write(tmp_path / "clip.mp4"))
    assert (info.width, info.height, info.frame_count) == (128, 128, len(clip))
    assert info.fps == pytest.approx(clip.fps)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    webm = probe_video(clip.write(tmp_path / "clip.webm"))
    assert (webm.codec, webm.frame_count) == ("vp9", len(clip))  # estimated from the duration


def test_step_yields_every_nth_frame(tmp_path: Path, clip: Clip) -> None:
    path = clip.write(tmp_path / "clip.mp4")
    assert [_closest(f, clip) for f in read_frames(path, step=3)] == [0, 3, 6, 9]


def test_read_ahead_runs_the_producer_on_a_thread_a_bounded_way_ahead() -> None:
    produced: list[int] = []
    threads: set[str] = set()
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            for i in range(100):
                threads.add(threading.current_thread().name)
                produced.append(i)
                yield i
        finally:
            closed.set()

    frames = read_ahead(source(), ahead=3)
    assert next(frames) == 0
    for _ in range(100):  # let the producer fill the queue
        if len(produced) >= 5:
            break
        threading.Event().wait(0.01)
    assert 2 <= len(produced) <= 5  # one taken, three queued, one waiting to be put
    assert threads == {"cliprnn-video-decode"}
    assert [next(frames) for _ in range(3)] == [1, 2, 3]
    frames.close()
    assert closed.wait(2)  # closing stops the producer and closes its source


def test_read_ahead_hands_an_error_over_in_its_place() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise VideoError("broken.mp4: bad frame")

    frames = read_ahead(source(), ahead=2)
    assert next(frames) == 1 and next(frames) == 2
    with pytest.raises(VideoError, match=r"broken\.mp4"):
        next(frames)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
@pytest.mark.parametrize("keep", [0.3, 0.7])
def test_a_truncated_video_raises_an_error_naming_the_file(
    tmp_path: Path, clip: Clip, suffix: str, keep: float
) -> None:
    data = clip.write(tmp_path / f"full{suffix}").read_bytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VideoError, match=f"truncated{suffix}") as info:
        list(read_frames(path))
    assert isinstance(info.value, ImageError)  # callers catching bad inputs catch it too


def test_unreadable_and_missing_files_raise_errors_naming_them(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"garbage\.mp4"):
        read_frames(garbage)
    with pytest.raises(VideoError, match=r"missing\.mp4"):
        read_frames(tmp_path / "missing.mp4")


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_a_zero_frame_video_raises_an_error_naming_the_file(tmp_path: Path, suffix: str) -> None:
    path = write_video([], tmp_path / f"empty{suffix}", size=(64, 64))
    assert path.stat().st_size > 0
    with pytest.raises(VideoError, match=f"empty{suffix}"):
        list(read_frames(path))
    with pytest.raises(VideoError, match=f"empty{suffix}"):
        probe_video(path)


@pytest.fixture(scope="module")
def size_change(tmp_path_factory: pytest.TempPathFactory, clip: Clip) -> Path:
    """An MPEG-TS video whose frames are 128x128 for 5 frames, then 96x64 (two streams joined)."""
    folder = tmp_path_factory.mktemp("size-change")
    small = [np.ascontiguousarray(f[32:96, 16:112]) for f in clip.frames[5:]]
    a = write_video(clip.frames[:5], folder / "a.ts")
    b = write_video(small, folder / "b.ts")
    path = folder / "size_change.ts"
    path.write_bytes(a.read_bytes() + b.read_bytes())
    return path


def test_a_size_change_mid_stream_is_kept_resized_or_refused(size_change: Path) -> None:
    kept = list(read_frames(size_change, size_change="keep"))
    assert [f.shape[:2] for f in kept] == [(128, 128)] * 5 + [(64, 96)] * 5
    resized = list(read_frames(size_change))
    assert [f.shape[:2] for f in resized] == [(128, 128)] * 10
    np.testing.assert_array_equal(resized[:5], kept[:5])
    with pytest.raises(VideoError, match=r"size_change.ts: frame 5 is 96x64"):
        list(read_frames(size_change, size_change="error"))


# --------------------------------------------------------------------------------------------
# CaR over frames (the bundled mini model)


@pytest.fixture(scope="module")
def car():
    from cliprnn import CaR, CaRConfig

    return CaR(CaRConfig.preset("mini")).load()


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Clip, Path]:
    clip = generate_clip(3, n_frames=7, cut_at=4, n_objects=2)
    return clip, clip.write(tmp_path_factory.mktemp("cut") / "cut.mp4")


@pytest.mark.slow
def test_without_carrying_every_labelled_frame_is_segmented_from_the_full_list(
    car, cut_clip
) -> None:
    _, path = cut_clip
    frames = list(read_frames(path))
    results = list(segment_video(car, path, CLASSES, carry=False, frame_step=2))
    assert [r.index for r in results] == [0, 2, 4, 6]
    assert {r.start for r in results} == {"scratch"} and all(r.restarted for r in results)
    for r in results:
        expected = car.segment(frames[r.index], CLASSES)
        np.testing.assert_array_equal(r.result.label_map, expected.label_map)
        assert r.result.kept == expected.kept and r.queried == list(CLASSES)
        assert r.similarity is None and r.seconds > 0


@pytest.mark.slow
def test_carrying_restarts_on_the_first_frame_a_refresh_and_a_scene_cut(car, cut_clip) -> None:
    clip, path = cut_clip
    threshold = car.config.scene_cut_threshold
    results = list(segment_video(car, path, CLASSES, refresh_every=3))
    starts = [r.start for r in results]
    assert starts == ["first", "carried", "carried", "refresh", "scene_cut", "carried", "carried"]
    assert results[4].similarity < threshold  # the cut is at frame 4
    assert all(r.similarity >= threshold for r in results[1:4] + results[5:])
    frames = list(read_frames(path))
    previous = None
    for r in results:
        # Label values index the full query list, whatever subset the frame started from.
        assert r.result.queries == list(CLASSES)
        assert r.result.label_map.shape == clip.label_maps[r.index].shape
        values = {int(v) for v in np.unique(r.result.label_map)} - {0}
        assert values <= {CLASSES.index(q) + 1 for q in r.queried}
        assert r.result.masks.shape[0] == len(CLASSES)
        if r.start == "carried":
            assert r.queried == previous.result.kept and len(r.queried) < len(CLASSES)
            expected = car.segment(frames[r.index], r.queried)
            lookup = np.array([0] + [CLASSES.index(q) + 1 for q in expected.queries])
            np.testing.assert_array_equal(r.result.label_map, lookup[expected.label_map])
            assert r.steps == expected.steps
        else:
            assert r.queried == list(CLASSES)
        previous = r


@pytest.mark.slow
def test_frame_step_over_frames_in_memory(car, cut_clip) -> None:
    clip, path = cut_clip
    results = list(segment_video(car, iter(clip.frames), CLASSES, frame_step=3))
    assert [(r.index, r.start) for r in results] == [(0, "first"), (3, "carried"), (6, "scene_cut")]
    with pytest.raises(ValueError, match="frame_step"):
        list(segment_video(car, path, CLASSES, frame_step=0))


def test_video_settings_are_validated() -> None:
    from cliprnn import CaRConfig
    from cliprnn.errors import ConfigError

    config = CaRConfig()
    assert config.carry_queries is True and config.refresh_every >= 1
    for bad in ({"refresh_every": -1}, {"scene_cut_threshold": 1.5}, {"carry_queries": "yes"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            config.replace(**bad)


@pytest.mark.slow
def test_the_video_benchmark_scores_every_mode(car) -> None:
    from cliprnn.dev.bench.video import (
        benchmark_clip,
        first_after_cut,
        format_table,
        run_video_benchmark,
    )

    clip = benchmark_clip(3, 8)
    assert clip.cut_at is not None  # seed 3 is one of the clips with a cut
    assert first_after_cut(clip, 1) == clip.cut_at
    assert first_after_cut(clip, 3) == -(-clip.cut_at // 3) * 3
    report = run_video_benchmark([3], n_frames=8, config=car.config, resamples=20)
    assert report["frames"] == 8 and report["cuts"] == 1
    assert report["scratch_labelled_frames"] == report["carry_labelled_frames"] == 8
    assert report["step3_labelled_frames"] == 3  # frames 0, 3, 6
    assert report["scratch_restarted"] == 1.0 and report["carry_restarted"] < 1.0
    assert report["carry_mean_queries"] < report["scratch_mean_queries"] == len(CLASSES)
    assert report["carry_cuts_found"] == 1
    assert 0 <= report["step3_held_miou"] <= 100
    assert "query carrying" in format_table(report)
