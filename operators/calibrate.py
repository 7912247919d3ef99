"""Operator ``calibrate``: search CaR's settings against a ground-truth field of the selected
samples, store the result on the dataset, show its curves and a before/after table; show or
delete stored calibrations. ``Segment with text`` offers each stored one as a preset."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .common import (
    choices_view,
    cliprnn_missing,
    delegation_inputs,
    fail,
    plural,
    requested_delegation,
    stored_item_inputs,
    target_text,
    touch_notice,
)
from .segment_params import calibration_label

ACTIONS = {
    "calibrate": "Calibrate",
    "show": "Show a stored calibration",
    "delete": "Delete a stored calibration",
}
#: The searched settings, in the engine's order, with their axis titles.
KNOBS = {
    "confidence_threshold": "θ: confidence threshold",
    "mask_threshold": "η: mask threshold",
    "visual_prompts": "Visual prompts",
    "background_words": "Background words",
    "crf": "Dense CRF",
}
#: Said under the progress bar: the App's progress view has a Done button that only hides it.
GOES_ON = " (Done hides this view; the calibration goes on)"
#: Seconds between two progress messages streamed to the App.
PROGRESS_EVERY = 0.5
NO_LABELS = "no sample, label or field of the dataset is changed"


class Calibrate(foo.Operator):
    """Calibrate CaR on labelled samples; from Python use
    :func:`cliprnn.fiftyone.calibration.calibrate_view` (and ``list_calibrations``,
    ``calibration_config``, ``delete_calibration``)."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="calibrate",
            label="Calibrate on labelled samples",
            description="Search CaR's thresholds, visual prompts, background words and CRF "
            "for the best mIoU against a ground-truth field, with cross-validation; store the "
            "result for 'Segment with text'",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="tune",
        )

    def resolve_delegation(self, ctx):
        return requested_delegation(ctx)

    def resolve_input(self, ctx):
        inputs = types.Object()
        view = types.View(label="Calibrate on labelled samples")
        missing = cliprnn_missing()
        if missing:
            fail(inputs, "missing", missing)
            return types.Property(inputs, view=view)
        from cliprnn.fiftyone.calibration import list_calibrations

        stored = list_calibrations(ctx.dataset)
        action, chosen = stored_item_inputs(
            ctx, inputs, heading="Stored calibrations", list_name="stored_calibrations",
            stored={n: calibration_label(n, r) for n, r in stored.items()}, actions=ACTIONS,
            item_param="calibration", item_label="Calibration",
        )  # fmt: skip
        if chosen is None:
            _calibrate_inputs(ctx, inputs)
        elif action == "delete":
            touch_notice(
                inputs,
                "writes",
                f"Deletes the stored calibration '{chosen}' (its run record); {NO_LABELS}, "
                "labels segmented with it stay",
            )
        return types.Property(inputs, view=view)

    def execute(self, ctx):
        from cliprnn.fiftyone import calibration as C

        p = ctx.params
        action = p.get("action") or "calibrate"
        if action == "show":
            record = C.calibration_record(ctx.dataset, p["calibration"])
            yield ctx.ops.show_output(*calibration_output(record))
            return
        if action == "delete":
            C.delete_calibration(ctx.dataset, p["calibration"])
            yield ctx.ops.notify(f"Deleted the calibration '{p['calibration']}'", variant="success")
            return
        view = ctx.target_view()
        kwargs = calibrate_kwargs(p, ctx.dataset)
        if ctx.delegated:
            C.calibrate_view(
                view, **kwargs, progress=lambda f, s: ctx.set_progress(progress=f, label=s)
            )
            return
        try:
            work = lambda pr: C.calibrate_view(view, **kwargs, progress=pr)  # noqa: E731
            for fraction, label in _in_thread(work):
                shown = label if fraction >= 1 else label + GOES_ON
                yield ctx.trigger("set_progress", dict(progress=fraction, label=shown))
        except Exception as e:
            # A generator's exception never reaches the App: say it before re-raising.
            message = f"Calibration failed: {type(e).__name__}: {e}"
            yield ctx.trigger("set_progress", dict(progress=1.0, label=message))
            yield ctx.ops.notify(message, variant="error")
            raise
        # The output view opens again if Done hid the progress, and says what a notification
        # would (one would cover the view's Done button)
        record = C.calibration_record(ctx.dataset, kwargs["name"])
        yield ctx.ops.show_output(*calibration_output(record))


def calibrate_kwargs(params: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """:func:`cliprnn.fiftyone.calibration.calibrate_view` keyword arguments from the form's
    params (the view aside): the chosen ground-truth classes (all when the form never listed
    them) plus the free-text queries."""
    from cliprnn.fiftyone import calibration as C

    extra = [line.strip() for line in (params.get("query_text") or "").splitlines()]
    extra = [q for q in extra if q]
    kwargs: dict[str, Any] = dict(
        gt_field=params["gt_field"],
        config=params.get("preset") or None,
        budget=int(params.get("budget") or 150),
        folds=int(params.get("folds") or 5),
        name=(params.get("name") or "").strip() or C.free_calibration_name(dataset),
        overwrite=bool(params.get("overwrite")),
    )
    classes = params.get("classes")
    if classes is None and extra:
        targets = C.ground_truth_targets(dataset, kwargs["gt_field"])
        classes = [n for v, n in sorted(targets.items()) if v != 0]
    if classes is not None:
        kwargs["queries"] = [*classes, *extra]
    return kwargs


def _calibrate_inputs(ctx, inputs: types.Object) -> None:
    """The "Calibrate" branch: target, ground truth, queries, base settings, budget, name."""
    from cliprnn.errors import CaRError
    from cliprnn.fiftyone import calibration as C

    from .segment_form import _check_models, preset_input

    inputs.view_target(ctx, action_description="Calibrate on", allow_selected_samples=True)
    fields = C.ground_truth_fields(ctx.dataset)
    if not fields:
        fail(
            inputs,
            "gt_field_error",
            "This dataset has no Segmentation field: calibration needs ground-truth masks (a "
            "Segmentation field whose mask targets name its values)",
        )
        return
    default = "ground_truth" if "ground_truth" in fields else fields[0]
    inputs.enum(
        "gt_field",
        fields,
        default=default,
        required=True,
        label="Ground truth",
        description="The Segmentation field holding the true masks; its mask targets name "
        "the classes",
        view=choices_view(types.DropdownView, fields),
    )
    gt = ctx.params.get("gt_field") or default
    try:
        targets = C.ground_truth_targets(ctx.dataset, gt)
    except CaRError as e:
        fail(inputs, "gt_field_error", str(e))
        return
    view = ctx.target_view()
    n = view.count()
    unlabelled = view.exists(gt, False)
    missing = unlabelled.count()
    if missing:
        ids, paths = unlabelled.limit(C.SHOW).values(["id", "filepath"])
        names = ", ".join(f"{i} ({p})" for i, p in zip(ids, paths, strict=True))
        more = f" and {missing - len(ids)} more" if missing > len(ids) else ""
        fail(
            inputs,
            "unlabelled_error",
            f"{missing} of the {plural(n, 'sample')} have no ground truth in '{gt}': "
            f"{names}{more}. Select labelled samples only",
        )
    elif n < 2:
        fail(
            inputs,
            "count_error",
            f"Calibration needs at least 2 labelled samples (cross-validation); the target has {n}",
        )
    else:
        inputs.view(
            "samples_notice",
            types.Notice(label=f"Calibrates on {target_text(ctx)}, against '{gt}'"),
        )
    names = [name for value, name in sorted(targets.items()) if value != 0]
    inputs.list(
        "classes",
        types.String(),
        default=names,
        label="Classes to query",
        description="The ground truth's classes; remove the ones not to query (the search may "
        "then use them as background words)",
        view=choices_view(types.AutocompleteView, names, multiple=True, allow_user_input=False),
    )
    inputs.str(
        "query_text",
        default="",
        label="Other text queries (optional)",
        description="One per line; a query naming no ground-truth class counts as wrong "
        "wherever it wins",
        view=types.TextFieldView(multiline=True),
    )
    classes = ctx.params.get("classes")
    chosen = [
        *(names if classes is None else classes),
        *(ctx.params.get("query_text") or "").splitlines(),
    ]
    gt_names = {C.norm_name(x) for x in names}
    if not {C.norm_name(q) for q in chosen if q.strip()} & gt_names:
        fail(
            inputs,
            "queries_error",
            "No query names a ground-truth class: keep at least one of the classes (each "
            "query is scored against the ground-truth class of the same name)",
        )
    base = preset_input(
        ctx,
        inputs,
        "Base settings",
        "The preset (or stored calibration) the search starts from and compares with",
    )
    if base is not None:
        _check_models(inputs, base)
    inputs.int(
        "budget",
        default=150,
        min=1,
        label="Budget",
        description="Most candidate settings tried per search (one search per fold, one on "
        "every sample); cached CLIP passes make most candidates cheap",
    )
    inputs.int(
        "folds",
        default=5,
        min=2,
        label="Cross-validation folds",
        description="Each fold's samples are scored with settings chosen without them",
    )
    _name_inputs(ctx, inputs)
    delegation_inputs(inputs, n)


def _name_inputs(ctx, inputs: types.Object) -> None:
    from cliprnn.errors import CaRError
    from cliprnn.fiftyone import calibration as C

    default = C.free_calibration_name(ctx.dataset)
    inputs.str(
        "name",
        default=default,
        required=True,
        label="Name",
        description="Letters, digits and underscores; 'Segment with text' lists it as "
        "'calibration:<name>'",
    )
    name = ctx.params.get("name") or default
    try:
        name = C.check_calibration_name(name)
    except CaRError as e:
        fail(inputs, "name_error", str(e))
        return
    if name in C.list_calibrations(ctx.dataset):
        inputs.bool("overwrite", default=False, label=f"Replace the stored calibration '{name}'")
        if not ctx.params.get("overwrite"):
            fail(inputs, "name_error", f"A calibration '{name}' exists: tick Replace, or rename")
    touch_notice(
        inputs,
        "writes",
        f"Stores the calibration '{name}' as a run record of the dataset (the search, every "
        f"candidate's score, the chosen settings); {NO_LABELS}",
    )


def _in_thread(work: Callable[[Callable[[float, str], None]], Any]) -> Iterator[tuple]:
    """Run ``work(progress)`` in a thread; yield its latest ``(fraction, label)`` at most
    every :data:`PROGRESS_EVERY` seconds (and the last one); re-raise what it raised."""
    updates: queue.Queue = queue.Queue()
    failed: list[BaseException] = []

    def target() -> None:
        try:
            work(lambda f, s: updates.put((float(f), str(s))))
        except BaseException as e:  # handed to the generator, which re-raises it
            failed.append(e)
        finally:
            updates.put(None)

    thread = threading.Thread(target=target, name="cliprnn-calibrate", daemon=True)
    thread.start()
    latest, sent, done = None, 0.0, False
    while not done:
        item = updates.get()
        while item is not None:
            latest = item
            try:
                item = updates.get(timeout=max(0.0, sent + PROGRESS_EVERY - time.monotonic()))
            except queue.Empty:
                break
        done = item is None
        if latest is not None:
            yield latest
            latest, sent = None, time.monotonic()
    thread.join()
    if failed:
        raise failed[0]


# ------------------------------------------------------------------------------ output
def _pct(x: float) -> str:
    return f"{x:.1f}"


def _interval(bounds: list[float], signed: bool = False) -> str:
    lo, hi = bounds
    return f"[{lo:+.1f}, {hi:+.1f}]" if signed else f"[{lo:.1f}, {hi:.1f}]"


def _words(words: Any, named: dict[tuple, str]) -> str:
    words = tuple(words)
    head = ", ".join(words[:4]) + (", …" if len(words) > 4 else "")
    tag = named.get(words)
    return f"{tag}: {len(words)} words" if tag else f"{len(words)} words ({head})"


def _value_text(knob: str, value: Any, named: dict[tuple, str]) -> str:
    if knob == "crf":
        return "on" if value else "off"
    if knob == "visual_prompts":
        return " + ".join(value) or "none"
    if knob == "background_words":
        return _words(value, named)
    return f"{float(value):g}"


def _word_sets(record: dict[str, Any], base: Any) -> dict[tuple, str]:
    """Names for the background word sets the default search space holds."""
    from cliprnn.config import BACKGROUND_WORDS

    extra = tuple(record.get("extra_background") or ())
    named = {BACKGROUND_WORDS: "paper's list", tuple(base.background_words): "base"}
    if extra:
        named[extra] = "unqueried classes"
        named[tuple(dict.fromkeys((*base.background_words, *extra)))] = "base + unqueried classes"
    return named


def _curve_plot(knob: str, points: list, tuned: Any, base_value: Any, named: dict) -> dict:
    """A Plotly figure (data, layout) of mIoU against one setting's values."""
    numeric = knob in ("confidence_threshold", "mask_threshold")
    xs = [p[0] if numeric else _value_text(knob, p[0], named) for p in points]
    ys = [round(float(p[1]), 2) for p in points]
    line: dict[str, Any] = dict(x=xs, y=ys, name="mIoU (%)", type="scatter" if numeric else "bar")
    if numeric:
        line["mode"] = "lines+markers"
    data = [line]
    marks = (("base", base_value, "#9e9e9e"), ("calibrated", tuned, "#ff6d04"))
    for label, value, colour in marks:
        hits = [
            (x, y)
            for (x, y), p in zip(zip(xs, ys, strict=True), points, strict=True)
            if _same(p[0], value)
        ]
        if hits:
            data.append(
                dict(
                    x=[hits[0][0]],
                    y=[hits[0][1]],
                    name=label,
                    type="scatter",
                    mode="markers",
                    marker=dict(
                        size=13, color=colour, symbol="star" if label == "calibrated" else "circle"
                    ),
                )
            )
    layout = dict(
        title=dict(text=f"mIoU against {KNOBS[knob]}", font=dict(size=14)),
        xaxis=dict(title=dict(text=KNOBS[knob]), type="linear" if numeric else "category"),
        yaxis=dict(title=dict(text="mIoU (%)")),
        showlegend=True,
        height=280,
        margin=dict(t=36, l=56, b=48, r=8),
    )
    return dict(data=data, layout=layout)


def _same(a: Any, b: Any) -> bool:
    """Whether two values of a setting are the same (prompt and word sets: in any order; the
    search space lists prompts in the order they are drawn)."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return sorted(a or []) == sorted(b or [])
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    return abs(float(a) - float(b)) < 1e-9


def _table(record: dict[str, Any], base: Any, tuned: Any, named: dict) -> list[dict[str, str]]:
    """The before/after rows: scores with intervals, chosen values, passes."""
    r = record
    kept = " (base kept: its interval is not above 0)" if r["kept_base"] else ""
    rows = [
        (
            "mIoU, cross-validated (%), 95 % interval",
            f"{_pct(r['base_score'])} {_interval(r['base_interval'])}",
            f"{_pct(r['score'])} {_interval(r['score_interval'])}",
        ),
        (
            f"mIoU on all {r['samples']} labelled samples (%)",
            _pct(r["base_score"]),
            f"{_pct(r['fit_score'])} (chosen on them: optimistic)",
        ),
        (
            "Gain over the base, paired (95 % interval)",
            "",
            f"{r['gain']:+.1f} {_interval(r['gain_interval'], signed=True)}{kept}",
        ),
    ]
    for knob, title in KNOBS.items():
        rows.append(
            (
                title,
                _value_text(knob, getattr(base, knob), named),
                _value_text(knob, getattr(tuned, knob), named),
            )
        )
    rows.append(
        (
            "Model passes",
            "",
            f"{r['passes_computed']} computed of {r['passes_requested']} requested "
            f"(full grid without the cache ≈ {r['naive_grid_passes']})",
        )
    )
    rows.append(
        (
            "Search",
            "",
            f"{r['candidates']} candidates, budget {r.get('budget')}, {r['folds']} folds, "
            f"{r['seconds']:.0f} s",
        )
    )
    return [dict(setting=a, base=b, calibrated=c) for a, b, c in rows]


def _stored_message(record: dict[str, Any]) -> str:
    return (
        f"Stored the calibration '{record['name']}': {record['score']:.1f} % mIoU "
        f"cross-validated (base {record['base_score']:.1f} %); segment with it by choosing "
        f"'calibration:{record['name']}' as the preset"
    )


def calibration_output(record: dict[str, Any]) -> tuple[dict, dict]:
    """The output view (a Property's JSON) and its data for a stored calibration record:
    a summary, the before/after table and one curve per searched setting."""
    from cliprnn.calibration import CalibrationResult
    from cliprnn.fiftyone.calibration import _resolve_mapping

    result = CalibrationResult.from_dict(record["result"])
    base = _resolve_mapping(record["base"])
    tuned = _resolve_mapping(record["config"])
    preset = record["base"].get("preset") if isinstance(record["base"], dict) else None
    base_name = f"Base: preset '{preset}'" if preset else "Base settings"
    named = _word_sets(record, base)
    summary = _stored_message(record) + "."
    if record["kept_base"]:
        summary += (
            " The cross-validated gain over the base settings is within the noise (its 95 % "
            "interval is not above 0), so the calibration keeps them."
        )
    summary += (
        f" Calibrated on {record['samples']} samples of '{record['gt_field']}' for "
        f"{plural(len(record['queries']), 'query', 'queries')}. Each curve varies one setting, "
        "the others at the best values the search found, scored on every labelled sample."
    )
    outputs = types.Object()
    outputs.str("summary", label="Result", view=types.MarkdownView(read_only=True))
    table = types.TableView()
    table.add_column("setting", label="")
    table.add_column("base", label=base_name)
    table.add_column("calibrated", label=f"Calibrated '{record['name']}'")
    outputs.list("comparison", types.Object(), label="Before and after", view=table)
    for knob in KNOBS:
        points = result.curve(knob)
        if not points:
            continue
        figure = _curve_plot(knob, points, getattr(tuned, knob), getattr(base, knob), named)
        outputs.plot(f"curve_{knob}", label=KNOBS[knob], height=300, **figure)
    results = dict(summary=summary, comparison=_table(record, base, tuned, named))
    view = types.View(label=f"Calibration '{record['name']}'")
    return types.Property(outputs, view=view).to_json(), results
