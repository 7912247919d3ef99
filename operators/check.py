"""Operator ``check_field``: report every sample whose cliprnn labels disagree or lost their
meaning (:func:`cliprnn.fiftyone.check.check_field`), and optionally select them."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .common import (
    choices_view,
    cliprnn_missing,
    fail,
    plural,
    segmentation_fields,
    target_text,
    touch_notice,
)

#: How many broken samples the result lists (the summary names the first few too).
LISTED = 20


def checkable_fields(dataset: Any) -> list[str]:
    """The Segmentation fields of ``dataset`` a cliprnn run wrote (all of them if none was)."""
    from cliprnn.fiftyone.runs import run_info

    fields = segmentation_fields(dataset)
    ours = [f for f in fields if run_info(dataset, f) is not None]
    return ours or fields


class CheckField(foo.Operator):
    """Check a cliprnn segmentation field: mask values, instances and scores agree and mean
    what the field's classes say, on the selection, the view or the dataset."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="check_field",
            label="Check a segmentation field",
            description="List the samples whose mask, instances or scores disagree or name "
            "classes the field does not have",
            dynamic=True,
            icon="fact_check",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        view = types.View(label="Check a segmentation field")
        missing = cliprnn_missing()
        if missing:
            fail(inputs, "missing", missing)
            return types.Property(inputs, view=view)
        fields = checkable_fields(ctx.dataset)
        if not fields:
            fail(inputs, "no_fields", "This dataset has no segmentation field to check.")
            return types.Property(inputs, view=view)
        inputs.view_target(ctx, action_description="Check", allow_selected_samples=True)
        inputs.enum(
            "label_field",
            fields,
            default=fields[0],
            required=True,
            label="Field",
            description="Its instances (<field>_det) and scores (<field>_scores) are checked "
            "with it",
            view=choices_view(types.DropdownView, fields),
        )
        inputs.bool(
            "select_broken",
            default=True,
            label="Select the broken samples in the grid",
        )
        field = ctx.params.get("label_field") or fields[0]
        select = ctx.params.get("select_broken", True)
        touch_notice(
            inputs,
            "writes",
            f"Reads '{field}' on {target_text(ctx)}; writes nothing"
            + ("; selects the broken samples in the App" if select else ""),
        )
        return types.Property(inputs, view=view)

    def execute(self, ctx):
        from cliprnn.fiftyone.check import check_field

        field = ctx.params["label_field"]
        report = check_field(ctx.target_view(), field)
        broken = list(report.broken)
        if broken and ctx.params.get("select_broken", True):
            ctx.ops.set_selected_samples(broken)
        if report.ok:
            message = f"'{field}': all {plural(report.checked, 'sample')} consistent"
        else:
            message = f"'{field}': {len(broken)} of {plural(report.checked, 'sample')} broken" + (
                " (selected)" if ctx.params.get("select_broken", True) else ""
            )
        ctx.ops.notify(message, variant="success" if report.ok else "warning")
        listed = [
            f"{sid}: {'; '.join(reasons)}" for sid, reasons in list(report.broken.items())[:LISTED]
        ]
        if len(broken) > LISTED:
            listed.append(f"... and {len(broken) - LISTED} more")
        return {
            "message": message,
            "checked": report.checked,
            "broken": len(broken),
            "samples": listed,
            "broken_ids": broken,
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        outputs.int("checked", label="Samples checked")
        outputs.int("broken", label="Broken samples")
        outputs.list("samples", types.String(), label="Broken samples and why")
        return types.Property(outputs, view=types.View(label="Check a segmentation field"))
