"""Queries made of pictures in a real browser, as a person does it: select samples in the grid,
store them with "Use selection as exemplars", segment the dataset for the stored set plus a
text query, and see the set's mask in the sample modal.

Screenshots of each stage go to ``$CLIPRNN_SCREENSHOTS`` (``docs/images`` retakes the README's).
"""

from __future__ import annotations

from pathlib import Path

import annotate_driver as ad
import fiftyone as fo
import numpy as np
import pytest

from cliprnn.fiftyone.exemplar_sets import list_exemplar_sets, load_exemplar_set

pytestmark = [pytest.mark.e2e, pytest.mark.fiftyone, pytest.mark.slow]

SIZE = (128, 128)  # (W, H) of the scenes
SEEDS = (4200, 4201, 4202, 4203)
CHOSEN = (1, 2)  # grid positions of the samples that become the exemplars
NAME = "mascot"
TEXT = "white diamond"


@pytest.fixture(scope="module")
def shots(tmp_root: Path) -> Path:
    return ad.screenshots_dir(tmp_root / "exemplar-shots")


@pytest.fixture(scope="module")
def pictures_dataset(tmp_root: Path, scenes_dataset):
    ds = scenes_dataset(tmp_root / "exemplar-scenes", SEEDS, SIZE[::-1], "cliprnn-exemplars-e2e")
    ds.app_config.color_scheme = fo.ColorScheme(color_by="value")
    ds.save()
    yield ds
    fo.delete_dataset(ds.name)


@pytest.fixture(scope="module")
def app(pictures_dataset, plugins_dir: Path, tmp_root: Path):
    with ad.plugin_app(pictures_dataset, plugins_dir, tmp_root / "exemplars-app.log") as session:
        yield session


def test_store_a_selection_as_exemplars_and_segment_with_it(app, pictures_dataset, shots) -> None:
    from playwright.sync_api import expect

    base, page, errors = app
    ds = pictures_dataset
    if not ad.mini_shipped():
        pytest.skip("the bundled miniature CLIP is not shipped")
    ids = ds.values("id")
    chosen = [ids[i] for i in CHOSEN]

    # 1. select two samples, store them as the exemplar set "mascot"
    ad.goto_dataset(page, base, ds.name, len(ds))
    ad.select_in_grid(page, CHOSEN)
    ad.screenshot(page, shots, "exemplars_1_select.png")
    prompt = ad.open_operator(page, "Use selection as exemplars")
    expect(prompt.get_by_text("Exemplars: the 2 samples selected")).to_be_visible(timeout=60_000)
    ad.field_after(prompt, "Name").fill(NAME)
    execute = prompt.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled(timeout=15_000)
    ad.screenshot(page, shots, "exemplars_2_store.png")
    execute.click()
    ad.wait_until(page, lambda: NAME in list_exemplar_sets(ds), 60, "the stored sets")
    stored = load_exemplar_set(ds, NAME).images
    assert sorted(stored) == sorted(ds.select(chosen).values("filepath"))
    expect(prompt.get_by_text(f"Stored the exemplar set {NAME} (2 samples)")).to_be_visible(
        timeout=30_000
    )
    ad.finish_prompt(page, prompt)

    # 2. segment the whole dataset for the stored set and a text query
    prompt = ad.open_operator(page, "Segment with text (CLIP as RNN)")
    expect(prompt.get_by_text("Current selection").first).to_be_visible(timeout=60_000)
    prompt.get_by_text("Entire dataset").first.click()
    ad.pick_options(page, prompt, "Exemplar sets", [f"{NAME} (2 samples)"])
    ad.field_after(prompt, "Text queries", "textarea").fill(TEXT)
    expect(prompt.get_by_text("Bundled miniature CLIP", exact=False).first).to_be_visible()
    execute = prompt.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled(timeout=15_000)
    ad.screenshot(page, shots, "exemplars_3_segment_form.png")
    execute.click()

    def written() -> bool:
        ds.reload()
        return "cliprnn" in ds.get_field_schema() and ds.count("cliprnn") == len(ds)

    ad.wait_until(page, written, 300)
    targets = ds.mask_targets["cliprnn"]
    assert sorted(targets.values()) == sorted([TEXT, NAME])
    value = next(v for v, n in targets.items() if n == NAME)
    masks = dict(zip(ids, ds.values("cliprnn.mask"), strict=True))
    assert all(m.shape == SIZE[::-1] for m in masks.values())
    pixels = {sid: int((m == value).sum()) for sid, m in masks.items()}
    assert any(pixels.values()), f"no '{NAME}' pixel in any mask: {pixels}"
    expect(page.get_by_text(f"Segmented {len(ds)}/{len(ds)} samples")).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Done", exact=True).click()
    expect(prompt).to_have_count(0, timeout=30_000)

    # 3. open the sample with the most "mascot" pixels: the tooltip names the set over them
    sid = max(pixels, key=pixels.get)
    ad.open_sample(page, ids.index(sid))
    ad.ensure_field_shown(page, "cliprnn")
    ys, xs = np.nonzero(masks[sid] == value)
    centre = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)  # a pixel of the set
    point = (xs[centre] + 0.5, ys[centre] + 0.5)
    ad.hover_until_text(page, lambda: ad.image_to_page(page, point, SIZE), NAME)
    ad.screenshot(page, shots, "exemplars_4_result.png")
    ad.close_modal(page)
    assert not ad.unexpected_errors(errors), errors
