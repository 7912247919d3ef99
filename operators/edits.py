"""Operators that edit stored results: ``apply_mask_edits`` (both directions) and
``edit_mask_classes``.

After writing, each operator has the App drop its copy of the samples it rewrote (the plugin's
JS operator ``refresh_samples``), so an Annotate edit made next starts from the stored labels
instead of saving the old ones back."""

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

PLUGIN = "@cliprnn/clip-as-rnn"
#: The plugin's JS operator (js/index.umd.js) that replaces the App's copies of samples.
REFRESH_SAMPLES = f"{PLUGIN}/refresh_samples"
#: Above this many rewritten samples the App refreshes every sample it holds instead of a list.
REFRESH_IDS_MAX = 5000
#: A rebuild form looks for unapplied instance edits on at most this many samples; Execute
#: always checks the whole target.
SCAN_MAX = 100

ACTIONS = {
    "rename": "Rename a class",
    "merge": "Merge classes into one",
    "delete": "Delete classes (their pixels become background)",
}

DIRECTIONS = {
    "to_segmentation": "Instances → semantic mask (fold the edits back)",
    "to_detections": "Semantic mask → instances (rebuild the instances)",
}


def refresh_after_write(ctx, sample_ids: list[str] | None = None) -> list:
    """Have the App show what an operator wrote: reload the dataset and the grid, and replace
    the App's own copy of each rewritten sample (``sample_ids``; None = every sample it holds)
    with the stored one, closing and reopening the sample modal when it shows one of them.
    Returns the trigger messages (a generator operator yields them)."""
    ids = sample_ids if sample_ids is not None and len(sample_ids) <= REFRESH_IDS_MAX else None
    messages = [ctx.ops.reload_dataset(), ctx.ops.reload_samples()]
    if ctx.current_sample:
        messages.append(ctx.ops.close_sample())  # if the plugin's JS did not load, stay safe
    params = {"ids": ids, "reopen": ctx.current_sample}
    messages.append(ctx.trigger(REFRESH_SAMPLES, params))
    return messages


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


def _pairs(dataset, segs: list[str], dets: list[str]) -> list[tuple[str, str]]:
    out = []
    for seg in segs:
        partner = _partner(dataset, seg, dets)
        if partner:
            out.append((seg, partner))
    return out


def _last_edited_pair(ctx, pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The (semantic, instance) field pair the user edited last: the one whose instances
    differ from the semantic mask on the open sample, else on the most recently modified
    samples; among several, one shown in the App."""
    from cliprnn.fiftyone.edits import unapplied_edits

    if not pairs:
        return None
    if ctx.current_sample:
        recent = ctx.dataset.select(ctx.current_sample)
    else:
        recent = ctx.dataset.sort_by("last_modified_at", reverse=True).limit(3)
    edited = [p for p in pairs if unapplied_edits(recent, p[0], p[1])]
    shown = set(ctx.active_fields or [])
    for group in (edited, pairs):
        for pair in group:
            if pair[1] in shown:
                return pair
        if group is edited and edited:
            return edited[0]
    return None


def _target(ctx) -> tuple[Any, str]:
    """The samples the operator works on and how to say it: the open sample (when one is open,
    nothing is selected and the form says so), else the view target."""
    if ctx.current_sample and not ctx.selected and ctx.params.get("scope", "sample") == "sample":
        return ctx.dataset.select(ctx.current_sample), "the open sample"
    view = ctx.target_view()
    n, total = view.count(), ctx.dataset.count()
    target = ctx.params.get("view_target") or ctx.request_params.get("view_target")
    if target == "SELECTED_SAMPLES":
        return view, f"the {n} selected sample(s)"
    if n == total and not ctx.has_custom_view:
        return view, f"the whole dataset ({n} samples)"
    return view, f"the current view ({n} of {total} samples)"


def _scope_input(inputs: types.Object, ctx, verb: str) -> None:
    """With a sample open and nothing selected: choose that sample or the whole target."""
    if not ctx.current_sample or ctx.selected:
        return
    n = ctx.target_view().count()
    where = "the current view" if ctx.has_custom_view else "the dataset"
    labels = {"sample": f"{verb} the open sample only", "target": f"{verb} all {n} of {where}"}
    inputs.enum(
        "scope",
        list(labels),
        default="sample",
        label="Samples",
        view=choices_view(types.RadioGroup, labels, labels),
    )


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
        if ctx.dataset.media_type == "video":
            fail(
                inputs,
                "video",
                "Apply mask edits works on image samples: the frame fields of a video dataset "
                "(frames.<field>) are not supported",
            )
            return types.Property(inputs)
        direction = ctx.params.get("direction") or "to_segmentation"
        verb = "Fold edits of" if direction == "to_segmentation" else "Rebuild"
        inputs.view_target(ctx, action_description=verb, allow_selected_samples=True)
        _scope_input(inputs, ctx, verb)
        dets = detections_fields(ctx.dataset)
        if not dets:
            fail(inputs, "no_detections", "This dataset has no Detections field to take edits from")
            return types.Property(inputs)
        segs = segmentation_fields(ctx.dataset)
        pairs = _pairs(ctx.dataset, segs, dets)
        paired = [s for s, _ in pairs]
        inputs.enum(
            "direction",
            list(DIRECTIONS),
            default="to_segmentation",
            label="Direction",
            view=choices_view(types.RadioGroup, DIRECTIONS, DIRECTIONS),
        )
        last = _last_edited_pair(ctx, pairs)
        choices = paired + [s for s in segs if s not in paired]
        default_seg = last[0] if last else choices[0] if choices else f"{dets[0]}_seg"
        inputs.str(
            "label_field",
            default=default_seg,
            required=True,
            label="Segmentation field",
            description="Rewritten from the instances (created if missing)"
            if direction == "to_segmentation"
            else "The instances are rebuilt from this field's masks",
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
        det = ctx.params.get("detections_field") or partner
        view, where = _target(ctx)
        if direction == "to_segmentation":
            inputs.bool(
                "allow_new_classes",
                default=False,
                label="Allow classes the segmentation field does not have",
                description="Off: instances with an unknown class (e.g. from another tool) "
                "are refused and nothing is written",
            )
            inputs.view(
                "touches",
                types.Notice(
                    label=f"Writes '{seg}' (and trims overlapping instances of '{det}') on "
                    f"{where}; samples whose instances already agree are not rewritten"
                ),
            )
        else:
            self._rebuild_inputs(inputs, ctx, view, where, seg, det)
        delegation_inputs(inputs, view.count())
        return types.Property(inputs, view=types.View(label="Apply mask edits"))

    def _rebuild_inputs(self, inputs, ctx, view, where: str, seg: str, det: str) -> None:
        from cliprnn.fiftyone.edits import unapplied_edits

        n = view.exists(seg).count()
        inputs.view(
            "touches",
            types.Notice(
                label=f"Replaces every instance in '{det}' with instances rebuilt from '{seg}' "
                f"on {where}: {n} sample(s) with a mask"
            ),
        )
        if n > SCAN_MAX:
            inputs.view(
                "scan_note",
                types.Notice(
                    label=f"Execute first checks all {n} samples for instance edits not folded "
                    "back, and refuses to discard any unless the box below is ticked"
                ),
            )
            edited = []
        else:
            edited = unapplied_edits(view, seg, det)
        inputs.bool(
            "discard_edits",
            default=False,
            label="Discard unapplied instance edits",
            description="Instances that differ from the semantic mask (edits not folded back "
            "with 'Instances → semantic mask') are lost in a rebuild",
        )
        if edited and not ctx.params.get("discard_edits"):
            more = f" and {len(edited) - 10} more" if len(edited) > 10 else ""
            named = ", ".join(edited[:10]) + more
            fail(
                inputs,
                "unapplied",
                f"{len(edited)} sample(s) have instance edits in '{det}' not folded into "
                f"'{seg}': {named}. Fold them back first, or tick 'Discard unapplied instance "
                "edits'",
            )

    def execute(self, ctx):
        from cliprnn.fiftyone.edits import apply_mask_edits, rebuild_instances

        p = ctx.params
        field, det_field = p["label_field"], p.get("detections_field")
        view, where = _target(ctx)
        variant = "success"
        if p.get("direction") == "to_detections":
            out = rebuild_instances(
                view, field, det_field, discard_edits=bool(p.get("discard_edits"))
            )
            message = f"{out.message(field, det_field or field + '_det')} ({where})"
            ids = out.updated_ids
            result = {"updated": out.updated, "label_field": field, "message": message}
        else:
            out = apply_mask_edits(view, field, det_field, bool(p.get("allow_new_classes")))
            message = f"{out.message(field)} ({where})"
            ids = out.updated_ids
            if out.refused:
                variant = "error"
            elif not out.updated:
                variant = "warning"
            result = {
                "updated": out.updated,
                "label_field": field,
                "message": message,
                "refused": list(out.refused),
            }
        if not ctx.delegated:
            if ids:
                refresh_after_write(ctx, ids)
            ctx.ops.notify(message, variant=variant)
        result["variant"] = variant
        return result

    def resolve_output(self, ctx):
        outputs = types.Object()
        variant = (ctx.results or {}).get("variant", "success")
        view = {"warning": types.Warning, "error": types.Error}.get(variant, types.Notice)
        outputs.view("message", view(label=(ctx.results or {}).get("message", "")))
        outputs.int("updated", label="Samples updated")
        outputs.str("label_field", label="Segmentation field")
        return types.Property(outputs, view=types.View(label="Mask edits applied"))

    def __call__(
        self,
        sample_collection: Any,
        label_field: str | None = None,
        detections_field: str | None = None,
        direction: str = "to_segmentation",
        allow_new_classes: bool = False,
        discard_edits: bool = False,
        delegate: bool = False,
        delegation_target: str | None = None,
    ) -> Any:
        """Rebuild ``label_field`` (default ``"cliprnn"``, the default field of a run) from
        ``detections_field`` (default ``<label_field>_det``),
        or with ``direction="to_detections"`` the instances from the semantic mask (refused
        where instances hold edits not folded back, unless ``discard_edits``).

        Example usage::

            import fiftyone.operators as foo

            apply_edits = foo.get_operator("@cliprnn/clip-as-rnn/apply_mask_edits")
            apply_edits(dataset, label_field="cliprnn")
        """
        if label_field is None:
            from cliprnn.fiftyone.defaults import DEFAULT_LABEL_FIELD

            label_field = DEFAULT_LABEL_FIELD
        params = dict(
            label_field=label_field,
            detections_field=detections_field or f"{label_field}_det",
            direction=direction,
            allow_new_classes=allow_new_classes,
            discard_edits=discard_edits,
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
        chosen = list(ctx.params.get("classes") or [])
        if action == "rename" and len(chosen) > 1:
            fail(inputs, "rename_error", "Rename takes one class; use Merge for several")
        new_name = (ctx.params.get("new_name") or "").strip()
        if action == "rename" and new_name in names and new_name not in chosen:
            inputs.view(
                "merge_warning",
                types.Warning(
                    label=f"'{new_name}' is already a class of '{field}': renaming "
                    f"{chosen} to it merges them into '{new_name}' (one class, one mask value)"
                ),
            )
        n = ctx.dataset.exists(field).count()
        det = f"{field}_det"
        touched = [field] + [f for f in (det, f"{field}_scores") if ctx.dataset.has_field(f)]
        inputs.view(
            "scope",
            types.Notice(
                label=f"Applies to every sample of the dataset ({n} with '{field}'): mask "
                f"targets are dataset-wide. Rewrites {', '.join(repr(f) for f in touched)}"
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
        field = p["label_field"]
        targets = edit_mask_classes(ctx.dataset, field, **kwargs)
        if not ctx.delegated:
            refresh_after_write(ctx, ctx.dataset.exists(field).values("id"))
            ctx.ops.notify(f"Classes of '{field}' edited", variant="success")
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
            edit(dataset, "cliprnn", "merge", ["cat", "dog"], new_name="pet")
            edit(dataset, "cliprnn", "delete", ["sky"])
        """
        params = dict(
            label_field=label_field, action=action, classes=list(classes), delegate=delegate
        )
        if new_name is not None:
            params["new_name"] = new_name
        return execute_from_sdk(
            self, sample_collection, params, delegate=delegate, delegation_target=delegation_target
        )
