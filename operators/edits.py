"""Operators that edit stored results: ``apply_mask_edits`` and ``edit_mask_classes``."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .common import (
    RELOAD_HINT,
    choices_view,
    cliprnn_missing,
    delegation_inputs,
    detections_fields,
    execute_from_sdk,
    fail,
    refresh_app,
    requested_delegation,
    segmentation_fields,
)

ACTIONS = {
    "rename": "Rename a class",
    "merge": "Merge classes into one",
    "delete": "Delete classes (their pixels become background)",
}


DIRECTIONS = {
    "to_segmentation": "Instances → semantic mask (fold the edits back)",
    "to_detections": "Semantic mask → instances (rebuild the instances)",
}


def _partner(dataset, seg_field: str, dets: list[str]) -> str | None:
    """The Detections field a run wrote beside ``seg_field`` (its run record, else
    ``<seg_field>_det``), if the dataset has it."""
    from cliprnn.fiftyone.runs import run_info

    info = run_info(dataset, seg_field) or {}
    recorded = (info.get("fields") or {}).get("detections")
    for name in (recorded, f"{seg_field}_det"):
        if name and name in dets:
            return name
    return None


class ApplyMaskEdits(foo.Operator):
    """Rebuild a semantic mask from the instance masks a user edited in the App (or the
    instances from the semantic mask)."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="apply_mask_edits",
            label="Apply mask edits (CLIP as RNN)",
            description="Fold edited instance masks (Detections) back into a Segmentation field",
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
        segs = segmentation_fields(ctx.dataset)
        paired = [s for s in segs if _partner(ctx.dataset, s, dets)]
        inputs.enum(
            "direction",
            list(DIRECTIONS),
            default="to_segmentation",
            label="Direction",
            view=choices_view(types.RadioGroup, DIRECTIONS, DIRECTIONS),
        )
        choices = paired + [s for s in segs if s not in paired]
        default_seg = choices[0] if choices else f"{dets[0]}_seg"
        inputs.str(
            "label_field",
            default=default_seg,
            required=True,
            label="Segmentation field",
            description="Rewritten from the instances (created if missing)",
            view=choices_view(types.AutocompleteView, choices, allow_user_input=True),
        )
        seg = ctx.params.get("label_field") or default_seg
        partner = _partner(ctx.dataset, seg, dets) or dets[0]
        inputs.enum(
            "detections_field",
            dets,
            default=partner,
            label="Instance field",
            description=f"Detections of '{seg}'" if partner in dets else None,
            view=types.DropdownView(),
        )
        if ctx.params.get("direction", "to_segmentation") == "to_segmentation":
            inputs.bool(
                "allow_new_classes",
                default=False,
                label="Allow classes the segmentation field does not have",
                description="Off: instances with an unknown class (e.g. from another tool) "
                "are refused and nothing is written",
            )
        delegation_inputs(inputs, ctx.target_view().count())
        return types.Property(inputs, view=types.View(label="Apply mask edits"))

    def execute(self, ctx):
        from cliprnn.fiftyone.edits import apply_mask_edits, rebuild_instances

        p = ctx.params
        field, det_field = p["label_field"], p.get("detections_field")
        if p.get("direction") == "to_detections":
            n = rebuild_instances(ctx.target_view(), field, det_field)
            message = f"Rebuilt the instances of '{field}' on {n} sample(s)"
            result = {"updated": n, "label_field": field, "message": message}
        else:
            out = apply_mask_edits(
                ctx.target_view(), field, det_field, bool(p.get("allow_new_classes"))
            )
            message = out.message(field)
            result = {"updated": out.updated, "label_field": field, "message": message}
        if not ctx.delegated:
            refresh_app(ctx)
            if result["updated"]:
                message = f"{message}; {RELOAD_HINT}"
                result["message"] = message
            ctx.ops.notify(message, variant="success")
        return result

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        outputs.int("updated", label="Samples updated")
        outputs.str("label_field", label="Segmentation field")
        return types.Property(outputs, view=types.View(label="Mask edits applied"))

    def __call__(
        self,
        sample_collection: Any,
        label_field: str = "car",
        detections_field: str | None = None,
        direction: str = "to_segmentation",
        allow_new_classes: bool = False,
        delegate: bool = False,
        delegation_target: str | None = None,
    ) -> Any:
        """Rebuild ``label_field`` from ``detections_field`` (default ``<label_field>_det``),
        or with ``direction="to_detections"`` the instances from the semantic mask.

        Example usage::

            import fiftyone.operators as foo

            apply_edits = foo.get_operator("@cliprnn/clip-as-rnn/apply_mask_edits")
            apply_edits(dataset, label_field="car")
        """
        params = dict(
            label_field=label_field,
            detections_field=detections_field or f"{label_field}_det",
            direction=direction,
            allow_new_classes=allow_new_classes,
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
        delegation_inputs(inputs, ctx.dataset.count())
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
            refresh_app(ctx)
            ctx.ops.notify(f"Classes of '{p['label_field']}' edited; {RELOAD_HINT}")
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
