"""A field a run writes in the App shows the run's colours at once (the operator gives the App
the dataset's stored colour scheme), without switching datasets or reloading: each class's
mask pixels in the sample modal are the stored colour blended over the image."""

from __future__ import annotations

import io
from pathlib import Path

import annotate_driver as ad
import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

pytestmark = [pytest.mark.e2e, pytest.mark.fiftyone, pytest.mark.slow]

SIZE = (128, 128)  # (W, H)
SEEDS = (2001, 5301)  # scenes the bundled model finds large classes in


@pytest.fixture(scope="module")
def colour_dataset(tmp_root: Path, scenes_dataset):
    ds = scenes_dataset(tmp_root / "colour-scenes", SEEDS, SIZE[::-1], "cliprnn-colours-e2e")
    yield ds  # no colour scheme of its own yet: the run's is the first
    fo.delete_dataset(ds.name)


def _rgb(hex_colour: str) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) for i in (0, 2, 4)], dtype=float)


def _grab(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(float)


def test_a_new_field_shows_the_runs_colours_at_once(colour_dataset, plugins_dir, tmp_root):
    from playwright.sync_api import expect

    if not ad.mini_shipped():
        pytest.skip("the bundled miniature CLIP is not shipped")
    from operators.segment_params import PRESET_LABELS

    ds = colour_dataset
    with ad.plugin_app(ds, plugins_dir, tmp_root / "colours-app.log") as (base, page, errors):
        ad.goto_dataset(page, base, ds.name, len(ds))
        ad.select_in_grid(page, [0])
        prompt = ad.open_operator(page, "Segment with text (CLIP as RNN)")
        ad.pick_option(page, prompt, "Classes from the dataset", "Mask targets of 'ground_truth'")
        ad.pick_option(page, prompt, "Preset", PRESET_LABELS["mini"])
        ad.field_after(prompt, "Output field").fill("car")
        execute = prompt.get_by_role("button", name="Execute", exact=True)
        expect(execute).to_be_enabled(timeout=30_000)
        execute.click()
        ad.wait_until(page, lambda: ds.reload() or (ds.has_field("car") and ds.count("car") == 1),
                      what="the run")  # fmt: skip
        expect(page.get_by_text("Segmented 1/1 samples")).to_be_visible(timeout=60_000)
        ad.finish_prompt(page, page.get_by_test_id("operators-prompt-view-modal"))

        ds.reload()
        sample = ds.exists("car").first()
        mask = sample["car"].get_mask()
        stored = {f["path"]: f for f in ds.app_config.color_scheme.fields}["car"]
        colours = {c["intTarget"]: _rgb(c["color"]) for c in stored["maskTargetsColors"]}

        ad.open_sample(page, 0)
        for field in ("ground_truth", "car_det"):  # the mask of 'car' alone
            cb = ad.modal_sidebar(page).get_by_test_id(f"checkbox-{field}")
            if cb.count() and cb.locator("input").is_checked():
                cb.click()
        ad.ensure_field_shown(page, "car")
        r = ad.looker_rect(page, SIZE)
        page.mouse.move(5, 5)  # no tooltip over the picture
        page.wait_for_timeout(1500)  # canvases draw without a DOM signal
        xs = (r["x"] + (np.arange(SIZE[0]) + 0.5) * r["scale"]).astype(int)
        ys = (r["y"] + (np.arange(SIZE[1]) + 0.5) * r["scale"]).astype(int)
        shown = _grab(page)[np.ix_(ys, xs)]
        bare = np.asarray(Image.open(sample.filepath).convert("RGB")).astype(float)

        checked = 0
        for value, colour in colours.items():  # the image's own pixels beneath the mask
            inside = ndimage.binary_erosion(mask == value, iterations=2)
            if inside.sum() < 30:
                continue
            s, b = shown[inside], bare[inside]
            # shown = a * colour + (1 - a) * bare, for the App's mask opacity a
            d = colour - b
            a = float((s - b).ravel() @ d.ravel() / max(d.ravel() @ d.ravel(), 1e-6))
            residual = np.sqrt(np.mean((s - (b + a * d)) ** 2))
            assert 0.2 < a < 1.0 and residual < 12, (value, a, residual)
            checked += 1
        assert checked >= 1, "no class covers enough pixels to check its colour"
        assert not ad.unexpected_errors(errors), errors
