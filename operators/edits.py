"""Operators that edit stored results: ``apply_mask_edits`` and ``edit_mask_classes``."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .common import (
    choices_view,
    cliprnn_missing,
    delegation_inputs,
    detections_fields,
    execute_from_sdk,
    fail,
    requested_delegation,
    segmentation_fields,
)

ACTIONS = {
    "rename": "Rename a class",
    "merge": "Merge classes into one",
    "delete": "Delete classes (their pixels become background)",
}


class ApplyMaskEdits(foo.Operator):
    """Rebuild a semantic mask from the instance masks a user edited in the App."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="apply_mask_edits",
            label="Apply mask edits (CLIP as RNN)",
            description="Rebuild a Segmentation field from its edited Detections",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="auto_fix_high",
        )

    def resolve_delegation(self, ctx):
        return requested_delegation(ctx)

    def resolve_input(self, ctx):
        inputs = types.Object()
        missing = cliprnn_missing()
        if missing:
            fail(inputs, "missing", missing)
            return types.Property(inputs)
        inputs.view_target(ctx, action_description="Apply edits to", allow_selected_samples=True)
        dets = detections_fields(ctx.dataset)
        if not dets:
            fail(inputs, "no_detections", "This dataset has no Detections field to take edits from")
            return types.Property(inputs)
        default = next((d for d in dets if d.endswith("_det")), dets[0])
        inputs.enum(
            "detections_field",
            dets,
            default=default,
            label="Edited instances",
            view=types.DropdownView(),
        )
        chosen = ctx.params.get("detections_field") or default
        guess = chosen[: -len("_det")] if chosen.endswith("_det") else f"{chosen}_seg"
        inputs.str(
            "label_field",
            default=guess,
            required=True,
            label="Segmentation field",
            description="Rewritten from the instances (created if missing)",
        )
        delegation_inputs(ctx, inputs, ctx.target_view().count())
        return types.Property(inputs, view=types.View(label="Apply mask edits"))

    def execute(self, ctx):
        from cliprnn.fiftyone.edits import apply_mask_edits

        field = ctx.params["label_field"]
        n = apply_mask_edits(ctx.target_view(), field, ctx.params.get("detections_field"))
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {"updated": n, "label_field": field}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("updated", label="Samples updated")
        outputs.str("label_field", label="Segmentation field")
        return types.Property(outputs, view=types.View(label="Mask edits applied"))

    def __call__(
        self,
        sample_collection: Any,
        label_field: str = "car",
        detections_field: str | None = None,
        delegate: bool = False,
        delegation_target: str | None = None,
    ) -> Any:
        """Rebuild ``label_field`` from ``detections_field`` (default ``<label_field>_det``).

        Example usage::

            import fiftyone.operators as foo

            apply_edits = foo.get_operator("@cliprnn/clip-as-rnn/apply_mask_edits")
            apply_edits(dataset, label_field="car")
        """
        params = dict(
            label_field=label_field,
            detections_field=detections_field or f"{label_field}_det",
            delegate=delegate,
        )
        return execute_from_sdk(
            self, sample_collection, params, delegate=delegate, delegation_target=delegation_target
        )


class EditMaskClasses(foo.Operator):
    """Rename, merge or delete classes of a segmentation field, masks and targets together."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="edit_mask_classes",
            label="Edit mask classes (CLIP as RNN)",
            description="Rename, merge or delete classes of a Segmentation field",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="edit",
        )

    def resolve_delegation(self, ctx):
        return requested_delegation(ctx)

    def resolve_input(self, ctx):
        inputs = types.Object()
        missing = cliprnn_missing()
        if missing:
            fail(inputs, "missing", missing)
            return types.Property(inputs)
        fields = [f for f in segmentation_fields(ctx.dataset) if ctx.dataset.mask_targets.get(f)]
        if not fields:
            fail(inputs, "no_fields", "No Segmentation field with mask_targets in this dataset")
            return types.Property(inputs)
        inputs.enum(
            "label_field",
            fields,
            default=fields[0],
            required=True,
            label="Segmentation field",
            view=types.DropdownView(),
        )
        field = ctx.params.get("label_field") or fields[0]
        names = list(dict.fromkeys(ctx.dataset.mask_targets.get(field, {}).values()))
        inputs.enum(
            "action",
            list(ACTIONS),
            default="rename",
            label="Action",
            view=choices_view(types.RadioGroup, ACTIONS, ACTIONS),
        )
        action = ctx.params.get("action") or "rename"
        inputs.list(
            "classes",
            types.String(),
            required=True,
            label="Classes",
            view=choices_view(types.DropdownView, names, multiple=True),
        )
        if action != "delete":
            inputs.str("new_name", required=True, label="New name")
        if action == "rename" and len(ctx.params.get("classes") or []) > 1:
            fail(inputs, "rename_error", "Rename takes one class; use Merge for several")
        inputs.view(
            "scope",
            types.Notice(
                label="Applies to every sample of the dataset: mask targets are dataset-wide"
            ),
        )
        delegation_inputs(ctx, inputs, ctx.dataset.count())
        return types.Property(inputs, view=types.View(label="Edit mask classes"))

    def execute(self, ctx):
        from cliprnn.fiftyone.edits import edit_mask_classes

        p = ctx.params
        classes, action, new = list(p.get("classes") or []), p.get("action"), p.get("new_name")
        if action == "rename":
            kwargs: dict[str, Any] = dict(rename={c: new for c in classes})
        elif action == "merge":
            kwargs = dict(merge={new: classes})
        else:
            kwargs = dict(delete=classes)
        targets = edit_mask_classes(ctx.dataset, p["label_field"], **kwargs)
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {"mask_targets": {str(k): v for k, v in targets.items()}}

    def __call__(
        self,
        sample_collection: Any,
        label_field: str,
        action: str,
        classes: list[str],
        new_name: str | None = None,
        delegate: bool = False,
        delegation_target: str | None = None,
    ) -> Any:
        """Rename (one class), merge (several into ``new_name``) or delete classes.

        Example usage::

            import fiftyone.operators as foo

            edit = foo.get_operator("@cliprnn/clip-as-rnn/edit_mask_classes")
            edit(dataset, "car", "merge", ["cat", "dog"], new_name="pet")
            edit(dataset, "car", "delete", ["sky"])
        """
        params = dict(
            label_field=label_field, action=action, classes=list(classes), delegate=delegate
        )
        if new_name is not None:
            params["new_name"] = new_name
        return execute_from_sdk(
            self, sample_collection, params, delegate=delegate, delegation_target=delegation_target
        )
