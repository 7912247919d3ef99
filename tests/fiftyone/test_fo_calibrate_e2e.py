"""Calibration in a real browser, as a person does it: select the labelled samples, run
"Calibrate on labelled samples", read its curves and before/after table, then segment with the
stored calibration chosen in the segment form's preset list.

Screenshots go to ``$CLIPRNN_SCREENSHOTS`` (``docs/images`` retakes the docs' pictures:
``calibration_form.png``, ``calibration_curve.png``, ``calibration_result.png``).
"""

from __future__ import annotations

import re
from pathlib import Path

import annotate_driver as ad
import fiftyone as fo
import pytest
from test_fo_calibrate import labelled_scenes

from cliprnn.config import CaRConfig
from cliprnn.fiftyone import run_info
from cliprnn.fiftyone.calibration import calibration_config, list_calibrations

pytestmark = [pytest.mark.e2e, pytest.mark.fiftyone, pytest.mark.slow]

SEEDS = (4302, 4326, 4327, 4311)  # 1-2 objects each, 3 classes in all: a short search
LABELLED = (0, 1, 2, 3)  # grid positions of the labelled samples (the fifth has no ground truth)
NAME = "shapes"


@pytest.fixture(scope="module")
def shots(tmp_root: Path) -> Path:
    return ad.screenshots_dir(tmp_root / "calibration-shots")


@pytest.fixture(scope="module")
def labelled(tmp_root: Path):
    ds = labelled_scenes(tmp_root / "calibration-e2e", SEEDS, name="cliprnn-calib-e2e")
    ds.add_sample(fo.Sample(filepath=ds.first().filepath))  # a sample nobody labelled
    yield ds
    fo.delete_dataset(ds.name)


@pytest.fixture(scope="module")
def app(labelled, plugins_dir: Path, tmp_root: Path):
    with ad.plugin_app(labelled, plugins_dir, tmp_root / "calibration-app.log") as session:
        yield session


def test_calibrate_the_selection_then_segment_with_it(app, labelled, shots) -> None:
    from playwright.sync_api import expect

    base, page, errors = app
    ds = labelled
    if not ad.mini_shipped():
        pytest.skip("the bundled miniature CLIP is not shipped")
    ids = ds.values("id")
    chosen = [ids[i] for i in LABELLED]

    # 1. select the labelled samples, open the operator, set a small search
    ad.goto_dataset(page, base, ds.name, len(ds))
    ad.select_in_grid(page, LABELLED)
    prompt = ad.open_operator(page, "Calibrate on labelled samples")
    notice = "Calibrates on the 4 selected samples, against 'ground_truth'"
    expect(prompt.get_by_text(notice)).to_be_visible(timeout=60_000)
    expect(prompt.get_by_text("Bundled miniature CLIP", exact=False).first).to_be_visible()
    ad.field_after(prompt, "Budget", exact=True).fill("2")
    ad.field_after(prompt, "Cross-validation folds", exact=True).fill("2")
    ad.field_after(prompt, "Name", exact=True).fill(NAME)
    expect(prompt.get_by_text(f"Stores the calibration '{NAME}'", exact=False)).to_be_visible(
        timeout=15_000
    )
    execute = prompt.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled(timeout=15_000)
    ad.screenshot(page, shots, "calibration_form.png")
    execute.click()

    # 2. the run stores the calibration; the prompt shows the summary, table and curves
    ad.wait_until(page, lambda: NAME in list_calibrations(ds), 600, "the stored calibrations")
    record = list_calibrations(ds)[NAME]
    # the output replaces the form's prompt with FiftyOne's output view
    prompt = page.get_by_test_id("operators-prompt-view-modal")
    summary = prompt.get_by_text(f"Stored the calibration '{NAME}': ", exact=False)
    expect(summary.first).to_be_visible(timeout=60_000)
    expect(prompt.get_by_text(f"Calibrated '{NAME}'", exact=True)).to_be_visible()
    expect(prompt.get_by_text("mIoU, cross-validated (%), 95 % interval")).to_be_visible()
    expect(prompt.get_by_text(f"{record['base_score']:.1f} [", exact=False).first).to_be_visible()
    plots = prompt.locator(".js-plotly-plot")
    expect(plots).to_have_count(5, timeout=60_000)
    theta = plots.first
    theta.scroll_into_view_if_needed()
    expect(theta.get_by_text("mIoU against θ: confidence threshold")).to_be_visible()
    page.wait_for_timeout(1500)  # the plot draws its traces after the layout
    theta.screenshot(path=str(shots / "calibration_curve.png"))
    ad.screenshot(page, shots, "calibration_result.png")
    prompt.get_by_role("button", name="Done", exact=True).filter(visible=True).first.click()
    expect(prompt).to_have_count(0, timeout=30_000)

    # 3. segment the selection with the stored calibration, chosen in the preset list
    label = f"Calibration '{NAME}': "  # how the preset list names it (then its scores)
    prompt = ad.open_operator(page, "Segment with text (CLIP as RNN)")
    expect(prompt.get_by_text("Current selection").first).to_be_visible(timeout=60_000)
    ad.pick_option(page, prompt, "Classes from the dataset", "Mask targets of 'ground_truth'")
    prompt.get_by_text("Preset", exact=True).first.locator(
        "xpath=following::*[@role='combobox' or @aria-haspopup='listbox'][1]"
    ).click()
    page.get_by_role("option", name=re.compile("^" + re.escape(label))).click()
    page.wait_for_timeout(500)
    expect(prompt.get_by_text(label, exact=False).first).to_be_visible()
    execute = prompt.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled(timeout=15_000)
    execute.click()

    def written() -> bool:
        ds.reload()
        return "cliprnn" in ds.get_field_schema() and ds.count("cliprnn") == len(chosen)

    ad.wait_until(page, written, 300)
    assert sorted(ds.exists("cliprnn").values("id")) == sorted(chosen)
    info = run_info(ds, "cliprnn")
    assert info["calibration"] == NAME
    assert info["config"] == CaRConfig.resolve(calibration_config(ds, NAME)).to_dict()
    expect(page.get_by_text(f"Segmented {len(chosen)}/{len(chosen)} samples")).to_be_visible(
        timeout=60_000
    )
    page.get_by_role("button", name="Done", exact=True).click()
    expect(prompt).to_have_count(0, timeout=30_000)
    assert not ad.unexpected_errors(errors), errors
