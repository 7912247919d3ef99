"""Playwright helpers (sync API) that drive the FiftyOne 1.22 App's **Annotate** tab as a person
would: open a sample, switch to Annotate, select a detection, paint and erase its instance mask,
wait for the App to save, close the modal.

Every helper takes a ``page`` whose context was made with
``p.selectors.set_test_id_attribute("data-cy")`` (FiftyOne's test ids are ``data-cy``), already
at the dataset's grid (``/datasets/<name>``). :func:`chromium_page` and :func:`serve_app` make
both. Findings behind these helpers: ``docs/app_annotate_notes.md``. One module of ~650 lines
on purpose: the helpers share the App's selectors and timing rules, found together.

Never ``time.sleep`` while a sync Playwright page is open: use ``page.wait_for_timeout``.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]  # fmt: skip
#: The App's brush size (toolbar "Size") is in screen pixels of the canvas, 1..32; default 16.
BRUSH_MIN, BRUSH_MAX = 1, 32
#: The App waits ~2.8 s after the last stroke before it PATCHes the sample.
SAVE_TIMEOUT_MS = 60_000
#: Waits on the UI: generous, as a software-rendered canvas on a loaded 2-core box is slow.
UI_TIMEOUT_MS = 20_000

Point = tuple[float, float]


class AnnotateUnavailable(RuntimeError):
    """The Annotate tab shows no editable labels (no active label schema, or field not shown)."""


def _expect():
    from playwright.sync_api import expect

    return expect


# ------------------------------------------------------------------------------ set-up helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(log_path: Path, env: dict | None = None, timeout: float = 90) -> Iterator[str]:
    """Run ``python -m fiftyone.server.main`` on a free port; yield its base URL; stop it.

    Pre-warm the database in the calling process first (e.g. ``dataset.count()``): a page that
    reaches a freshly started server while it starts its DB can hang for good.
    """
    port = free_port()
    env = {**os.environ, "FIFTYONE_EXECUTION_STORE_NOTIFICATION_SERVICE_DISABLED": "true",
           **(env or {})}  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        cmd = [sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    urllib.request.urlopen(base + "/", timeout=5).read()
                    break
                except OSError:
                    if time.time() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"App server did not start; see {log_path}") from None
                    time.sleep(0.5)  # no Playwright page exists yet
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)  # wait on the PID, so a next server finds mongod free
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def chromium_page(viewport: tuple[int, int] = (1280, 800)):
    """Yield ``(page, errors)``: a page of headless Debian Chromium, test ids = ``data-cy``,
    ``window.IS_PLAYWRIGHT`` set (hides the Enterprise popover); ``errors`` collects page
    errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        p.selectors.set_test_id_attribute("data-cy")
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            context.add_init_script("window.IS_PLAYWRIGHT = true;")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()


def goto_dataset(page, base: str, name: str, n_thumbnails: int, timeout: int = 60_000) -> None:
    """Open ``/datasets/<name>`` and wait until ``n_thumbnails`` grid thumbnails are drawn."""
    page.goto(f"{base}/datasets/{name}", wait_until="domcontentloaded")
    grid = page.get_by_test_id("fo-grid")
    _expect()(grid.locator("[data-cy=looker] canvas[canvas-loaded=true]")).to_have_count(
        n_thumbnails, timeout=timeout
    )


# ------------------------------------------------------------------------------------- modal
def modal(page):
    return page.get_by_test_id("modal")


def modal_sidebar(page):
    """The modal's sidebar (the grid page has a second ``sidebar``: always scope to this)."""
    return modal(page).get_by_test_id("sidebar")


def close_modal(page, tries: int = 8) -> None:
    """Close the sample modal with Escape, as a person would.

    Escape reaches the modal only while the pointer is over it and no element has keyboard
    focus: a bare ``keyboard.press`` right after load was ignored, and so was every Escape
    while a clicked toolbar button kept focus. So blur, hover the media, then press. In
    Annotate, each Escape first leaves the tool, then the label / segmentation mode; on a
    freshly loaded page, Escape in Annotate then never closed the modal, while in Explore it
    did. Hence: Escape up to ``tries // 2`` times, then switch to Explore and go on.
    """
    for i in range(tries):
        if not modal(page).count():
            return
        explore = modal(page).get_by_test_id("explore")
        if i >= tries // 2 and explore.count() and explore.is_visible():
            explore.click()
            page.wait_for_timeout(300)
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        box = _media_box(page)
        if box is not None:  # a fresh position each try: a move to the same spot fires nothing
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx + 8 * (i % 3) - 8, cy + 8 * (i % 2), steps=2)
        page.keyboard.press("Escape")
        page.wait_for_timeout(400)
    _expect()(modal(page)).to_have_count(0, timeout=UI_TIMEOUT_MS)


def open_sample(page, index: int, timeout: int = UI_TIMEOUT_MS) -> None:
    """Open the ``index``-th grid sample in the modal (closing a modal the server restored)."""
    page.wait_for_timeout(500)  # the server may push the previous session's open modal
    close_modal(page)
    page.get_by_test_id("fo-grid").get_by_test_id("looker").nth(index).click()
    _expect()(modal(page)).to_be_visible(timeout=timeout)
    _expect()(
        page.get_by_test_id("explore").or_(page.get_by_test_id("annotate")).first
    ).to_be_visible(timeout=timeout)


def _media_box(page):
    for tid in ("lighter-sample-renderer-canvas", "sample-canvas", "modal-looker-container"):
        loc = modal(page).get_by_test_id(tid)
        if loc.count() and loc.first.is_visible():
            box = loc.first.bounding_box()
            if box and box["width"] > 0 and box["height"] > 0:
                return box
    return None


def wait_for_media_box(page, timeout: int = UI_TIMEOUT_MS) -> dict:
    """The modal's media box, waiting for it: after a tab switch or a field toggle the App
    redraws the modal, and on a loaded machine its canvas can be missing for a while."""
    deadline = time.time() + timeout / 1000
    while (box := _media_box(page)) is None:
        if time.time() > deadline:
            raise RuntimeError(f"the modal shows no media after {timeout / 1000:.0f} s")
        page.wait_for_timeout(250)
    return box


def ensure_field_shown(page, field: str) -> None:
    """Tick ``field`` in the modal's Explore tab (Annotate lists only the fields shown there)."""
    open_explore_tab(page)
    cb = modal_sidebar(page).get_by_test_id(f"checkbox-{field}")
    _expect()(cb).to_be_visible(timeout=UI_TIMEOUT_MS)
    if not cb.locator("input").is_checked():
        cb.click()
    _expect()(cb.locator("input")).to_be_checked(timeout=UI_TIMEOUT_MS)


def open_explore_tab(page) -> None:
    modal(page).get_by_test_id("explore").click()
    _expect()(modal_sidebar(page).get_by_test_id("sidebar-column")).to_be_visible(
        timeout=UI_TIMEOUT_MS
    )


def open_annotate_tab(page, require_labels: bool = True, timeout: int = UI_TIMEOUT_MS) -> str:
    """Switch the modal to Annotate; return what it shows: ``"labels"``, ``"add-schema"`` (no
    active label schema: the "Annotate faster than ever / Add schema" page) or ``"no-labels"``
    ("No labels to annotate. Check that your fields are enabled on Explore.").

    With ``require_labels``, anything but ``"labels"`` raises :class:`AnnotateUnavailable`.
    """
    modal(page).get_by_test_id("annotate").click()
    sb = modal_sidebar(page)
    labels = sb.locator("[data-cy^=annotate-label-]")
    add_schema = sb.get_by_test_id("open-schema-manager").filter(has_text="Add schema")
    empty = sb.get_by_text("No labels to annotate")
    _expect()(labels.first.or_(add_schema).or_(empty).first).to_be_visible(timeout=timeout)
    state = "labels" if labels.count() else "add-schema" if add_schema.count() else "no-labels"
    if require_labels and state != "labels":
        # a loaded machine can show the page drawn before the schemas arrived: wait for them
        try:
            _expect()(labels.first).to_be_visible(timeout=timeout)
        except AssertionError:
            raise AnnotateUnavailable(f"Annotate tab shows {state!r}") from None
        state = "labels"
    return state


def select_detection(page, label: str, nth: int = 0, timeout: int = UI_TIMEOUT_MS) -> str:
    """Click the label named ``label`` in the Annotate list; return its label id.

    A Detection with a mask opens "Edit Detection" and segmentation mode: the tool palette
    (``.segmentation-toolbar``: select / brush / pen / ai / merge / close) appears on the
    canvas, with the Select tool active.
    """
    item = (
        modal_sidebar(page)
        .locator("[data-cy^=annotate-label-]")
        .filter(has=page.get_by_text(label, exact=True))
    )
    item = item.nth(nth)
    label_id = item.get_attribute("data-cy").removeprefix("annotate-label-")
    item.click()
    _expect()(modal_sidebar(page).get_by_test_id("annotate-edit-back")).to_be_visible(
        timeout=timeout
    )
    _expect()(toolbar(page).get_by_test_id("brush")).to_be_visible(timeout=timeout)
    return label_id


def deselect(page) -> None:
    """Leave "Edit Detection" with the sidebar's back arrow."""
    modal_sidebar(page).get_by_test_id("annotate-edit-back").click()
    _expect()(modal_sidebar(page).locator("[data-cy^=annotate-label-]").first).to_be_visible(
        timeout=UI_TIMEOUT_MS
    )


# ------------------------------------------------------------------------------- coordinates
def canvas(page):
    """The Annotate tab's canvas (``lighter-sample-renderer-canvas``; Explore uses another)."""
    return modal(page).get_by_test_id("lighter-sample-renderer-canvas")


def image_rect(page, image_size: tuple[int, int]) -> dict:
    """Where the image lies on the page: the modal's media box (Annotate's canvas, or
    Explore's) letterboxed to the image's aspect.

    Returns ``{"x", "y", "scale"}``: page = (x + px * scale, y + py * scale). Valid at the
    App's initial zoom (do not zoom or pan first).
    """
    w, h = image_size
    box = wait_for_media_box(page)
    scale = min(box["width"] / w, box["height"] / h)
    return {
        "x": box["x"] + (box["width"] - w * scale) / 2,
        "y": box["y"] + (box["height"] - h * scale) / 2,
        "scale": scale,
    }


def image_to_page(page, point: Point, image_size: tuple[int, int]) -> Point:
    """Map an image pixel coordinate (x right, y down, in pixels) to page coordinates."""
    r = image_rect(page, image_size)
    return r["x"] + point[0] * r["scale"], r["y"] + point[1] * r["scale"]


# ------------------------------------------------------------------------------- mask tools
def toolbar(page):
    """The floating segmentation tool palette (its buttons' data-cy are bare action ids)."""
    return page.locator(".segmentation-toolbar")


def brush_size(page) -> int:
    """The brush size shown in the toolbar between its arrows (shown with the Brush tool only)."""
    inc = toolbar(page).get_by_role("button", name="Increase brush size")
    return int(inc.locator("xpath=following-sibling::button[1]").inner_text().strip())


def set_brush_size(page, size: int) -> None:
    """Set the brush size (screen pixels, 1..32) with the toolbar's arrows, one step a click."""
    size = max(BRUSH_MIN, min(BRUSH_MAX, int(size)))
    tb = toolbar(page)
    for _ in range(2 * BRUSH_MAX):
        now = brush_size(page)
        if now == size:
            return
        name = "Increase brush size" if now < size else "Decrease brush size"
        tb.get_by_role("button", name=name).click()
    raise RuntimeError(f"could not set the brush size to {size} (shows {brush_size(page)})")


def _tool(page, mode: str, size: int | None) -> None:
    tb = toolbar(page)
    tb.get_by_test_id("brush").click()
    _expect()(tb.get_by_test_id(mode)).to_be_visible(timeout=UI_TIMEOUT_MS)
    tb.get_by_test_id(mode).click()
    if size is not None:
        set_brush_size(page, size)


def stroke(page, points: Sequence[Point], image_size: tuple[int, int], step_px: float = 24) -> None:
    """Press, drag through ``points`` (image pixels) in page moves of <= ``step_px``, release.

    The App joins successive pointer events with a continuous line (one 220 px move painted
    a gapless stroke), and with a software-rendered canvas each move costs ~0.3 s on a busy
    2-core machine, so keep the moves few.
    """
    r = image_rect(page, image_size)
    pts = [(r["x"] + x * r["scale"], r["y"] + y * r["scale"]) for x, y in points]
    page.mouse.move(*pts[0])
    page.mouse.down()
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        n = max(1, math.ceil(math.hypot(x1 - x0, y1 - y0) / step_px))
        page.mouse.move(x1, y1, steps=n)
    if len(pts) == 1:
        page.mouse.move(pts[0][0] + 0.5, pts[0][1], steps=1)
    page.mouse.up()


def _saving(page, action, wait: bool, timeout: int) -> None:
    if not wait:
        action()
        return
    with page.expect_response(
        lambda r: r.request.method == "PATCH" and "/sample/" in r.url, timeout=timeout
    ) as info:
        action()
    resp = info.value
    if not resp.ok:
        raise RuntimeError(f"the App's save failed: {resp.status} {resp.url}")
    wait_saved(page, timeout)


def brush(page, points: Sequence[Point], size: int | None, image_size: tuple[int, int],
          wait: bool = True, timeout: int = SAVE_TIMEOUT_MS) -> None:  # fmt: skip
    """Paint (Brush tool, mode Add) along ``points`` (image pixels) on the selected label.

    ``size`` is the App's brush size (screen pixels; None keeps the current one). With
    ``wait``, return once the App's PATCH of the sample answered 200 and it reports settled.
    """
    _tool(page, "add", size)
    _saving(page, lambda: stroke(page, points, image_size), wait, timeout)


def erase(page, points: Sequence[Point], size: int | None, image_size: tuple[int, int],
          wait: bool = True, timeout: int = SAVE_TIMEOUT_MS) -> None:  # fmt: skip
    """Erase (Brush tool, mode Remove, the "−" button) along ``points``; see :func:`brush`."""
    _tool(page, "remove", size)
    _saving(page, lambda: stroke(page, points, image_size), wait, timeout)


def wait_saved(page, timeout: int = SAVE_TIMEOUT_MS) -> None:
    """Wait until the App reports no unsaved edits: the hidden ``annotation-save-state`` div's
    ``data-settled`` is ``"true"`` (it turns ``"false"`` on an edit, ``"true"`` ~3 s after the
    save's PATCH answered)."""
    state = modal(page).get_by_test_id("annotation-save-state")
    _expect()(state).to_have_attribute("data-settled", "true", timeout=timeout)


# ------------------------------------------------------------------------ database-side check
def detection_image_mask(detection, image_size: tuple[int, int]):
    """A Detection's instance mask (``mask`` or ``mask_path``, any size) on the image's own
    ``(H, W)`` grid, sampled at pixel centres (the App saves edited masks at its display
    resolution with a box off the pixel grid)."""
    from cliprnn.fiftyone.instances import instance_pixels

    w, h = image_size
    return instance_pixels(detection, (h, w))


# ------------------------------------------------------------------------------ operator forms
def pick_option(page, prompt, label: str, option: str) -> None:
    """In an operator form, open the dropdown that follows the text ``label``, choose
    ``option``."""
    prompt.get_by_text(label, exact=True).first.locator(
        "xpath=following::*[@role='combobox' or @aria-haspopup='listbox'][1]"
    ).click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_timeout(500)


def field_after(prompt, label: str, tag: str = "input", exact: bool = False):
    """The first ``tag`` element after the text ``label`` (exactly that text with ``exact``;
    form fields carry no test ids)."""
    return prompt.get_by_text(label, exact=exact).first.locator(f"xpath=following::{tag}[1]")


def mini_shipped() -> bool:
    """Whether the bundled miniature CLIP (the offline preset the forms offer) is installed."""
    from cliprnn.assets import mini_model_paths

    return all((p / "config.json").is_file() for p in mini_model_paths())


# ------------------------------------------------------------------- grid, operators, checks
@contextmanager
def plugin_app(dataset, plugins_dir: Path, log_path: Path):
    """Yield ``(base, page, errors)``: an App server running this checkout's plugin (``dataset``
    pre-warmed) and a Chromium page (see :func:`chromium_page`). Skips the test without
    Chromium or Playwright."""
    import pytest

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")
    dataset.count()  # the database is up before the server's first request
    repo = str(Path(__file__).resolve().parents[2])
    env = {
        "FIFTYONE_PLUGINS_DIR": str(plugins_dir),
        "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
    }
    with serve_app(log_path, env=env) as base, chromium_page() as (page, errors):
        yield base, page, errors


def screenshots_dir(default: Path) -> Path:
    """Where a test saves screenshots: ``$CLIPRNN_SCREENSHOTS`` (``docs/images`` retakes the
    README's), else ``default``; created."""
    path = Path(os.environ.get("CLIPRNN_SCREENSHOTS") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(page, folder: Path, name: str) -> Path:
    """Save a screenshot of the page as ``folder/name`` (after letting canvases draw)."""
    page.wait_for_timeout(1200)  # canvases draw without a DOM signal
    path = folder / name
    page.screenshot(path=str(path))
    return path


def select_in_grid(page, indices: Sequence[int]) -> None:
    """Tick the grid's samples (or patches) at ``indices``, as a person does: hover, checkbox."""
    grid = page.get_by_test_id("fo-grid")
    for i in indices:
        looker = grid.get_by_test_id("looker").nth(i)
        looker.hover()
        looker.get_by_test_id("looker-checkbox-").click()
    _expect()(page.get_by_test_id("action-manage-selected")).to_contain_text(str(len(indices)))


def open_operator(page, label: str):
    """Run the operator labelled ``label`` from the operator browser (of the modal when a
    sample is open, else the grid's); return its prompt."""
    scope = modal(page) if modal(page).count() else page.get_by_test_id("fo-grid-actions")
    scope.get_by_test_id("action-browse-operations").click()
    _expect()(page.get_by_test_id("operators-browser")).to_be_visible()
    page.get_by_test_id("operators-browser-search").fill(label)
    page.get_by_test_id("operators-browser").get_by_text(label, exact=True).click()
    prompt = page.get_by_test_id("operators-prompt-modal")
    _expect()(prompt).to_be_visible()
    return prompt


def pick_options(page, prompt, label: str, options: Sequence[str]) -> None:
    """In an operator form, tick ``options`` of the multi-select that follows the text
    ``label``, then close its menu with Tab (Escape would close the prompt too)."""
    prompt.get_by_text(label, exact=True).first.locator(
        "xpath=following::*[@role='combobox' or @aria-haspopup='listbox'][1]"
    ).click()
    for option in options:
        page.get_by_role("option", name=option, exact=True).click()
        page.wait_for_timeout(300)
    page.keyboard.press("Tab")
    _expect()(page.get_by_role("listbox")).to_have_count(0, timeout=UI_TIMEOUT_MS)
    _expect()(prompt).to_be_visible()
    page.wait_for_timeout(500)


def finish_prompt(page, prompt, timeout: int = 30_000) -> None:
    """Close an operator's output view (its Done / Close / OK button)."""
    import re

    prompt.get_by_role("button", name=re.compile(r"^(Done|Close|OK)$")).first.click()
    _expect()(prompt).to_have_count(0, timeout=timeout)


def wait_until(page, check, timeout: float = 240, what: str = "the database") -> None:
    """Poll ``check()`` (e.g. a database query) until it is true, waiting with the page."""
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise AssertionError(f"{what} did not change within {timeout} s")
        page.wait_for_timeout(1000)


def _hover(page, at: Point, offset: int = 0) -> None:
    x, y = at
    page.mouse.move(x - 3, y + offset)
    page.mouse.move(x, y + offset, steps=3)


def hover_until_text(page, where: Callable[[], Point], text: str, timeout: int = 30_000) -> None:
    """Hover page point ``where()`` until the App shows ``text`` (its tooltip over a label).

    The App draws a sample's overlays some time after the modal opens (longer on a loaded
    machine) and shows a tooltip only on a pointer move, so the pointer arrives again, a
    pixel higher or lower each time, until the text shows or ``timeout`` (ms) passes.
    """
    shown = page.get_by_text(text, exact=True).first
    deadline = time.time() + timeout / 1000
    for i in itertools.count():
        _hover(page, where(), offset=(i % 3) - 1)
        try:
            _expect()(shown).to_be_visible(timeout=1500)
            return
        except AssertionError:
            if time.time() > deadline:
                raise AssertionError(
                    f"no tooltip naming {text!r} after {timeout / 1000:.0f} s of hovering"
                ) from None


#: Page errors of the App itself that leave what it draws intact: its mask decoder sometimes
#: reuses a transferred buffer (overlays still draw, as tooltip and pixel checks show).
APP_INTERNAL_ERRORS = ("Cannot perform Construct on a detached ArrayBuffer",)


def unexpected_errors(errors: Sequence[str]) -> list[str]:
    """The page errors a test should fail on: all but :data:`APP_INTERNAL_ERRORS`."""
    return [e for e in errors if not any(known in e for known in APP_INTERNAL_ERRORS)]


# ------------------------------------------------------------------------ video sample modal
def _testid(page, tid: str):
    """An element by ``data-testid`` (the modal's video timeline uses it, not ``data-cy``)."""
    return page.locator(f"[data-testid={tid}]")


def looker_rect(page, size: tuple[int, int]) -> dict:
    """Where a video of ``size`` (W, H) lies on the page: the modal looker's canvas (the
    modal's media box also holds the video controls) letterboxed to the video's aspect.
    Returns ``{"x", "y", "scale"}`` as :func:`image_rect` does."""
    w, h = size
    box = modal(page).get_by_test_id("looker").locator("canvas").first.bounding_box()
    scale = min(box["width"] / w, box["height"] / h)
    return {
        "x": box["x"] + (box["width"] - w * scale) / 2,
        "y": box["y"] + (box["height"] - h * scale) / 2,
        "scale": scale,
    }


def shown_frame(page) -> int:
    """The FiftyOne frame number (from 1) the modal's video player shows.

    The timeline reads ``0:00.40 / 0:01.00`` until clicked, then ``#k / #n`` with k counted
    from 0 (``#0`` is frame 1)."""
    import re

    label = _testid(page, "timeline-playhead-time")
    if not label.inner_text().startswith("#"):
        label.click()
        _expect()(label).to_have_text(re.compile(r"^#\d+"), timeout=UI_TIMEOUT_MS)
    return int(re.match(r"#(\d+)", label.inner_text()).group(1)) + 1


def play_video(page, timeout: float = 30) -> list[int]:
    """Press the player's Play button and wait until the shown frame moves on (and the clip
    ends, or ``timeout``); returns the frame numbers seen."""
    seen = [shown_frame(page)]
    _testid(page, "timeline-controls-play-pause").click()
    deadline = time.time() + timeout
    while time.time() < deadline:
        page.wait_for_timeout(150)
        now = shown_frame(page)
        if now != seen[-1]:
            seen.append(now)
        elif len(seen) > 1:  # moved, then stopped: the clip ended
            break
    if _testid(page, "timeline-controls-play-pause").get_attribute("aria-pressed") == "true":
        _testid(page, "timeline-controls-play-pause").click()  # pause
    return seen


def seek_frame(page, number: int, tries: int = 64) -> None:
    """Step the modal's video player (its step buttons) to FiftyOne frame ``number``."""
    for _ in range(tries):
        now = shown_frame(page)
        if now == number:
            return
        step = "timeline-controls-step-forward" if now < number else "timeline-controls-step-back"
        _testid(page, step).click()
        page.wait_for_timeout(250)
    raise RuntimeError(f"could not seek to frame {number} (shows {shown_frame(page)})")


def overlay_pixels(page, size: tuple[int, int], threshold: int = 100):
    """``(drawn, bare)`` for the frame the modal's player shows: ``drawn`` [H, W] bool, the
    video pixels that the label overlays change, and ``bare`` [H, W, 3] the frame without
    overlays (held Shift hides them), both sampled at pixel centres of a video of ``size``
    (W, H). Toggling a field's checkbox instead would rewind the player to frame 1."""
    import io

    import numpy as np
    from PIL import Image

    def grab(wait: int):
        page.wait_for_timeout(wait)  # canvases draw without a DOM signal
        return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))

    w, h = size
    r = looker_rect(page, size)
    xs = (r["x"] + (np.arange(w) + 0.5) * r["scale"]).astype(int)
    ys = (r["y"] + (np.arange(h) + 0.5) * r["scale"]).astype(int)
    # The player takes keys while the pointer is over it: rest it beside the picture (a
    # tooltip would change pixels), at a new spot each call (a move to the same one fires
    # nothing).
    box = modal(page).get_by_test_id("looker").locator("canvas").first.bounding_box()
    beside = (box["x"] + 4, r["y"] + h * r["scale"] / 2)
    if r["x"] - box["x"] < 8:  # letterboxed above and below instead
        beside = (r["x"] + w * r["scale"] / 2, box["y"] + 4)
    page.mouse.move(beside[0] + 2, beside[1] + 2)
    page.mouse.move(*beside, steps=2)
    shown = grab(1200)
    page.keyboard.down("Shift")
    try:
        bare = grab(800)
    finally:
        page.keyboard.up("Shift")
    diff = np.abs(shown.astype(int) - bare.astype(int)).sum(-1) > threshold
    return diff[np.ix_(ys, xs)], bare[np.ix_(ys, xs)]
