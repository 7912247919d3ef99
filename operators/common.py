"""Form helpers shared by the plugin's operators."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

#: Above this many samples the forms recommend delegated execution (CaR is seconds per image).
DELEGATE_ABOVE = 50


def cliprnn_missing() -> str | None:
    """A message when the cliprnn package cannot be imported here, else None."""
    try:
        import cliprnn.fiftyone  # noqa: F401
    except ImportError as e:
        return (
            f"The cliprnn package is not installed in FiftyOne's Python environment ({e}). "
            "Install it with `fiftyone plugins requirements @cliprnn/clip-as-rnn --install` "
            "(or `pip install <this plugin's folder>`), then restart the App."
        )
    return None


def choices_view(view_cls: type, values: Iterable[str], labels: dict | None = None, **kw):
    """A Choices-like view (Dropdown, Autocomplete, RadioGroup) listing ``values``."""
    view = view_cls(**kw)
    for v in values:
        view.add_choice(v, label=(labels or {}).get(v, v))
    return view


def stored_item_inputs(
    ctx,
    inputs: types.Object,
    *,
    heading: str,
    list_name: str,
    stored: dict[str, str],
    actions: dict[str, str],
    item_param: str,
    item_label: str,
) -> tuple[str, str | None]:
    """The head of a form that makes an item or acts on a stored one: the stored items (name
    -> label) listed, an action radio (the first of ``actions`` makes a new item) and, for the
    other actions, a dropdown of the stored items. Returns (action, chosen item or None)."""
    create = next(iter(actions))
    if stored:
        lines = "\n".join(f"- {label}" for label in stored.values())
        inputs.md(f"**{heading}**\n\n{lines}", name=list_name)
        inputs.enum(
            "action",
            list(actions),
            default=create,
            label="Action",
            view=choices_view(types.RadioGroup, actions, actions),
        )
    action = ctx.params.get("action") or create
    if action == create or not stored:
        return create, None
    names = list(stored)
    inputs.enum(
        item_param,
        names,
        default=names[0],
        required=True,
        label=item_label,
        view=choices_view(types.DropdownView, names, stored),
    )
    return action, ctx.params.get(item_param) or names[0]


def fail(inputs: types.Object, name: str, message: str) -> None:
    """Show an error at the top of the form (below earlier errors) and disable Execute."""
    prop = inputs.view(name, types.Error(label=message))
    prop.invalid = True
    prop.error_message = message
    props = inputs.properties
    errors = [k for k, p in props.items() if getattr(p, "invalid", False) and k != name]
    order = [*errors, name, *(k for k in props if k != name and k not in errors)]
    inputs.properties = {k: props[k] for k in order}


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 sample``, ``3 samples``."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def target_text(ctx) -> str:
    """What an operator's target is, with counts: ``the 3 selected samples``, ``the current
    view (12 of 24 samples)``, ``the whole dataset (24 samples)``."""
    target = ctx.params.get("view_target") or ctx.request_params.get("view_target")
    n = ctx.target_view().count()
    total = ctx.dataset.count()
    things = "video" if ctx.dataset.media_type == "video" else "sample"
    if target == "SELECTED_SAMPLES":
        return f"the {plural(n, 'selected ' + things)}"
    if target == "DATASET" or (n == total and not ctx.has_custom_view):
        return f"the whole dataset ({plural(n, things)})"
    return f"the current view ({n} of {plural(total, things)})"


def touch_notice(inputs: types.Object, name: str, text: str) -> None:
    """A notice saying what the operation will write, placed first after any errors."""
    inputs.view(name, types.Notice(label=text))
    props = inputs.properties
    errors = [k for k, p in props.items() if getattr(p, "invalid", False)]
    first = [k for k in ("view_target",) if k in props]
    order = [*errors, *first, name]
    inputs.properties = {k: props[k] for k in [*order, *(k for k in props if k not in order)]}


def delegation_inputs(inputs: types.Object, count: int) -> None:
    """A recommendation to schedule large runs (the Execute button's menu chooses)."""
    if count > DELEGATE_ABOVE:
        inputs.view(
            "delegate_warning",
            types.Notice(
                label=f"{count} samples: choose Schedule in the Execute menu to run it on a "
                "delegated-operations worker (`fiftyone delegated launch`); runs in the App stop "
                "after FIFTYONE_OPERATOR_TIMEOUT (600 s by default)"
            ),
        )


def free_field_name(
    dataset, base: str, suffixes: Iterable[str] = ("",), taken: Iterable[str] = ()
) -> str:
    """``base``, or ``base_2``, ``base_3``... : the first name none of whose ``suffixes``
    variants is a field of ``dataset`` or one of the ``taken`` names (fields reserved by
    scheduled runs)."""
    suffixes, taken = list(suffixes), set(taken)
    n = 1
    while True:
        name = base if n == 1 else f"{base}_{n}"
        if name not in taken and not any(
            dataset.has_field(name + s) or name + s in taken for s in suffixes
        ):
            return name
        n += 1


#: Said after an operator rewrote labels of samples the App may have shown in its modal.
RELOAD_HINT = "reload the page (F5) before editing these samples again in the Annotate tab"


def refresh_app(ctx, fields: Iterable[str] = ()) -> list:
    """Make the App show labels an operator changed: reload the dataset and the grid, show
    ``fields``, and close the sample modal (an open sample keeps the labels it loaded, and its
    next edit would write them back). The App (1.22) also keeps the overlays of samples it has
    shown in the modal until the page reloads: :data:`RELOAD_HINT` says so. Returns the trigger
    messages, for a generator operator to yield."""
    fields = list(fields)
    messages = [ctx.ops.reload_dataset(), ctx.ops.reload_samples()]
    if fields:
        messages.append(ctx.ops.set_active_fields(fields=fields))
        messages.extend(color_messages(ctx))
    if ctx.current_sample:  # an open modal keeps the labels it loaded: close it
        messages.append(ctx.ops.close_sample())
    return messages


def color_messages(ctx) -> list:
    """Give the App the dataset's stored colour scheme now (the App reads it only when a
    dataset loads, so fields a run coloured would show other colours until then)."""
    scheme = ctx.dataset.app_config.color_scheme
    if scheme is None:
        return []
    params = {"fields": [dict(f) for f in scheme.fields or []]}
    if scheme.color_by:
        params["color_by"] = scheme.color_by
    return [ctx.trigger("set_color_scheme", params), ctx.ops.refresh_colors()]


def segmentation_fields(dataset) -> list[str]:
    """Top-level Segmentation fields of ``dataset``."""
    import fiftyone as fo

    return sorted(dataset.get_field_schema(embedded_doc_type=fo.Segmentation))


def detections_fields(dataset) -> list[str]:
    """Top-level Detections fields of ``dataset``."""
    import fiftyone as fo

    return sorted(dataset.get_field_schema(embedded_doc_type=fo.Detections))


def requested_delegation(ctx) -> bool | None:
    """An operator's ``resolve_delegation``: force delegation when the form asks for it."""
    return True if ctx.params.get("delegate") else None


def execute_from_sdk(
    operator: foo.Operator,
    sample_collection: Any,
    params: dict[str, Any],
    *,
    delegate: bool,
    delegation_target: str | None,
) -> Any:
    """Run ``operator`` on a dataset or view from Python (what each ``__call__`` does)."""
    import fiftyone as fo

    if isinstance(sample_collection, fo.DatasetView):
        ctx = dict(view=sample_collection)
    else:
        ctx = dict(dataset=sample_collection)
    return foo.execute_operator(
        operator.uri,
        ctx,
        params=params,
        request_delegation=delegate,
        delegation_target=delegation_target,
    )
