"""Two segment runs scheduled back to back in a real App (Chromium), one real worker
(`fiftyone delegated launch`): the second form offers the next free field, both runs land in
their own fields, the App says so when the dataset is opened again and shows the fields, and
the checker finds every sample consistent."""

from __future__ import annotations

import re
from pathlib import Path

import annotate_driver as ad
import fiftyone as fo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState
from test_fo_schedule import _run_worker_until_done

from cliprnn.fiftyone.check import check_field

pytestmark = [pytest.mark.e2e, pytest.mark.fiftyone, pytest.mark.slow]

URI = "@cliprnn/clip-as-rnn/segment"
SEEDS = (5100, 5101)
LABEL = "Segment with text (CLIP as RNN)"


@pytest.fixture(scope="module")
def sched_dataset(tmp_root: Path, scenes_dataset):
    ds = scenes_dataset(tmp_root / "schedule-scenes", SEEDS, (96, 96), "cliprnn-schedule-e2e")
    yield ds
    fo.delete_dataset(ds.name)


def _schedule(page, prompt) -> None:
    """Choose Schedule in the Execute button's menu, then click it."""
    from playwright.sync_api import expect

    prompt.locator("[aria-label='split button'] [aria-haspopup='menu']").click()
    page.locator("#split-button-menu").get_by_text("Schedule", exact=True).click()
    button = prompt.get_by_role("button", name="Schedule", exact=True)
    expect(button).to_be_enabled(timeout=30_000)
    button.click()


def test_two_runs_scheduled_back_to_back_in_the_app(sched_dataset, plugins_dir, tmp_root):
    from playwright.sync_api import expect

    if not ad.mini_shipped():
        pytest.skip("the bundled miniature CLIP is not shipped")
    ds = sched_dataset
    with ad.plugin_app(ds, plugins_dir, tmp_root / "schedule-app.log") as (base, page, errors):
        ad.goto_dataset(page, base, ds.name, len(ds))
        for field in ("cliprnn", "cliprnn_2"):
            prompt = ad.open_operator(page, LABEL)
            ad.field_after(prompt, "Text queries", "textarea").fill("red circle\nblue square")
            ad.pick_option(page, prompt, "Preset", ad_mini_label())
            # the second form offers the next name: the first run holds 'cliprnn' while queued
            expect(ad.field_after(prompt, "Output field")).to_have_value(field, timeout=15_000)
            expect(prompt.get_by_text(f"reserves '{field}' for it at once")).to_be_visible()
            if field == "cliprnn_2":
                # (a worker of another test sharing the database may have started it)
                expect(
                    prompt.get_by_text(re.compile(r"'cliprnn' (queued|running)"))
                ).to_be_visible()
            _schedule(page, prompt)
            expect(page.get_by_text("Operation successfully scheduled")).to_be_visible(
                timeout=30_000
            )
            expect(prompt).to_have_count(0, timeout=30_000)
        svc = DelegatedOperationService()
        ops = svc.list_operations(operator=URI, dataset_name=ds.name)
        assert sorted(op.label for op in ops) == [
            "Segment into 'cliprnn'",
            "Segment into 'cliprnn_2'",
        ]

        out = _run_worker_until_done(plugins_dir, [op.id for op in ops])
        for op in ops:
            doc = svc.get(op.id)
            assert doc.run_state == ExecutionRunState.COMPLETED, (doc.result, out[-3000:])
        ds.reload()
        for field in ("cliprnn", "cliprnn_2"):
            assert ds.count(field) == len(ds) and ds.count(f"{field}_det") == len(ds)
            report = check_field(ds, field)
            assert report.ok and report.checked == len(ds), report.summary()

        # the user opens the dataset again: the App says how the runs ended, shows the fields
        ad.goto_dataset(page, base, ds.name, len(ds))
        expect(
            page.get_by_text("Scheduled run into 'cliprnn_2' finished", exact=False)
        ).to_be_visible(timeout=30_000)
        for field in ("cliprnn", "cliprnn_2"):
            expect(page.get_by_test_id(f"checkbox-{field}").locator("input")).to_be_checked(
                timeout=30_000
            )
        assert not ad.unexpected_errors(errors), errors


def ad_mini_label() -> str:
    """The preset choice of the bundled model, as the form names it."""
    from operators.segment_params import PRESET_LABELS

    return PRESET_LABELS["mini"]
