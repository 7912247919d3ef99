"""The plugin inside a real FiftyOne App server: its operator listing, forms and generator
execution over HTTP, and (marker ``e2e``) the operator browser in headless Chromium, which
also takes the README screenshots."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import annotate_driver as ad
import fiftyone as fo
import numpy as np
import pytest

pytestmark = [pytest.mark.fiftyone, pytest.mark.slow]

URI = "@cliprnn/clip-as-rnn"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Set CLIPRNN_SCREENSHOTS=docs/images to retake the README screenshots (else a temp folder).
SHOTS_ENV = "CLIPRNN_SCREENSHOTS"
QUERIES = ["red circle", "blue square"]


def _post(base: str, path: str, body: dict, timeout: float = 120) -> bytes:
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


@pytest.fixture(scope="module")
def app_dataset(tmp_root: Path, scenes_dataset):
    """A persistent dataset of four 128×128 scenes with ground truth (the App needs it saved)."""
    ds = scenes_dataset(tmp_root / "app-scenes", range(2000, 2004), (128, 128), "cliprnn-app")
    ds.app_config.color_scheme = fo.ColorScheme(color_by="value")
    ds.save()
    yield ds
    fo.delete_dataset(ds.name)


@pytest.fixture(scope="module")
def app_server(app_dataset, plugins_dir: Path, tmp_root: Path):
    """A FiftyOne App server on a free port, started (and stopped) by this test process."""
    app_dataset.count()  # the database is up before the server's first request
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {"FIFTYONE_PLUGINS_DIR": str(plugins_dir), "PYTHONPATH": path}
    with ad.serve_app(tmp_root / "app-server.log", env=env) as base:
        yield base


def _advanced(tiny_config) -> dict:
    return dict(
        advanced=True,
        proposal_model=tiny_config.proposal_model,
        classifier_model=tiny_config.classifier_model,
        device="cpu",
    )


def test_server_lists_operators_without_errors(app_server, app_dataset) -> None:
    got = json.loads(_post(app_server, "/operators", {"dataset_name": app_dataset.name}))
    uris = {o["uri"] for o in got["operators"]}
    assert {f"{URI}/segment", f"{URI}/apply_mask_edits", f"{URI}/edit_mask_classes"} <= uris
    assert got["errors"] == []


def _form(base: str, ds, params: dict, selected: list[str] | None = None) -> dict:
    body = dict(dataset_name=ds.name, operator_uri=f"{URI}/segment", target="inputs",
                params=params, selected=selected or [])  # fmt: skip
    return json.loads(_post(base, "/operators/resolve-type", body))


def test_form_prefills_classes_and_flags_existing_field(app_server, app_dataset) -> None:
    form = _form(app_server, app_dataset, {"classes_from": "mask_targets:ground_truth"})
    props = form["type"]["properties"]
    from cliprnn.dev.scenes import CLASSES

    assert props["classes"]["default"] == list(CLASSES)
    assert "query_text" in props and "preset" in props and "view_target" in props
    assert "queries_error" not in props and props["query_text"]["required"] is False
    choices = {c["value"]: c["label"] for c in props["classes_from"]["view"]["choices"]}
    assert choices["none"] == "None (free text only)"  # a visible "none", not a blank
    app_dataset.add_sample_field("car_exists", fo.EmbeddedDocumentField, fo.Segmentation)
    try:
        props = _form(app_server, app_dataset, {"label_field": "car_exists", "queries": ["a"]})[
            "type"
        ]["properties"]
        assert props["label_field_error"]["invalid"] is True
        props = _form(
            app_server,
            app_dataset,
            {"label_field": "car_exists", "queries": ["a"], "overwrite": True},
        )["type"]["properties"]
        assert "label_field_error" not in props and "label_field_warning" in props
    finally:
        app_dataset.delete_sample_field("car_exists")
    # nothing typed yet: no red error, but Execute waits for a query
    props = _form(app_server, app_dataset, {})["type"]["properties"]
    assert "queries_error" not in props and props["query_text"]["required"] is True
    assert not [p for p in props.values() if p.get("invalid")]


def test_form_opens_without_errors_on_a_field_that_exists(app_server, app_dataset) -> None:
    app_dataset.add_sample_field("cliprnn", fo.EmbeddedDocumentField, fo.Segmentation)
    try:
        props = _form(app_server, app_dataset, {"query_text": "a"})["type"]["properties"]
        assert props["label_field"]["default"] == "cliprnn_2"
        assert not [p for p in props.values() if p.get("invalid")]
    finally:
        app_dataset.delete_sample_field("cliprnn")


def test_form_refuses_models_it_cannot_load_and_defaults_to_mini_offline(
    app_server, app_dataset
) -> None:
    props = _form(app_server, app_dataset, {"query_text": "a"})["type"]["properties"]
    assert props["preset"]["default"] == "mini"  # HF_HUB_OFFLINE and no cached CLIP
    props = _form(app_server, app_dataset, {"query_text": "a", "preset": "voc"})["type"][
        "properties"
    ]
    assert props["models_error"]["invalid"] is True
    assert "openai/clip-vit-base-patch16" in props["models_error"]["error_message"]
    assert "Bundled miniature CLIP" in props["models_error"]["error_message"]


def test_form_rejects_bad_advanced_settings(app_server, app_dataset) -> None:
    params = {"queries": ["a"], "advanced": True, "confidence_threshold": 1.5}
    props = _form(app_server, app_dataset, params)["type"]["properties"]
    assert props["config_error"]["invalid"] is True
    assert "confidence_threshold" in props["config_error"]["error_message"]


def test_form_offers_precision_and_rejects_an_unknown_one(app_server, app_dataset) -> None:
    params = {"queries": ["a"], "advanced": True}
    props = _form(app_server, app_dataset, params)["type"]["properties"]
    choices = [c["value"] for c in props["dtype"]["view"]["choices"]]
    assert choices == ["float32", "bfloat16", "float16"]
    assert props["dtype"]["default"] == "float32"
    assert "AMX" in props["dtype"]["view"]["description"]
    props = _form(app_server, app_dataset, {**params, "dtype": "int8"})["type"]["properties"]
    assert "dtype" in props["config_error"]["error_message"]


def test_generator_execution_streams_progress_and_writes_selected(
    app_server, app_dataset, tiny_config
) -> None:
    chosen = app_dataset.values("id")[2]
    params = dict(view_target="SELECTED_SAMPLES", queries=QUERIES, label_field="car_http",
                  **_advanced(tiny_config))  # fmt: skip
    body = dict(dataset_name=app_dataset.name, operator_uri=f"{URI}/segment", params=params,
                selected=[chosen])  # fmt: skip
    lines = [
        json.loads(x)
        for x in _post(app_server, "/operators/execute/generator", body).splitlines()
        if x.strip()
    ]
    called = [m["body"].get("operator_uri") for m in lines if isinstance(m.get("body"), dict)]
    assert "set_progress" in called and "reload_dataset" in called, lines
    # the App shows the new field when the run ends
    shown = [m["body"] for m in lines if "set_active_fields" in str(m.get("body"))]
    assert shown and "car_http" in str(shown[-1]), lines
    app_dataset.reload()
    assert app_dataset.exists("car_http").values("id") == [chosen]
    app_dataset.delete_sample_field("car_http")


def _stream(base: str, ds, operator: str, params: dict, selected=()) -> list[dict]:
    body = dict(dataset_name=ds.name, operator_uri=f"{URI}/{operator}", params=params,
                selected=list(selected))  # fmt: skip
    raw = _post(base, "/operators/execute/generator", body)
    return [json.loads(x) for x in raw.splitlines() if x.strip()]


def test_a_failing_run_tells_the_app_why(app_server, app_dataset, tmp_path) -> None:
    broken = tmp_path / "broken-clip"  # looks like a CLIP folder, has no weights
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "clip"}')
    model = str(broken)
    params = dict(query_text="red circle", label_field="car_broken", advanced=True,
                  proposal_model=model, classifier_model=model, device="cpu")  # fmt: skip
    lines = _stream(app_server, app_dataset, "segment", params)
    notes = [m["body"]["params"] for m in lines if m["body"].get("operator_uri") == "notify"]
    assert notes and notes[-1]["variant"] == "error", lines
    assert "ModelLoadError" in notes[-1]["message"] and str(broken) in notes[-1]["message"]
    app_dataset.reload()
    assert "car_broken" not in app_dataset.get_field_schema()


def test_edit_operators_reload_the_open_sample(app_server, app_dataset) -> None:
    from cliprnn.fiftyone import rebuild_instances

    sid = app_dataset.values("id")[0]
    app_dataset.add_sample_field("car_fb", fo.EmbeddedDocumentField, fo.Segmentation)
    sample = app_dataset[sid]
    sample["car_fb"] = fo.Segmentation(mask=np.eye(8, dtype=np.uint8))
    sample.save()
    app_dataset.mask_targets = {**app_dataset.mask_targets, "car_fb": {1: "line"}}
    app_dataset.save()
    rebuild_instances(app_dataset.select(sid), "car_fb")
    sample = app_dataset[sid]
    sample["car_fb_det"].detections = []  # the user deleted the instance
    sample.save()
    try:
        for operator, params in (
            ("apply_mask_edits", {"label_field": "car_fb", "detections_field": "car_fb_det"}),
            ("edit_mask_classes", {"label_field": "car_fb", "action": "rename",
                                   "classes": ["line"], "new_name": "stroke"}),
        ):  # fmt: skip
            body = dict(dataset_name=app_dataset.name, operator_uri=f"{URI}/{operator}",
                        params=params, current_sample=sid)  # fmt: skip
            got = json.loads(_post(app_server, "/operators/execute", body))
            requests = got["executor"]["requests"]
            called = [r["operator_uri"] for r in requests]
            assert "reload_samples" in called and "reload_dataset" in called, got
            assert "close_sample" in called, got  # the stale open sample is closed
            # the App replaces its copy of the rewritten sample and reopens it (plugin JS)
            (refresh,) = [r["params"] for r in requests
                          if r["operator_uri"] == f"{URI}/refresh_samples"]  # fmt: skip
            assert refresh["reopen"] == sid and (refresh["ids"] is None or sid in refresh["ids"])
            notes = [r["params"]["message"] for r in requests if r["operator_uri"] == "notify"]
            assert notes and "reload the page" not in notes[-1], got  # no F5 step left
        app_dataset.reload()
        assert app_dataset.label_schemas["car_fb_det"]["classes"] == ["stroke"]
    finally:
        app_dataset.delete_sample_fields(["car_fb", "car_fb_det"])


# ------------------------------------------------------------------------- browser (e2e)
@pytest.fixture(scope="module")
def browser_page(app_server):
    if not Path(ad.CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with ad.chromium_page() as (page, errors):
        yield page, sync_api.expect, errors


@pytest.fixture(scope="module")
def shots_dir(tmp_root: Path) -> Path:
    chosen = os.environ.get(SHOTS_ENV)
    path = Path(chosen).resolve() if chosen else tmp_root / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.e2e
def test_app_runs_segment_on_selected_sample(
    browser_page, app_server, app_dataset, tiny_config, shots_dir
) -> None:
    page, expect, errors = browser_page
    page.goto(f"{app_server}/datasets/{app_dataset.name}", wait_until="domcontentloaded")
    grid = page.get_by_test_id("fo-grid")
    expect(grid.locator("[data-cy=looker] canvas[canvas-loaded=true]")).to_have_count(
        len(app_dataset), timeout=60_000
    )
    looker = grid.get_by_test_id("looker").nth(1)
    looker.hover()
    looker.get_by_test_id("looker-checkbox-").click()
    expect(page.get_by_test_id("action-manage-selected")).to_contain_text("1")
    chosen = app_dataset.values("id")[1]

    page.get_by_test_id("action-browse-operations").click()
    expect(page.get_by_test_id("operators-browser")).to_be_visible()
    page.get_by_test_id("operators-browser-search").fill("Segment with text")
    page.get_by_test_id("operators-browser").get_by_text(
        "Segment with text (CLIP as RNN)", exact=True
    ).click()
    prompt = page.get_by_test_id("operators-prompt-modal")
    expect(prompt).to_be_visible()
    # the server's first form imports the library: slow on a loaded machine
    expect(prompt.get_by_text("Current selection").first).to_be_visible(timeout=60_000)

    # the dataset's own classes, pre-filled from the ground truth's mask targets
    ad.pick_option(page, prompt, "Classes from the dataset", "Mask targets of 'ground_truth'")
    expect(prompt.get_by_text("white diamond", exact=True)).to_be_visible(timeout=15_000)
    mini = ad.mini_shipped()
    if mini:  # the bundled model: no settings to type
        ad.pick_option(
            page, prompt, "Preset", "Bundled miniature CLIP (offline, for demos and tests)"
        )
    page.wait_for_timeout(500)
    execute = prompt.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled(timeout=15_000)
    page.screenshot(path=str(shots_dir / "segment_form.png"))
    if not mini:
        prompt.get_by_text("Advanced settings", exact=True).click()
        page.wait_for_timeout(1000)
        ad.field_after(prompt, "Proposal CLIP").fill(tiny_config.proposal_model)
        ad.field_after(prompt, "Classifier CLIP").fill(tiny_config.classifier_model)
    ad.field_after(prompt, "Output field").fill("car_app")
    expect(execute).to_be_enabled(timeout=15_000)
    execute.click()

    deadline = time.time() + 180
    while time.time() < deadline:
        app_dataset.reload()
        if "car_app" in app_dataset.get_field_schema() and app_dataset.count("car_app"):
            break
        page.wait_for_timeout(1000)
    assert app_dataset.exists("car_app").values("id") == [chosen]
    assert app_dataset.mask_targets["car_app"] == app_dataset.mask_targets["ground_truth"]
    # a generator operator ends on its progress view: "Segmented 1/1 samples", then Done
    expect(page.get_by_text("Segmented 1/1 samples")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Done", exact=True).click()
    expect(prompt).to_have_count(0, timeout=30_000)

    # the new field shows in the sidebar; open the sample and show its mask
    expect(page.get_by_test_id("checkbox-car_app")).to_be_visible(timeout=30_000)
    grid.get_by_test_id("looker").nth(1).click()
    modal = page.get_by_test_id("modal")
    expect(modal).to_be_visible()
    cb = modal.get_by_test_id("checkbox-car_app")
    if not cb.locator("input").is_checked():
        cb.click()
    detections = modal.get_by_test_id("checkbox-car_app_det")
    if detections.locator("input").is_checked():  # the mask alone reads better
        detections.click()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(shots_dir / "segment_result.png"))
    page.keyboard.press("Escape")
    assert not ad.unexpected_errors(errors), errors
