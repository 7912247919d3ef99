"""Video datasets: segment writes frame-level fields aligned with the decoded frames; frame_step,
frame-level skip_existing, a killed run resumed to the uninterrupted result, broken videos, frames
views, the operator. Real video files from the clip generator, the bundled mini model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone import ViewField as F

from cliprnn.dev.clips import generate_clip, write_video
from cliprnn.dev.scenes import CLASSES
from cliprnn.errors import ConfigError
from cliprnn.fiftyone import (
    SampleError,
    SegmentationRun,
    make_run,
    run_info,
    segment_collection,
)
from cliprnn.fiftyone.engine import get_car, resolve_config
from cliprnn.fiftyone.video import VideoSegmentationRun
from cliprnn.video import read_frames, segment_video

pytestmark = pytest.mark.fiftyone

REPO_ROOT = Path(__file__).resolve().parents[2]
URI = "@cliprnn/clip-as-rnn"
SIZE = (64, 64)  # (H, W) of the clips
CUT_AT = 4  # clip A changes shot at frame index 4 (frame number 5)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Clip A: 8 frames with a scene cut at index 4, as mp4; clip B: 6 frames as webm."""
    folder = tmp_path_factory.mktemp("fo-video")
    a = generate_clip(41, size=SIZE, n_frames=8, cut_at=CUT_AT, n_objects=2)
    b = generate_clip(42, size=SIZE, n_frames=6, n_objects=2)
    return {"a": a.write(folder / "a.mp4"), "b": b.write(folder / "b.webm")}


@pytest.fixture(scope="module")
def queries(clips: dict[str, Path]) -> list[str]:
    """The classes the clips show, plus two they do not (for the recurrence to drop)."""
    shown: set[str] = set()
    for seed, n, cut in ((41, 8, CUT_AT), (42, 6, None)):
        clip = generate_clip(seed, size=SIZE, n_frames=n, cut_at=cut, n_objects=2)
        shown |= {name for t in range(len(clip)) for name in clip.present_names(t)}
    absent = [c for c in CLASSES if c not in shown][:2]
    return [c for c in CLASSES if c in shown] + absent


@pytest.fixture(scope="module")
def car():
    return get_car(resolve_config("mini"))


@pytest.fixture
def videos(make_dataset):
    """Factory: a fresh persistent dataset of the given video files (a worker process of the
    resume test opens it by name); deleted after the test."""
    return lambda *paths: make_dataset(persistent=True, files=list(paths))


def _frames(ds: fo.Dataset, field: str) -> dict[str, dict[int, fo.Label]]:
    """Per video: frame number -> label of ``field``, for the frames that have it."""
    out = {}
    for sample in ds.select_fields(f"frames.{field}"):
        out[sample.id] = {n: f[field] for n, f in sample.frames.items() if f[field] is not None}
    return out


def _frames_before_the_fault(path: Path) -> int:
    """How many frames of a broken video decode before its VideoError."""
    from cliprnn.errors import VideoError

    n = 0
    with pytest.raises(VideoError):
        for _ in read_frames(path):
            n += 1
    return n


def _segment(ds, queries, field="car", **kwargs):
    """A run with every region kept, so stored masks equal the engine's label maps; the
    semantic mask alone unless ``outputs`` says otherwise."""
    kwargs.setdefault("outputs", ["segmentation"])
    config = {"preset": "mini", "min_region_pixels": 0}
    return segment_collection(ds, queries, label_field=field, config=config, progress=False,
                              **kwargs)  # fmt: skip


def _assert_same_frames(ds: fo.Dataset, a: str, b: str) -> None:
    """Fields ``a`` and ``b`` hold the same masks, scores and carry records on the same frames."""
    fa, fb = _frames(ds, a), _frames(ds, b)
    sa, sb = _frames(ds, f"{a}_scores"), _frames(ds, f"{b}_scores")
    assert {k: sorted(v) for k, v in fa.items()} == {k: sorted(v) for k, v in fb.items()}
    for sid, labels in fa.items():
        for n, seg in labels.items():
            np.testing.assert_array_equal(seg.mask, fb[sid][n].mask, err_msg=f"frame {n}")
            x, y = sa[sid][n], sb[sid][n]
            assert (x.start, [c.kept for c in x.classifications]) == (
                y.start,
                [c.kept for c in y.classifications],
            ), f"frame {n}"
            assert [c.confidence for c in x.classifications] == [
                c.confidence for c in y.classifications
            ]


# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_frame_fields_line_up_with_the_decoded_frames(videos, clips, queries, car) -> None:
    ds = videos(clips["a"], clips["b"])
    summary = _segment(ds, queries, outputs=["segmentation", "detections"])
    assert (summary.processed, summary.failed, summary.frames) == (2, 0, 14)
    assert summary.fields == ["frames.car", "frames.car_det", "frames.car_scores"]
    assert ds.mask_targets["frames.car"] == dict(enumerate(queries, start=1))
    assert ds.classes["frames.car_det"] == queries
    assert {"car", "car_det", "car_scores"} <= set(ds.get_frame_field_schema())
    assert "car" not in ds.get_field_schema()  # frame fields only (and car_error when needed)
    assert ds.values("metadata.total_frame_count") == [8, 6]  # the App's player needs it
    masks, scores = _frames(ds, "car"), _frames(ds, "car_scores")
    dets = _frames(ds, "car_det")
    for sid, path in zip(*ds.values(["id", "filepath"]), strict=True):
        decoded = list(read_frames(path))
        assert sorted(masks[sid]) == list(range(1, len(decoded) + 1))  # frame n = decoded n - 1
        expected = list(segment_video(car, path, queries))
        for frame, result in zip(decoded, expected, strict=True):
            n = result.index + 1
            seg = masks[sid][n]
            assert seg.mask.shape == frame.shape[:2] and seg.mask.dtype == np.uint8
            np.testing.assert_array_equal(seg.mask, result.result.label_map)  # in order
            assert seg.kept == result.result.kept
            assert scores[sid][n].start == result.start
            assert [c.label for c in scores[sid][n].classifications] == queries
            assert {d.label for d in dets[sid][n].detections} == set(result.result.kept)
        # the masks change over the clip, so the comparison above pins the order down
        assert any((masks[sid][n].mask != masks[sid][n + 1].mask).any() for n in masks[sid]
                   if n + 1 in masks[sid])  # fmt: skip
    starts = [s.start for s in _frames(ds, "car_scores")[ds.first().id].values()]
    assert starts[0] == "first" and starts[CUT_AT] == "scene_cut" and "carried" in starts
    info = run_info(ds, "car")
    assert info["media_type"] == "video" and info["labelled_frames"] == "every frame"
    assert info["fields"]["segmentation"] == "frames.car" and info["carry_queries"] is True
    assert info["fields"]["error"] == "car_error"  # one per video
    assert ds.load_run_results("cliprnn_car").frames == 14


@pytest.mark.slow
def test_frame_step_labels_every_kth_frame_and_leaves_the_others_empty(
    videos, clips, queries, car
) -> None:
    ds = videos(clips["a"])
    summary = _segment(ds, queries, frame_step=3)
    assert summary.frames == 3 and summary.labelled_frames.startswith("every 3rd frame from 1")
    labelled = _frames(ds, "car")[ds.first().id]
    assert sorted(labelled) == [1, 4, 7]
    assert ds.match_frames(F("car") == None).count("frames") == 0  # no empty frame stored # noqa: E711
    expected = list(segment_video(car, clips["a"], queries, frame_step=3))
    assert [r.index + 1 for r in expected] == [1, 4, 7]
    for r in expected:
        np.testing.assert_array_equal(labelled[r.index + 1].mask, r.result.label_map)
    info = run_info(ds, "car")
    assert info["frame_step"] == 3 and info["labelled_frames"].startswith("every 3rd frame")

    # carrying off: every labelled frame is CaR on that frame for the full list
    _segment(ds, queries, field="flat", frame_step=3, carry_queries=False)
    flat, starts = _frames(ds, "flat")[ds.first().id], _frames(ds, "flat_scores")
    assert {s.start for s in starts[ds.first().id].values()} == {"scratch"}
    frames = list(read_frames(clips["a"]))
    for n, seg in flat.items():
        np.testing.assert_array_equal(seg.mask, car.segment(frames[n - 1], queries).label_map)
    assert run_info(ds, "flat")["carry_queries"] is False

    # overwrite with another step: the frames of the earlier run are emptied, not mixed in
    _segment(ds, queries, frame_step=4, overwrite=True)
    assert sorted(_frames(ds, "car")[ds.first().id]) == [1, 5]
    assert sorted(_frames(ds, "car_scores")[ds.first().id]) == [1, 5]


@pytest.mark.slow
def test_skip_existing_recomputes_only_the_frames_without_the_field(
    videos, clips, queries, monkeypatch
) -> None:
    ds = videos(clips["a"])
    _segment(ds, queries)
    sid = ds.first().id
    before = _frames(ds, "car")[sid]
    fake = fo.Segmentation(mask=np.full(SIZE, 1, np.uint8), kept=[], steps=0)
    ds.set_values("frames.car", {sid: {2: fake, 3: None, 6: None}}, key_field="id")
    ds.set_values("frames.car_scores", {sid: {3: None, 6: None}}, key_field="id")

    summary = _segment(ds, queries, skip_existing=True)
    assert (summary.frames, summary.frames_skipped, summary.processed) == (2, 6, 1)
    after = _frames(ds, "car")[sid]
    assert (after[2].mask == 1).all()  # an existing frame is not recomputed
    for n in (3, 6):  # the missing ones are, as the first run had them (carrying included)
        np.testing.assert_array_equal(after[n].mask, before[n].mask)

    # nothing left to do: the video is skipped without being decoded
    monkeypatch.setattr("cliprnn.fiftyone.video.segment_video", lambda *a, **k: 1 / 0)
    again = _segment(ds, queries, skip_existing=True)
    assert (again.frames, again.skipped, again.processed, again.frames_skipped) == (0, 1, 0, 8)


# Runs the video run with batches of two frames, reports the frames written, then waits to be
# killed once four frames of clip A are written.
_WORKER = """
import sys, time
import fiftyone as fo
from cliprnn.fiftyone import make_run

ds = fo.load_dataset(sys.argv[1])
run = make_run(ds, sys.argv[2].split("|"), label_field="car", config="mini",
               outputs=["segmentation"], batch_size=2, min_region_pixels=0)  # as _segment
for p in run:
    print("written", p.frames_done, flush=True)
    if p.frames_done >= 4:
        time.sleep(120)
"""


def _written(proc: subprocess.Popen, n: int) -> list[str]:
    """The first ``n`` frame counts the worker reports (it logs other lines too)."""
    seen: list[str] = []
    while len(seen) < n:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("written "):
            seen.append(line.split()[1])
    return seen


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(videos, clips, queries) -> None:
    ds = videos(clips["a"], clips["b"])
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, ds.name, "|".join(queries)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        seen = _written(proc, 2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert seen == ["2", "4"]
    ds.reload()
    a, b = ds.values("id")
    kept = _frames(ds, "car")
    assert sorted(kept[a]) == [1, 2, 3, 4] and not kept[b]  # finished frames are kept

    summary = _segment(ds, queries, skip_existing=True)
    assert (summary.frames, summary.frames_skipped, summary.processed) == (10, 4, 2)
    _segment(ds, queries, field="ref")
    _assert_same_frames(ds, "car", "ref")
    # the resumed frame 5 is the scene cut: found from frame 4's stored labels and its frame
    assert _frames(ds, "car_scores")[a][CUT_AT + 1].start == "scene_cut"


@pytest.mark.slow
def test_a_broken_video_fails_alone_with_an_error_naming_it(
    videos, clips, queries, tmp_path
) -> None:
    data = clips["b"].read_bytes()
    truncated = tmp_path / "truncated.webm"
    truncated.write_bytes(data[: int(len(data) * 0.85)])
    readable = _frames_before_the_fault(truncated)
    assert 1 <= readable < 6
    empty = write_video([], tmp_path / "empty.mp4", size=SIZE)
    ds = videos(truncated, empty, clips["b"])
    bad, none, good = ds.values("id")

    with pytest.raises(SampleError, match=rf"sample {bad} \(.*truncated\.webm\)") as info:
        _segment(ds, queries)
    assert "truncated video" in str(info.value)

    summary = _segment(ds, queries, field="skip", skip_failures=True, batch_size=2)
    assert (summary.processed, summary.failed) == (1, 2)
    errors = dict(zip(ds.values("id"), ds.values("skip_error"), strict=True))
    assert "truncated.webm" in errors[bad] and "truncated video" in errors[bad]
    assert "empty.mp4" in errors[none] and "no frames" in errors[none]
    assert errors[good] is None
    labelled = _frames(ds, "skip")
    assert sorted(labelled[good]) == list(range(1, 7))  # the other video is done
    assert sorted(labelled[bad]) == list(range(1, readable + 1))  # decoded before the fault
    assert not labelled[none]
    assert ds.load_run_results("cliprnn_skip").failed == 2


@pytest.mark.slow
def test_a_frames_view_runs_like_images_into_the_video_frame_fields(
    videos, clips, queries, car, tmp_path
) -> None:
    ds = videos(clips["b"])
    frames = ds.to_frames(sample_frames=True, output_dir=str(tmp_path / "frames"))
    first = frames.match(F("frame_number") <= 3)
    summary = _segment(first, queries, field="fv")
    assert (summary.processed, summary.fields) == (3, ["fv", "fv_scores"])
    labelled = _frames(ds, "fv")[ds.first().id]  # landed in the video's frame fields
    assert sorted(labelled) == [1, 2, 3]
    for sample in first:
        direct = car.segment(sample.filepath, queries)  # the frame image the view points at
        np.testing.assert_array_equal(labelled[sample.frame_number].mask, direct.label_map)
    assert ds.mask_targets["frames.fv"] == dict(enumerate(queries, start=1))
    assert run_info(ds, "fv")["fields"]["segmentation"] == "frames.fv"  # on the video dataset
    assert frames.count("fv") == 3  # the view sees them too
    again = _segment(frames, queries, field="fv", skip_existing=True)
    assert (again.processed, again.skipped) == (3, 3)
    assert len(_frames(ds, "fv")[ds.first().id]) == 6

    with pytest.raises(ConfigError, match="dynamic"):
        _segment(ds.to_frames(sample_frames="dynamic"), queries, field="dyn")


def test_operator_form_and_run_on_a_video_dataset(videos, clips, queries) -> None:
    from fiftyone.operators.executor import ExecutionContext

    ds = videos(clips["b"])
    op = foo.get_operator(f"{URI}/segment")

    def form() -> dict:
        req = dict(dataset_name=ds.name, params=dict(queries=queries, preset="mini"))
        return op.resolve_input(ExecutionContext(request_params=req)).type.properties

    props = form()
    assert props["frame_step"].default == 1 and props["carry_queries"].default is True
    assert "frames are labelled" in props["video_notice"].view.label
    assert "shards" not in props  # sharded runs split images

    assert props["label_field"].default == "cliprnn"
    op(ds, queries=queries, preset="mini", frame_step=2, carry_queries=False,
       outputs=["segmentation"])  # fmt: skip
    assert sorted(_frames(ds, "cliprnn")[ds.first().id]) == [1, 3, 5]
    assert {s.start for s in _frames(ds, "cliprnn_scores")[ds.first().id].values()} == {"scratch"}
    assert run_info(ds, "cliprnn")["frame_step"] == 2
    assert form()["label_field"].default == "cliprnn_2"  # "cliprnn" is taken, as a frame field


def test_bad_video_settings_are_refused_before_any_frame(videos, clips, queries, make_dataset):
    ds = videos(clips["b"])
    assert isinstance(make_run(ds, queries, config="mini", load_model=False),
                      VideoSegmentationRun)  # fmt: skip
    with pytest.raises(ConfigError, match=r"make_run\(collection"):  # not an image run
        SegmentationRun(ds, queries, config="mini", load_model=False)
    with pytest.raises(ConfigError, match="frame_step must be an integer >= 1"):
        _segment(ds, queries, frame_step=0)
    with pytest.raises(ConfigError, match="frame_step labels every k-th frame of a video"):
        _segment(make_dataset(1), queries, frame_step=2)
    with pytest.raises(ConfigError, match="clips views"):
        _segment(ds.to_clips([[(1, 3)]]), queries)
    run = make_run(ds, queries, config="mini", load_model=False)
    with pytest.raises(ConfigError, match="sharded runs split image datasets"):
        run.spec()


def test_an_exemplar_query_stays_one_when_carried_or_restarted(
    videos, clips, queries, car, tmp_path, monkeypatch
) -> None:
    from PIL import Image

    from cliprnn.exemplars import Exemplars

    picture = tmp_path / "mascot.png"
    Image.fromarray(next(iter(read_frames(clips["a"])))).save(picture)
    mascot = Exemplars("mascot", (str(picture),), boxes=([0.25, 0.25, 0.5, 0.5],))
    calls: list[list] = []
    segment = car.segment

    def spy(image, subset, **kwargs):
        calls.append(list(subset))
        return segment(image, subset, **kwargs)

    monkeypatch.setattr(car, "segment", spy)
    ds = videos(clips["a"])
    summary = _segment(ds, [*queries[:3], mascot])
    assert summary.frames == 8 and "mascot" in ds.mask_targets["frames.car"].values()
    assert len(calls) == 8
    # every call after the first gets its queries from the previous frames (carried, or the
    # full list again at the scene cut): "mascot" is still the pictures, never the word
    assert "scene_cut" in [s.start for s in _frames(ds, "car_scores")[ds.first().id].values()]
    later = [q for subset in calls[1:] for q in subset if getattr(q, "name", q) == "mascot"]
    assert later and all(q is mascot for q in later)
