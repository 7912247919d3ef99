"""Videos in a real browser: segment a dataset of H.264 mp4 clips from the App's form, open a
labelled video in the sample modal, play it, step to a frame, and see that frame's mask drawn
over it: the overlay covers the stored mask of the frame the player shows, and the picture is
that frame of the file (Debian's Chromium plays H.264).

Screenshots go to ``$CLIPRNN_SCREENSHOTS`` (``docs/images`` retakes the README's).
"""

from __future__ import annotations

from pathlib import Path

import annotate_driver as ad
import fiftyone as fo
import numpy as np
import pytest

from cliprnn.dev.clips import generate_clip
from cliprnn.video import read_frames

pytestmark = [pytest.mark.e2e, pytest.mark.fiftyone, pytest.mark.slow]

SIZE = (128, 128)  # (W, H) of the clips
SEEDS = (60, 61)
FRAMES = 8


def _clips():
    return [generate_clip(s, size=SIZE[::-1], n_frames=FRAMES, n_objects=2) for s in SEEDS]


@pytest.fixture(scope="module")
def shots(tmp_root: Path) -> Path:
    return ad.screenshots_dir(tmp_root / "video-shots")


@pytest.fixture(scope="module")
def video_dataset(tmp_root: Path):
    import uuid

    folder = tmp_root / "video-clips"
    clips = zip(SEEDS, _clips(), strict=True)
    paths = [clip.write(folder / f"clip_{seed}.mp4") for seed, clip in clips]
    ds = fo.Dataset(f"cliprnn-video-e2e-{uuid.uuid4().hex[:8]}", persistent=True)
    ds.add_samples([fo.Sample(filepath=str(p)) for p in paths])
    ds.compute_metadata()  # the App's video player needs it
    ds.app_config.color_scheme = fo.ColorScheme(color_by="value")
    ds.save()
    yield ds
    fo.delete_dataset(ds.name)


@pytest.fixture(scope="module")
def app(video_dataset, plugins_dir: Path, tmp_root: Path):
    with ad.plugin_app(video_dataset, plugins_dir, tmp_root / "video-app.log") as session:
        yield session


def _show_only(page, field: str, others: list[str]) -> None:
    """In the modal's sidebar, tick ``field`` and untick ``others``."""
    from playwright.sync_api import expect

    sidebar = ad.modal_sidebar(page)
    for name, wanted in [(n, False) for n in others] + [(field, True)]:
        box = sidebar.get_by_test_id(f"checkbox-{name}")
        expect(box).to_be_visible(timeout=ad.UI_TIMEOUT_MS)
        if box.locator("input").is_checked() != wanted:
            box.click()
        expect(box.locator("input")).to_be_checked(checked=wanted)


def test_segment_a_video_dataset_and_see_a_frame_mask_in_the_player(
    app, video_dataset, shots
) -> None:
    from playwright.sync_api import expect

    base, page, errors = app
    ds = video_dataset
    if not ad.mini_shipped():
        pytest.skip("the bundled miniature CLIP is not shipped")
    queries = sorted({n for c in _clips() for t in range(len(c)) for n in c.present_names(t)})

    # 1. the segment form on a video dataset: it says frames are labelled, offers frame_step
    ad.goto_dataset(page, base, ds.name, len(ds))
    prompt = ad.open_operator(page, "Segment with text (CLIP as RNN)")
    expect(prompt.get_by_text("Label every k-th frame").first).to_be_visible(timeout=60_000)
    expect(prompt.get_by_text("the frames are labelled", exact=False).first).to_be_visible()
    expect(prompt.get_by_text("Carry the queries through time").first).to_be_visible()
    ad.field_after(prompt, "Text queries", "textarea").fill("\n".join(queries))
    expect(prompt.get_by_text("Bundled miniature CLIP", exact=False).first).to_be_visible()
    execute = prompt.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled(timeout=15_000)
    ad.screenshot(page, shots, "video_1_segment_form.png")
    execute.click()

    def written() -> bool:
        ds.reload()
        return "cliprnn" in ds.get_frame_field_schema() and ds.count("frames.cliprnn") == 2 * FRAMES

    ad.wait_until(page, written, 300)
    progress = f"Segmented {2 * FRAMES}/{2 * FRAMES} frames of 2/2 videos"
    expect(page.get_by_text(progress).first).to_be_visible(timeout=60_000)
    assert ds.mask_targets["frames.cliprnn"] == dict(enumerate(queries, start=1))
    page.get_by_role("button", name="Done", exact=True).click()
    expect(prompt).to_have_count(0, timeout=30_000)

    # 2. open the first video, play it, then step to the frame with the largest mask
    sample = ds.first()
    masks = {n: f["cliprnn"].mask for n, f in sample.frames.items()}
    target = max(masks, key=lambda n: int((masks[n] > 0).sum()))
    assert (masks[target] > 0).sum() > 200, "the mini model labelled too little to look at"
    ad.open_sample(page, 0)
    _show_only(page, "frames.cliprnn", ["frames.cliprnn_det", "frames.cliprnn_scores"])
    played = ad.play_video(page)
    assert len(played) > 1 and played[-1] > played[0], f"the video did not play: {played}"
    ad.seek_frame(page, target)

    # 3. the overlay is this frame's stored mask, drawn over this frame of the file
    drawn, bare = ad.overlay_pixels(page, SIZE)
    labelled = {n: m > 0 for n, m in masks.items()}
    iou = {n: (drawn & m).sum() / max(1, (drawn | m).sum()) for n, m in labelled.items()}
    assert max(iou, key=iou.get) == target and iou[target] > 0.8, iou
    decoded = list(read_frames(sample.filepath))
    error = [np.abs(bare.astype(float) - f).mean() for f in decoded]
    assert int(np.argmin(error)) == target - 1 and error[target - 1] < 12, error
    ys, xs = np.nonzero(masks[target])
    centre = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    value = int(masks[target][ys[centre], xs[centre]])

    def centre_on_page() -> tuple[float, float]:
        r = ad.looker_rect(page, SIZE)
        return r["x"] + (xs[centre] + 0.5) * r["scale"], r["y"] + (ys[centre] + 0.5) * r["scale"]

    ad.hover_until_text(page, centre_on_page, queries[value - 1])
    assert ad.shown_frame(page) == target  # hovering did not move the player
    ad.screenshot(page, shots, "video_2_frame_mask.png")
    ad.close_modal(page)
    assert not ad.unexpected_errors(errors), errors
