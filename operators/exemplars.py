"""Operator ``exemplar_sets``: store the selected samples (or patches) as a query made of
pictures, and rename or delete the stored sets."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .common import cliprnn_missing, fail, stored_item_inputs, touch_notice

#: What every action of the operator leaves alone.
NO_LABELS = "no sample, label or field of the dataset is changed"

ACTIONS = {"save": "Save selection", "rename": "Rename", "delete": "Delete"}


def _things(n: int, source: str, field: str | None) -> str:
    """``3 samples`` or ``1 patch of 'ground_truth'``."""
    if source == "patches":
        return f"{n} patch{'es' * (n != 1)} of '{field}'"
    return f"{n} sample{'s' * (n != 1)}"


def set_label(name: str, info: dict) -> str:
    """How a form names a stored set: ``mascot (3 patches of 'ground_truth')``."""
    return f"{name} ({_things(info['count'], info['source'], info['field'])})"


class ExemplarSets(foo.Operator):
    """Save the App's selection as a named exemplar set; rename or delete stored sets.

    From Python, use :mod:`cliprnn.fiftyone.exemplar_sets` (``save_exemplar_set`` and
    friends) directly.
    """

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="exemplar_sets",
            label="Use selection as exemplars",
            description="Store the selected samples or patches as a class given by example "
            "images (for 'Segment with text'); rename or delete stored sets",
            dynamic=True,
            allow_immediate_execution=True,
            icon="collections",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        view = types.View(label="Use selection as exemplars")
        missing = cliprnn_missing()
        if missing:
            fail(inputs, "missing", missing)
            return types.Property(inputs, view=view)
        from cliprnn.fiftyone.exemplar_sets import list_exemplar_sets

        sets = list_exemplar_sets(ctx.dataset)
        action, chosen = stored_item_inputs(
            ctx, inputs, heading="Stored exemplar sets", list_name="stored_sets",
            stored={n: set_label(n, i) for n, i in sets.items()}, actions=ACTIONS,
            item_param="set_name", item_label="Exemplar set",
        )  # fmt: skip
        if chosen is None:
            _save_inputs(ctx, inputs, sets)
        elif action == "rename":
            inputs.str("new_name", required=True, label="New name")
            _check_free(inputs, ctx.params.get("new_name"), sets, ctx.params.get("set_name"))
            touch_notice(
                inputs,
                "writes",
                f"Renames the stored exemplar set '{chosen}' (the dataset's exemplar-set "
                f"store); {NO_LABELS}",
            )
        else:
            inputs.view(
                "delete_warning",
                types.Warning(label=f"Deletes the set '{chosen}' (its samples stay)"),
            )
            touch_notice(
                inputs,
                "writes",
                f"Deletes the stored exemplar set '{chosen}' from the dataset's exemplar-set "
                f"store; {NO_LABELS}",
            )
        return types.Property(inputs, view=view)

    def execute(self, ctx):
        from cliprnn.fiftyone import exemplar_sets as ex

        p = ctx.params
        action = p.get("action") or "save"
        if action == "save":
            name = p["name"].strip()
            info = ex.save_exemplar_set(
                ctx.dataset, name, ctx.view.select(ctx.selected), bool(p.get("overwrite"))
            )
            message = f"Stored the exemplar set {set_label(name, info)}"
        elif action == "rename":
            new = p["new_name"].strip()
            ex.rename_exemplar_set(ctx.dataset, p["set_name"], new)
            message = f"Renamed the exemplar set '{p['set_name']}' to '{new}'"
        else:
            ex.delete_exemplar_set(ctx.dataset, p["set_name"])
            message = f"Deleted the exemplar set '{p['set_name']}'"
        ctx.ops.notify(message, variant="success")
        return {"message": message, "sets": list(ex.list_exemplar_sets(ctx.dataset))}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        outputs.list("sets", types.String(), label="Stored exemplar sets")
        return types.Property(outputs, view=types.View(label="Exemplar sets"))


def _save_inputs(ctx, inputs: types.Object, sets: dict) -> None:
    """The "Save selection" branch: what is selected, the set's name."""
    from cliprnn.errors import QueryError
    from cliprnn.fiftyone.exemplar_sets import exemplar_source, matching_name

    try:
        kind, field = exemplar_source(ctx.view)
    except QueryError as e:
        fail(inputs, "source_error", str(e))
        return
    n = len(ctx.selected or [])
    if not n:
        what = f"patches of '{field}'" if kind == "patches" else "samples"
        also = "" if kind == "patches" else " (or patches in a patches view)"
        fail(
            inputs,
            "no_selection",
            f"Select {what} in the grid first{also}: they become the exemplars",
        )
        return
    inputs.view(
        "selection",
        types.Notice(label=f"Exemplars: the {_things(n, kind, field)} selected"),
    )
    touch_notice(
        inputs,
        "writes",
        f"Stores them as a named exemplar set in the dataset's exemplar-set store; {NO_LABELS}",
    )
    inputs.str(
        "name",
        required=True,
        label="Name",
        description="The class name the masks will show, e.g. 'mascot'",
    )
    name = ctx.params.get("name")
    if name is not None and not name.strip():
        fail(inputs, "name_error", "The name cannot be blank")
    taken = matching_name(name, sets)
    if taken:
        inputs.bool("overwrite", default=False, label=f"Replace the stored set '{taken}'")
        if not ctx.params.get("overwrite"):
            fail(inputs, "name_error", f"An exemplar set '{taken}' exists: tick Replace, or rename")


def _check_free(inputs: types.Object, name: str | None, sets: dict, old: str | None) -> None:
    from cliprnn.fiftyone.exemplar_sets import matching_name

    taken = matching_name(name, sets, ignore=old)
    if taken:
        fail(inputs, "name_error", f"An exemplar set '{taken}' exists; choose another name")
