"""Adversarial labeling sequences in the real App (Chromium): an edit made right after a
fold-back that trimmed an overlap, and right after a rebuild, WITHOUT reloading the page; a
rebuild with unapplied edits on another sample; Apply after editing a second run's field.

After each step the database must equal the expected state and the field checker must find no
broken sample. The App keeps its own copy of every sample it has shown; without the plugin's
``refresh_samples`` JS operator an edit on that copy saves the old labels back (HTTP 412, then
a silent retry with the stale copy).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import annotate_driver as ad
import fiftyone as fo
import numpy as np
import pytest

from cliprnn.fiftyone import rebuild_instances
from cliprnn.fiftyone.instances import instance_pixels

pytestmark = [pytest.mark.e2e, pytest.mark.fiftyone, pytest.mark.slow]

SIZE = (128, 128)  # (W, H)
TARGETS = {1: "cat", 2: "dog"}
BRUSH = 16  # App brush size (screen px): ~3 image px at the 700 px display
CAT = (slice(40, 88), slice(16, 60))  # rows, cols of the cat block
DOG = (slice(40, 88), slice(66, 112))
#: Stroke 1 runs from inside the cat into the dog (an overlap the fold-back settles), stroke 2
#: below the cat over background (image pixel coordinates, x then y).
STROKE_INTO_DOG = [(40.5, 64.5), (90.5, 64.5)]
STROKE_BELOW = [(24.5, 97.5), (50.5, 97.5)]


def _mask(shift: int = 0) -> np.ndarray:
    m = np.zeros(SIZE[::-1], np.uint8)
    m[CAT] = 1
    m[DOG] = 2
    return np.roll(m, shift, axis=0)


@pytest.fixture
def integrity_dataset(tmp_root: Path):
    """Two 128×128 samples, each with a semantic field 'car' (a cat and a dog block side by
    side), its scores and its editable instances 'car_det'."""
    from PIL import Image

    from cliprnn.dev.scenes import generate_scene

    folder = tmp_root / "integrity-scenes"
    folder.mkdir(exist_ok=True)
    samples = []
    for i in range(2):
        path = folder / f"scene_{i}.png"
        Image.fromarray(generate_scene(5100 + i, size=SIZE[::-1]).image).save(path)
        scores = [fo.Classification(label=n, confidence=c) for n, c in (("cat", 0.9), ("dog", 0.8))]
        samples.append(
            fo.Sample(
                filepath=str(path),
                car=fo.Segmentation(mask=_mask(4 * i)),
                car_scores=fo.Classifications(classifications=scores),
            )
        )
    ds = fo.Dataset(f"cliprnn-integrity-{uuid.uuid4().hex[:8]}", persistent=True)
    ds.add_samples(samples)
    ds.mask_targets = {"car": dict(TARGETS)}
    ds.save()
    ds.compute_metadata()
    rebuild_instances(ds, "car")
    yield ds
    fo.delete_dataset(ds.name)


@pytest.fixture
def app(integrity_dataset, plugins_dir: Path, tmp_root: Path):
    log = tmp_root / f"integrity-app-{uuid.uuid4().hex[:6]}.log"
    with ad.plugin_app(integrity_dataset, plugins_dir, log) as session:
        yield session


def _check(ds) -> None:
    """The field checker, when the library has it, finds no broken sample."""
    try:
        from cliprnn.fiftyone.check import check_field
    except ImportError:
        return
    report = check_field(ds, "car")
    assert report.ok, report.broken


def _dets(ds, sid: str) -> list[fo.Detection]:
    ds.reload()
    return list(ds[sid]["car_det"].detections)


def _stored(ds, sid: str, field: str = "car") -> np.ndarray:
    """The semantic mask ``field`` of sample ``sid`` as stored now."""
    ds.reload()
    return ds[sid][field].get_mask()


def _pixels(det: fo.Detection) -> np.ndarray:
    return instance_pixels(det, SIZE[::-1])


def _by_label(ds, sid: str, label: str) -> fo.Detection:
    (det,) = [d for d in _dets(ds, sid) if d.label == label]
    return det


def _ensure_open(page, index: int) -> None:
    """The sample at grid ``index`` is open in the modal (the operator may have reopened it)."""
    if not ad.modal(page).count():
        ad.open_sample(page, index)
    ad.wait_for_media_box(page)


def _brush_on(page, label: str, points, nth: int = 0) -> str:
    """Select ``label`` in Annotate and paint ``points``; return the label id the App edited."""
    ad.ensure_field_shown(page, "car_det")
    assert ad.open_annotate_tab(page) == "labels"
    label_id = ad.select_detection(page, label, nth=nth)
    ad.brush(page, points, BRUSH, SIZE)
    ad.deselect(page)
    return label_id


def _run_apply(page, direction: str | None = None, scope_all: bool = False, tick=None):
    """Open 'Apply mask edits' from the modal's operator browser, set the form, Execute."""
    from playwright.sync_api import expect

    prompt = ad.open_operator(page, "Apply mask edits (CLIP as RNN)")
    if direction == "to_detections":
        prompt.get_by_text("Semantic mask → instances", exact=False).first.click()
    if scope_all:
        prompt.get_by_text("all 2 of the dataset", exact=False).first.click()
    if tick:
        prompt.get_by_text(tick, exact=True).first.click()
    execute = prompt.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled(timeout=30_000)
    execute.click()
    return prompt


def _finish(page, prompt, text: str) -> None:
    from playwright.sync_api import expect

    expect(prompt.get_by_text(text, exact=False).first).to_be_visible(timeout=120_000)
    ad.finish_prompt(page, prompt)


def _refreshed(page, timeout: float = 60) -> list[str]:
    """The sample ids the plugin's ``refresh_samples`` replaced in the App after the last
    operator (it also reopens the modal); waits for it to run."""
    count = "() => (window.__cliprnn__?.refreshes || []).length"
    ad.wait_until(page, lambda: page.evaluate(count) > 0, timeout=timeout, what="the refresh")
    done = page.evaluate("() => window.__cliprnn__.refreshes.flatMap(r => r.refreshed)")
    page.evaluate("() => { window.__cliprnn__.refreshes = []; }")
    return done


def test_edit_right_after_a_fold_back_that_trimmed_an_overlap(app, integrity_dataset) -> None:
    base, page, errors = app
    ds = integrity_dataset
    sid = ds.values("id")[0]
    dog0 = _pixels(_by_label(ds, sid, "dog"))

    ad.goto_dataset(page, base, ds.name, len(ds))
    ad.open_sample(page, 0)
    # 1. paint the cat into the dog, fold back: the dog is trimmed where the cat now is
    _brush_on(page, "cat", STROKE_INTO_DOG)
    cat1 = _pixels(_by_label(ds, sid, "cat"))
    assert (cat1 & dog0).sum() > 20, "the stroke did not reach into the dog"
    _finish(page, _run_apply(page), "1 sample(s) updated")
    dog1 = _pixels(_by_label(ds, sid, "dog"))
    np.testing.assert_array_equal(dog1, dog0 & ~cat1)  # trimmed to the pixels it kept
    expected = np.zeros(SIZE[::-1], np.uint8)
    expected[dog1], expected[cat1] = 2, 1
    np.testing.assert_array_equal(_stored(ds, sid), expected)
    _check(ds)

    # 2. without reloading the page, paint the cat again (below it, over background)
    assert _refreshed(page) == [sid]
    _ensure_open(page, 0)
    _brush_on(page, "cat", STROKE_BELOW)
    cat2 = _pixels(_by_label(ds, sid, "cat"))
    np.testing.assert_array_equal(_pixels(_by_label(ds, sid, "dog")), dog1)  # not restored
    assert (cat2 & ~cat1).sum() > 20 and not (cat1 & ~cat2).any()

    # 3. fold back again: the new stroke is there, the trimmed pixels stay with the cat
    _finish(page, _run_apply(page), "1 sample(s) updated")
    expected[cat2] = 1
    np.testing.assert_array_equal(_stored(ds, sid), expected)
    assert not ds[ds.values("id")[1]]["car"].has_field("edited")  # the other sample untouched
    _check(ds)
    assert not ad.unexpected_errors(errors), errors


def test_edit_right_after_a_rebuild(app, integrity_dataset) -> None:
    base, page, errors = app
    ds = integrity_dataset
    sid = ds.values("id")[0]
    before = {d.id for d in _dets(ds, sid)}

    ad.goto_dataset(page, base, ds.name, len(ds))
    ad.open_sample(page, 0)
    ad.ensure_field_shown(page, "car_det")  # the App now holds this sample's instances
    # 1. rebuild the open sample's instances from its semantic mask
    _finish(page, _run_apply(page, "to_detections"), "on 1 sample(s)")
    rebuilt = {d.id for d in _dets(ds, sid)}
    assert rebuilt and not rebuilt & before
    _check(ds)

    # 2. without reloading, paint the cat: the rebuilt instances stay, with the stroke
    assert _refreshed(page) == [sid]
    _ensure_open(page, 0)
    edited = _brush_on(page, "cat", STROKE_BELOW)
    assert edited in rebuilt
    assert {d.id for d in _dets(ds, sid)} == rebuilt  # no old instance came back
    cat = _pixels(_by_label(ds, sid, "cat"))
    cat0 = _mask() == 1
    assert (cat & ~cat0).sum() > 20 and not (cat0 & ~cat).any()
    np.testing.assert_array_equal(_pixels(_by_label(ds, sid, "dog")), _mask() == 2)

    # 3. fold back: exactly the stroke is added
    _finish(page, _run_apply(page), "1 sample(s) updated")
    expected = _mask()
    expected[cat] = 1
    np.testing.assert_array_equal(_stored(ds, sid), expected)
    _check(ds)
    assert not ad.unexpected_errors(errors), errors


def test_rebuild_refuses_to_discard_unapplied_edits_on_another_sample(
    app, integrity_dataset
) -> None:
    from playwright.sync_api import expect

    base, page, errors = app
    ds = integrity_dataset
    s0, s1 = ds.values("id")
    # an instance edit on the second sample, not folded back (as the Annotate tab saves it)
    sample = ds[s1]
    cat = next(d for d in sample["car_det"].detections if d.label == "cat")
    grown = _pixels(cat)
    grown[95:99, 20:50] = True
    drawn = fo.Detection.from_mask(grown, label="cat")
    cat.mask, cat.bounding_box = drawn.mask, drawn.bounding_box
    sample.save()
    edited_det = {d.id: _pixels(d) for d in ds[s1]["car_det"].detections}
    before_s0 = {d.id for d in _dets(ds, s0)}

    ad.goto_dataset(page, base, ds.name, len(ds))
    ad.open_sample(page, 0)
    prompt = ad.open_operator(page, "Apply mask edits (CLIP as RNN)")
    prompt.get_by_text("Semantic mask → instances", exact=False).first.click()
    # the form says what it touches: the open sample by default, or the whole dataset
    shown = prompt.get_by_text("on the open sample", exact=False).first
    says_open_sample = shown.or_(prompt.get_by_text("Instance field", exact=True)).first
    expect(says_open_sample).to_be_visible(timeout=30_000)
    page.wait_for_timeout(2000)  # the form resolves again after each change
    says_open_sample = shown.count() > 0
    whole = prompt.get_by_text("all 2 of the dataset", exact=False)
    if whole.count():
        whole.first.click()
    # refused: Execute disabled, the other sample named
    execute = prompt.get_by_role("button", name="Execute", exact=True)
    page.wait_for_timeout(2000)  # the form resolves again after each change
    expect(execute).to_be_disabled(timeout=30_000)
    expect(prompt.get_by_text(s1, exact=False).first).to_be_visible(timeout=30_000)
    assert says_open_sample
    expect(prompt.get_by_text("the whole dataset (2 samples)", exact=False).first).to_be_visible()
    assert {d.id for d in _dets(ds, s0)} == before_s0
    assert {d.id: _pixels(d) for d in _dets(ds, s1)}.keys() == edited_det.keys()
    # ticked: both samples rebuilt, the unapplied edit discarded as asked
    prompt.get_by_text("Discard unapplied instance edits", exact=True).first.click()
    expect(execute).to_be_enabled(timeout=30_000)
    execute.click()
    _finish(page, prompt, "discarded unapplied instance edits on 1 sample(s)")
    assert not {d.id for d in _dets(ds, s0)} & before_s0
    cat1 = _pixels(_by_label(ds, s1, "cat"))
    np.testing.assert_array_equal(cat1, _stored(ds, s1) == 1)
    _check(ds)
    assert not ad.unexpected_errors(errors), errors


def test_apply_after_editing_a_second_runs_field(app, integrity_dataset) -> None:
    from playwright.sync_api import expect

    base, page, errors = app
    ds = integrity_dataset
    sid = ds.values("id")[0]
    # a second run's fields beside the first: car_2 / car_2_det
    for sample in ds:
        sample["car_2"] = fo.Segmentation(mask=sample["car"].get_mask())
        sample.save()
    ds.mask_targets = {**ds.mask_targets, "car_2": dict(TARGETS)}
    ds.save()
    rebuild_instances(ds, "car_2")
    car_before = _stored(ds, sid).copy()

    ad.goto_dataset(page, base, ds.name, len(ds))
    ad.open_sample(page, 0)
    ad.ensure_field_shown(page, "car_2_det")
    cb = ad.modal_sidebar(page).get_by_test_id("checkbox-car_det")
    if cb.locator("input").is_checked():
        cb.click()  # only the second run's instances in Annotate
    assert ad.open_annotate_tab(page) == "labels"
    ad.select_detection(page, "cat")
    ad.brush(page, STROKE_BELOW, BRUSH, SIZE)
    ad.deselect(page)
    ds.reload()
    cat = _pixels(next(d for d in ds[sid]["car_2_det"].detections if d.label == "cat"))
    assert (cat & ~(car_before == 1)).sum() > 20

    prompt = ad.open_operator(page, "Apply mask edits (CLIP as RNN)")
    # Execute with what the form pre-selects: the pair just edited, which it names
    execute = prompt.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled(timeout=30_000)
    page.wait_for_timeout(2000)  # the form's defaults resolve after it opens
    names_pair = prompt.get_by_text("Writes 'car_2' (and trims", exact=False).count() > 0
    execute.click()
    expect(prompt.get_by_text("Folded edits into", exact=False).first).to_be_visible(
        timeout=120_000
    )
    ds.reload()
    assert not np.array_equal(_stored(ds, sid, "car_2"), car_before), "car_2 was not folded"
    assert names_pair
    _finish(page, prompt, "Folded edits into 'car_2': 1 sample(s) updated")
    expected = car_before.copy()
    expected[cat] = 1
    np.testing.assert_array_equal(_stored(ds, sid, "car_2"), expected)
    np.testing.assert_array_equal(_stored(ds, sid), car_before)  # first run untouched
    _check(ds)
    assert not ad.unexpected_errors(errors), errors


def test_overwrite_on_one_selected_sample_keeps_the_other_samples_meaning(
    app, integrity_dataset
) -> None:
    """Segment one selected sample into the existing field with Overwrite and other queries:
    the other sample still hovers as cat/dog (its mask values keep their names) and the
    field's classes grow."""
    from playwright.sync_api import expect

    if not ad.mini_shipped():
        pytest.skip("the bundled miniature CLIP is not shipped")
    base, page, errors = app
    ds = integrity_dataset
    s0, s1 = ds.values("id")
    other = _stored(ds, s1).copy()

    ad.goto_dataset(page, base, ds.name, len(ds))
    ad.select_in_grid(page, [0])
    prompt = ad.open_operator(page, "Segment with text (CLIP as RNN)")
    ad.field_after(prompt, "Text queries", "textarea").fill("red circle\nblue square")
    ad.pick_option(page, prompt, "Preset", "Bundled miniature CLIP (offline, for demos and tests)")
    ad.field_after(prompt, "Output field").fill("car")
    prompt.get_by_text("Overwrite an existing field", exact=True).first.click()
    execute = prompt.get_by_role("button", name="Execute", exact=True)
    page.wait_for_timeout(1500)  # the form resolves again after each change
    expect(execute).to_be_enabled(timeout=60_000)
    execute.click()
    # a generator operator ends on its progress view (its own dialog), then Done
    expect(page.get_by_text("Segmented 1/1 samples", exact=False).first).to_be_visible(
        timeout=180_000
    )
    page.get_by_role("button", name="Done", exact=True).click()
    expect(prompt).to_have_count(0, timeout=30_000)

    ds.reload()
    targets = {int(v): n for v, n in ds.mask_targets["car"].items()}
    assert {1: "cat", 2: "dog"}.items() <= targets.items()  # old classes keep their values
    assert {"red circle", "blue square"} <= set(targets.values())
    np.testing.assert_array_equal(_stored(ds, s1), other)  # untouched, same meaning
    new = _stored(ds, s0)
    assert set(np.unique(new)) <= {0} | {v for v, n in targets.items() if n not in TARGETS.values()}
    _check(ds)
    assert not ad.unexpected_errors(errors), errors
