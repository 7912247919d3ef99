"""End-to-end labeling in the real App: the Annotate tab's brush and eraser on an instance mask
of a Detections field, checked from the database (``docs/app_annotate_notes.md``).

Also records what the App needs first (an active label schema, the field shown in Explore)
and what it stores (mask resolution, box, ``mask_path``). Screenshots go to
``$CLIPRNN_ANNOT_SHOTS`` (default: a temp folder).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import annotate_driver as ad
import fiftyone as fo
import numpy as np
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.fiftyone, pytest.mark.slow]

FIELD = "car_det"
SIZE = (128, 128)  # (W, H) of the generated scenes
SEEDS = (3000, 3001)
BRUSH = 16  # App brush sizes: screen pixels (~2.9 / ~3.7 image pixels at 700 px display)
ERASER = 20
MARGIN = 6  # keep strokes this far (image px) from the edges: toolbars overlay the canvas


@pytest.fixture(scope="module")
def shots(tmp_root: Path) -> Path:
    path = Path(os.environ.get("CLIPRNN_ANNOT_SHOTS") or tmp_root / "annot-shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def annot_dataset(tmp_root: Path):
    """Two scenes with ``car_det``: one Detection per class present, from the label map. On the
    second sample the largest detection keeps its mask on disk (``mask_path``)."""
    from PIL import Image

    from cliprnn.dev.scenes import CLASSES, generate_scene

    folder = tmp_root / "annot-scenes"
    folder.mkdir(exist_ok=True)
    samples = []
    for i, seed in enumerate(SEEDS):
        scene = generate_scene(seed, size=(SIZE[1], SIZE[0]))
        path = folder / f"scene_{i}.png"
        Image.fromarray(scene.image).save(path)
        dets = [
            fo.Detection.from_mask(scene.label_map == v, label=CLASSES[v - 1])
            for v in np.unique(scene.label_map)
            if v
        ]
        if i == 1:
            big = max(dets, key=lambda d: int(d.mask.sum()))
            mpath = folder / f"mask_{i}_{big.label.replace(' ', '_')}.png"
            Image.fromarray(big.mask.astype(np.uint8) * 255).save(mpath)
            big.mask, big.mask_path = None, str(mpath)
        samples.append(fo.Sample(filepath=str(path), **{FIELD: fo.Detections(detections=dets)}))
    ds = fo.Dataset(f"cliprnn-annot-{uuid.uuid4().hex[:8]}", persistent=True)
    ds.add_samples(samples)
    ds.compute_metadata()
    yield ds
    fo.delete_dataset(ds.name)


@pytest.fixture(scope="module")
def app_base(annot_dataset, tmp_root: Path):
    annot_dataset.count()  # pre-warm the database before the server's first request
    with ad.serve_app(tmp_root / "annot-app-server.log") as base:
        yield base


@pytest.fixture(scope="module")
def page_errors(app_base):
    if not Path(ad.CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")
    with ad.chromium_page() as (page, errors):
        yield page, errors


def _settle(page) -> None:
    """Before a screenshot: the canvas is up and has had time to draw (no DOM signal)."""
    from playwright.sync_api import expect

    expect(ad.canvas(page)).to_be_visible(timeout=30_000)
    page.wait_for_timeout(1500)


def _det(ds, sample_id: str, det_id: str):
    ds.reload()
    return next(d for d in ds[sample_id][FIELD].detections if d.id == det_id)


def _box_px(det) -> list[float]:
    x, y, w, h = det.bounding_box
    return [x * SIZE[0], y * SIZE[1], w * SIZE[0], h * SIZE[1]]


def _strokes(full: np.ndarray, det) -> tuple[list, list]:
    """A brush line just outside the detection's box (below it, else above) and an eraser
    line through the middle of the longest run of mask pixels on one row."""
    w, h = SIZE
    x, y, bw, bh = _box_px(det)
    x0, x1 = max(MARGIN, x + 0.25 * bw), min(w - MARGIN, x + 0.75 * bw)
    row = y + bh + 3 if y + bh + 3 <= h - MARGIN else y - 3
    assert MARGIN <= row <= h - MARGIN, "no room for the brush line"
    brush = [(x0, row), (x1, row)]
    best = (0, 0, 0)
    for r in range(MARGIN, h - MARGIN):
        cols = np.flatnonzero(full[r, MARGIN : w - MARGIN]) + MARGIN
        if cols.size:
            runs = np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1)
            run = max(runs, key=len)
            if len(run) > best[0]:
                best = (len(run), r, run)
    n, r, run = best
    assert n >= 12, "no long enough run of mask pixels to erase"
    erase = [(run[0] + 0.25 * n + 0.5, r + 0.5), (run[0] + 0.75 * n + 0.5, r + 0.5)]
    return brush, erase


def _line_pixels(stroke: list, shrink: float = 1.5) -> list[tuple[int, int]]:
    """Image pixels (row, col) on a horizontal stroke's centre line, ends trimmed."""
    (xa, ya), (xb, _) = stroke
    return [(int(ya), c) for c in range(int(np.ceil(xa + shrink)), int(xb - shrink))]


def _near(shape, strokes: list, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    out = np.zeros(shape, bool)
    for (xa, ya), (xb, _) in strokes:
        dx = np.maximum(0, np.maximum(xa - xs, xs - xb))
        out |= np.hypot(dx, ys - ya) <= radius
    return out


def _record(det, before) -> dict:
    m = det.get_mask()
    box = _box_px(det)
    return dict(
        mask_inline=det.mask is not None,
        mask_path=det.mask_path,
        mask_shape=list(np.shape(m)),
        mask_dtype=str(np.asarray(m).dtype),
        mask_values=[int(v) for v in np.unique(m)][:4],
        box=[round(v, 6) for v in det.bounding_box],
        box_px=[round(v, 3) for v in box],
        mask_over_box=[round(m.shape[1] / box[2], 4), round(m.shape[0] / box[3], 4)],
        box_before_px=[round(v, 3) for v in _box_px(before)],
    )


def test_annotate_brush_and_erase_edit_the_mask(page_errors, app_base, annot_dataset, shots):
    page, errors = page_errors
    ds = annot_dataset
    found: dict = {"phases_s": {}}
    sid0, sid1 = ds.values("id")
    clock = [time.time()]

    def lap(name: str) -> None:
        found["phases_s"][name] = round(time.time() - clock[0], 1)
        clock[0] = time.time()

    # 1. Nothing in the label schema: Annotate offers "Add schema" only
    ad.goto_dataset(page, app_base, ds.name, len(ds))
    ad.open_sample(page, 0)
    assert ad.open_annotate_tab(page, require_labels=False) == "add-schema"
    _settle(page)
    page.screenshot(path=str(shots / "annot_no_schema.png"))
    # in the schema but not active: still "Add schema" (the App reads schemas on page load)
    lap("no_schema_page")
    ds.update_label_schema(FIELD, ds.generate_label_schemas(FIELD))
    ad.close_modal(page)
    ad.goto_dataset(page, app_base, ds.name, len(ds))
    ad.open_sample(page, 0)
    found["in_schema_not_active"] = ad.open_annotate_tab(page, require_labels=False)
    assert found["in_schema_not_active"] == "add-schema"
    lap("schema_inactive_page")
    ds.activate_label_schemas(FIELD)
    ad.close_modal(page)
    ad.goto_dataset(page, app_base, ds.name, len(ds))
    ad.open_sample(page, 0)

    lap("schema_active_page")
    # 2. Annotate lists only the fields shown in Explore
    ad.open_explore_tab(page)
    cb = ad.modal_sidebar(page).get_by_test_id(f"checkbox-{FIELD}")
    found["field_shown_by_default"] = cb.locator("input").is_checked()
    if found["field_shown_by_default"]:
        cb.click()
    assert ad.open_annotate_tab(page, require_labels=False) == "no-labels"
    _settle(page)
    page.screenshot(path=str(shots / "annot_field_not_shown.png"))
    ad.ensure_field_shown(page, FIELD)
    assert ad.open_annotate_tab(page) == "labels"

    lap("explore_tick_checks")
    # 3. Select the largest detection, brush outside it, erase inside it
    sample = ds[sid0]
    target = max(sample[FIELD].detections, key=lambda d: int(d.get_mask().sum()))
    before = target.copy()
    full0 = ad.detection_image_mask(target, SIZE)
    brush_pts, erase_pts = _strokes(full0, target)
    assert ad.select_detection(page, target.label) == target.id
    page.screenshot(path=str(shots / "annot_selected.png"))
    lap("select")
    t0 = time.time()
    ad.brush(page, brush_pts, BRUSH, SIZE)
    found["brush_to_settled_s"] = round(time.time() - t0, 2)
    page.screenshot(path=str(shots / "annot_brushed.png"))
    t0 = time.time()
    ad.erase(page, erase_pts, ERASER, SIZE)
    found["erase_to_settled_s"] = round(time.time() - t0, 2)
    page.screenshot(path=str(shots / "annot_erased.png"))

    det = _det(ds, sid0, target.id)
    full1 = ad.detection_image_mask(det, SIZE)
    painted = [full1[p] for p in _line_pixels(brush_pts)]
    erased = [not full1[p] for p in _line_pixels(erase_pts)]
    assert all(painted), f"brush line not set in the saved mask: {painted}"
    assert all(erased), f"eraser line not cleared in the saved mask: {erased}"
    assert not any(full0[p] for p in _line_pixels(brush_pts))  # it was outside the mask
    assert all(full0[p] for p in _line_pixels(erase_pts))  # and this was inside
    far = ~_near(full1.shape, [brush_pts, erase_pts], radius=6)
    found["unchanged_far_from_strokes"] = round(float((full0 == full1)[far].mean()), 4)
    assert found["unchanged_far_from_strokes"] > 0.98
    found["inline"] = _record(det, before)
    _, by, _, bh = _box_px(det)
    assert by <= brush_pts[0][1] <= by + bh, "the saved box does not cover the brush line"
    assert det.mask is not None and det.mask_path is None

    lap("brush_erase_db")
    # 4. A detection whose mask lives in mask_path: one brush stroke
    ad.close_modal(page)
    ad.open_sample(page, 1)
    ad.ensure_field_shown(page, FIELD)
    ad.open_annotate_tab(page)
    sample1 = ds[sid1]
    on_disk = next(d for d in sample1[FIELD].detections if d.mask_path)
    full_disk = ad.detection_image_mask(on_disk, SIZE)
    brush_pts1, _ = _strokes(full_disk, on_disk)
    ad.select_detection(page, on_disk.label)
    ad.brush(page, brush_pts1, BRUSH, SIZE)
    page.screenshot(path=str(shots / "annot_mask_path_brushed.png"))
    det1 = _det(ds, sid1, on_disk.id)
    found["from_mask_path"] = _record(det1, on_disk)
    found["from_mask_path"]["mask_path_before"] = on_disk.mask_path
    found["from_mask_path"]["old_mask_file_kept"] = Path(on_disk.mask_path).exists()
    assert det1.mask is not None and det1.mask_path is None  # the App inlined the edit
    full_disk1 = ad.detection_image_mask(det1, SIZE)
    assert all(full_disk1[p] for p in _line_pixels(brush_pts1))

    lap("mask_path_part")
    ad.close_modal(page)
    lap("close")
    found["page_errors"] = errors
    (shots / "annot_findings.json").write_text(json.dumps(found, indent=2))
    print(json.dumps(found, indent=2))
    assert not ad.unexpected_errors(errors), errors
