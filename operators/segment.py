"""Operator ``segment``: run CLIP as RNN on a dataset, a view or selected samples."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .common import (
    DELEGATE_ABOVE,
    choices_view,
    cliprnn_missing,
    delegation_inputs,
    execute_from_sdk,
    fail,
    free_field_name,
    plural,
    refresh_app,
    requested_delegation,
    target_text,
    touch_notice,
)

#: The "no class list" choice of the form (an empty value would show as a blank choice).
NO_SOURCE = "none"
INSTANCE_LABELS = {
    "region": "One object per connected region (two dogs are two objects)",
    "class": "One object per class",
}

PRESET_LABELS = {
    "voc": "Pascal VOC (paper): ViT-B/16 proposals, ViT-L/14 classifier",
    "coco_object": "COCO-Object (paper)",
    "context": "Pascal Context (paper; things and stuff)",
    "fast": "Fast: ViT-B/16 for both stages",
    "refcoco": "Referring expressions (RefCOCO settings)",
    "mini": "Bundled miniature CLIP (offline, for demos and tests)",
}
OUTPUT_LABELS = {
    "segmentation": "Semantic mask (Segmentation)",
    "detections": "Editable instance masks (Detections, with scores)",
    "heatmaps": "Per-query confidence maps (Heatmap files)",
}
#: Advanced form fields: CaRConfig field -> (kind, label). Their names are also SDK kwargs.
ADVANCED = {
    "proposal_model": ("str", "Proposal CLIP (Hugging Face name or local folder)"),
    "classifier_model": ("str", "Classifier CLIP (Hugging Face name or local folder)"),
    "mask_threshold": ("float", "η: proposal binarisation threshold"),
    "confidence_threshold": ("float", "θ: drop queries scoring at or below this"),
    "clipes_threshold": ("float", "λ: CLIP-ES box threshold"),
    "visual_prompts": ("prompts", "Visual prompts"),
    "background_words": ("words", "Background words (comma separated)"),
    "crf": ("bool", "Dense CRF post-processing"),
    "sam_checkpoint": ("str", "SAM checkpoint file (optional refinement)"),
    "mode": ("mode", "Mode"),
    "device": ("device", "Device"),
    "dtype": ("dtype", "Precision"),
}
#: Choices of the enum-like advanced fields, with a note shown under the field.
ENUM_FIELDS = {
    "device": (("auto", "cpu", "cuda", "mps"), None),
    "dtype": (
        ("float32", "bfloat16", "float16"),
        "float32 is exact. bfloat16 autocast is about 2x faster on CPUs with AMX (and on GPUs) "
        "at a small accuracy cost; float16 applies on CUDA only",
    ),
}


class Segment(foo.Operator):
    """Segment images for text queries with CLIP as RNN (CaR)."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="segment",
            label="Segment with text (CLIP as RNN)",
            description="Open-vocabulary semantic segmentation for the dataset's classes or "
            "free-text queries",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="format_paint",
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
            types.Button(label="Segment with text (CLIP as RNN)", icon="format_paint", prompt=True),
        )

    def resolve_delegation(self, ctx):
        return requested_delegation(ctx)

    def resolve_execution_options(self, ctx):
        count = ctx.target_view().count() if ctx.dataset is not None else 0
        return foo.ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=bool(ctx.params.get("delegate")) or count > DELEGATE_ABOVE,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        missing = cliprnn_missing()
        if missing:
            fail(inputs, "missing", missing)
            return types.Property(inputs, view=types.View(label="Segment with text"))
        target = inputs.view_target(ctx, action_description="Segment", allow_selected_samples=True)
        count = ctx.target_view().count()
        video = ctx.target_view().media_type == "video"
        _query_inputs(ctx, inputs)
        if video:
            _video_inputs(inputs)
        _model_inputs(ctx, inputs)
        field = _output_inputs(ctx, inputs, video)
        delegation_inputs(inputs, count)
        _shard_inputs(ctx, inputs, 1 if video else count)  # sharded runs split images
        _scheduled_inputs(ctx, inputs, field)
        if field:
            touch_notice(inputs, "writes", _writes_text(ctx, field, video))
        del target
        return types.Property(inputs, view=types.View(label="Segment with text (CLIP as RNN)"))

    def resolve_run_name(self, ctx):
        """Called by FiftyOne just before it queues a scheduled run: reserve the output field
        for this run (FieldReservedError, shown in the App, when another run holds it) and
        give the queued operation the reservation's token."""
        from cliprnn.fiftyone.scheduled import TOKEN_PARAM, new_token, reserve_field

        field = ctx.params.get("label_field") or _defaults().DEFAULT_LABEL_FIELD
        token = ctx.params.get(TOKEN_PARAM) or new_token()
        reserve_field(ctx.dataset, field, token, samples=ctx.target_view().count())
        ctx.params[TOKEN_PARAM] = token
        ctx.request_params["params"] = ctx.params  # serialized into the queued operation
        return f"Segment into '{field}'"

    def execute(self, ctx):
        from cliprnn.fiftyone.collection import make_run

        shards = shard_count(ctx.params)
        if ctx.delegated:
            self._execute_scheduled(ctx, shards)
            return
        try:
            run = make_run(ctx.target_view(), **run_kwargs(ctx.params, ctx.dataset))
            for p in run:
                yield ctx.trigger("set_progress", dict(progress=p.fraction, label=_running(p)))
        except Exception as e:
            # A generator's exception never reaches the App: say it before re-raising.
            message = f"Segment failed: {type(e).__name__}: {e}"
            yield ctx.trigger("set_progress", dict(progress=1.0, label=message))
            yield ctx.ops.notify(message, variant="error")
            raise
        s = run.summary
        yield from refresh_app(ctx, [run.store.path(f) for f in run.fields.shown()])
        if run.overwrite:  # the App's copies of rewritten samples must not be saved back
            from .edits import refresh_after_write

            yield from refresh_after_write(ctx, list(run.ids))
        message = _summary_message(run)
        if shards > 1:
            message += f" as one job: 'Split into {shards} jobs' applies to scheduled runs"
        yield ctx.ops.notify(message, variant="warning" if s.failed or shards > 1 else "success")

    def _execute_scheduled(self, ctx, shards: int) -> None:
        """A scheduled run, on a delegated worker: hold the field the run reserved when it
        was scheduled, run (or plan the sharded run), record how it ended for the App."""
        from cliprnn.fiftyone import scheduled
        from cliprnn.fiftyone.collection import make_run

        token = ctx.params.get(scheduled.TOKEN_PARAM)
        field = ctx.params.get("label_field") or _defaults().DEFAULT_LABEL_FIELD
        if token:
            scheduled.claim(ctx.dataset, field, token)
        try:
            if shards > 1:
                # The planning job: fix the run once, queue one operation per shard, return.
                from cliprnn.fiftyone.shards import queue_sharded_run

                plan = queue_sharded_run(
                    ctx.target_view(),
                    shards,
                    operator_uri=f"{self.plugin_name}/segment_shard",
                    delegation_target=ctx.delegation_target,
                    **run_kwargs(ctx.params, ctx.dataset),
                )
                ctx.set_progress(progress=1.0, label=plan.message)
                message = plan.message
            else:
                run = make_run(ctx.target_view(), **run_kwargs(ctx.params, ctx.dataset))
                for p in run:
                    ctx.set_progress(progress=p.fraction, label=p.label)
                message = _summary_message(run)
        except BaseException as e:
            if token:
                scheduled.finish(ctx.dataset, field, token, False, f"{type(e).__name__}: {e}")
            raise
        if token:
            scheduled.finish(ctx.dataset, field, token, True, message, planned=shards > 1)

    def __call__(
        self,
        sample_collection: Any,
        queries: list[str] | None = None,
        classes_from: str | None = None,
        label_field: str | None = None,
        preset: str | None = None,
        outputs: tuple[str, ...] | list[str] | None = None,
        queries_from: str | None = None,
        instances: str | None = None,
        output_dir: str | None = None,
        allow_media_dir: bool = False,
        overwrite: bool = False,
        skip_existing: bool = False,
        skip_failures: bool = False,
        batch_size: int | None = None,
        classes: list[str] | None = None,
        shards: int = 1,
        delegate: bool = False,
        delegation_target: str | None = None,
        exemplar_sets: list[str] | None = None,
        frame_step: int | None = None,
        carry_queries: bool | None = None,
        min_region_pixels: int | None = None,
        **advanced: Any,
    ) -> Any:
        """Segment ``sample_collection`` with CaR; the same work as the App form.

        ``queries`` are free-text queries; ``classes_from`` names a class list of the dataset
        (``"mask_targets:FIELD"``, ``"classes:FIELD"``, ``"labels:FIELD"``,
        ``"default_mask_targets"``, ``"default_classes"``), optionally narrowed by ``classes``;
        ``queries_from`` (``"tags"`` or a Classification(s)/Detections field) queries each
        sample for its own labels, plus ``queries``. ``exemplar_sets`` name stored exemplar sets
        of the dataset (:mod:`cliprnn.fiftyone.exemplar_sets`): classes given by pictures,
        beside the text queries, loaded when the run starts. ``outputs`` are the semantic mask
        and editable instances (``instances``: one per connected ``"region"`` or per ``"class"``)
        unless told otherwise. Settings left out (None) take the defaults of
        :func:`cliprnn.fiftyone.segment_collection` (:mod:`cliprnn.fiftyone.defaults`): field
        ``"cliprnn"``, preset ``"voc"``, batches of 8.
        ``output_dir`` (absolute) receives mask and heatmap PNGs; it may lie inside the images'
        folders only with ``allow_media_dir=True``. ``preset`` is a CaRConfig preset;
        ``advanced`` keyword arguments override its fields (``proposal_model``,
        ``classifier_model``, ``mask_threshold``, ``confidence_threshold``,
        ``clipes_threshold``, ``visual_prompts``, ``background_words``, ``crf``,
        ``sam_checkpoint``, ``mode``, ``device``, ``dtype``).

        On a video collection the frames are labelled (``frames.<label_field>`` ...):
        ``frame_step=k`` labels frames 1, 1 + k, 1 + 2k, ... and ``carry_queries`` (default
        on) starts each frame's recurrence from the previous labelled frame's kept queries.

        ``delegate=True`` queues the run for a ``fiftyone delegated launch`` worker and
        reserves ``label_field`` for it at once: until the run ends, scheduling another run
        into that field fails here with an error naming the queued run, and the App's form
        offers the next free name.

        Immediate runs are limited to ``FIFTYONE_OPERATOR_TIMEOUT`` seconds (600 by default);
        for large collections pass ``delegate=True`` or call
        :func:`cliprnn.fiftyone.segment_collection`. In a notebook, ``await`` the result.

        ``shards=K`` with ``delegate=True`` splits the run into K delegated operations over
        disjoint slices of ``sample_collection``, for K workers: the run is planned here and
        now (queries, mask values, fields fixed; the field locked for this run), and the
        result lists the run id and the queued operations. ``resume_run`` re-queues jobs
        whose worker died. ``shards`` needs ``delegate=True``.

        Example usage::

            import fiftyone as fo
            import fiftyone.operators as foo

            segment = foo.get_operator("@cliprnn/clip-as-rnn/segment")
            segment(dataset.take(5), queries=["cat", "dog"], preset="voc")
            segment(dataset, classes_from="mask_targets:ground_truth", delegate=True)
            segment(dataset, queries=["cat"], label_field="cat", shards=4, delegate=True)
            segment(dataset, queries=["dog"], exemplar_sets=["mascot"], label_field="pets")
        """
        unknown = sorted(set(advanced) - set(ADVANCED))
        if unknown:
            raise TypeError(f"unknown arguments {unknown}; advanced settings are {list(ADVANCED)}")
        from cliprnn.errors import ConfigError
        from cliprnn.fiftyone.shards import check_shards

        check_shards(shards)
        D = _defaults()
        if shards > 1 and not delegate:
            raise ConfigError(
                f"shards={shards} splits a scheduled run into {shards} delegated jobs; pass "
                "delegate=True (and start workers with `fiftyone delegated launch`), or "
                "shards=1 to run here"
            )
        params = dict(
            queries=list(queries or []),
            classes_from=classes_from or NO_SOURCE,
            label_field=label_field or D.DEFAULT_LABEL_FIELD,
            preset=preset or D.DEFAULT_PRESET,
            outputs=list(outputs or D.DEFAULT_OUTPUTS),
            queries_from=queries_from or NO_SOURCE,
            exemplar_sets=list(exemplar_sets or []),
            instances=instances or D.DEFAULT_INSTANCES,
            output_dir=output_dir or "",
            allow_media_dir=allow_media_dir,
            overwrite=overwrite,
            skip_existing=skip_existing,
            skip_failures=skip_failures,
            batch_size=batch_size or D.DEFAULT_BATCH_SIZE,
            delegate=delegate,
            advanced=bool(advanced),
        )
        if classes is not None:
            params["classes"] = list(classes)
        if frame_step is not None:
            params["frame_step"] = frame_step
        if carry_queries is not None:
            params["carry_queries"] = carry_queries
        if min_region_pixels is not None:
            params["min_region_pixels"] = min_region_pixels
        for name, value in advanced.items():
            params[name] = ", ".join(value) if name == "background_words" else value
        if shards > 1:
            return _queue_from_sdk(self, sample_collection, params, shards, delegation_target)
        return execute_from_sdk(
            self, sample_collection, params, delegate=delegate, delegation_target=delegation_target
        )


def _defaults() -> Any:
    """:mod:`cliprnn.fiftyone.defaults`, imported when needed: the plugin loads (and its form
    says how to install cliprnn) where cliprnn is missing."""
    from cliprnn.fiftyone import defaults

    return defaults


def shard_count(params: dict[str, Any]) -> int:
    """The form's (or SDK's) "Split into K jobs" value; 1 when absent."""
    from cliprnn.fiftyone.shards import check_shards

    value = params.get("shards")
    return 1 if value in (None, "") else check_shards(int(value))


def _queue_from_sdk(
    operator: foo.Operator,
    sample_collection: Any,
    params: dict[str, Any],
    shards: int,
    delegation_target: str | None,
) -> Any:
    """Plan a sharded run here and queue its jobs; an ExecutionResult (delegated) whose
    ``result`` describes the run. In a notebook (a running event loop) it is awaitable, as
    ``execute_operator``'s result is there."""
    import asyncio

    from fiftyone.operators.executor import ExecutionResult

    from cliprnn.fiftyone.shards import queue_sharded_run

    plan = queue_sharded_run(
        sample_collection,
        shards,
        operator_uri=f"{operator.plugin_name}/segment_shard",
        delegation_target=delegation_target,
        **run_kwargs(params, sample_collection._root_dataset),
    )
    result = ExecutionResult(result=plan.to_dict(), delegated=True)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return result
    future = loop.create_future()
    future.set_result(result)
    return future


def run_kwargs(params: dict[str, Any], dataset: Any = None) -> dict[str, Any]:
    """SegmentationRun keyword arguments from the form's (or the SDK's) params; the exemplar
    sets they name are loaded from ``dataset``; what they leave out takes the defaults of
    :mod:`cliprnn.fiftyone.defaults`."""
    D = _defaults()
    source = params.get("classes_from") or None
    text = params.get("query_text") or ""
    kwargs: dict[str, Any] = dict(
        queries=[
            *(params.get("queries") or []),
            *(line.strip() for line in text.splitlines() if line.strip()),
            *exemplar_queries(params, dataset),
        ],
        classes_from=None if source == NO_SOURCE else source,
        queries_from=params.get("queries_from") or None,
        instances=params.get("instances") or D.DEFAULT_INSTANCES,
        label_field=params.get("label_field") or D.DEFAULT_LABEL_FIELD,
        config=params.get("preset") or D.DEFAULT_PRESET,
        outputs=params.get("outputs") or list(D.DEFAULT_OUTPUTS),
        output_dir=params.get("output_dir") or None,
        allow_media_dir=bool(params.get("allow_media_dir")),
        overwrite=bool(params.get("overwrite")),
        skip_existing=bool(params.get("skip_existing")),
        skip_failures=bool(params.get("skip_failures")),
        batch_size=int(params.get("batch_size") or D.DEFAULT_BATCH_SIZE),
    )
    if kwargs["queries_from"] == NO_SOURCE:
        kwargs["queries_from"] = None
    if params.get("min_region_pixels") not in (None, ""):
        kwargs["min_region_pixels"] = int(params["min_region_pixels"])
    from cliprnn.fiftyone.scheduled import TOKEN_PARAM

    if params.get(TOKEN_PARAM):
        kwargs["reservation"] = params[TOKEN_PARAM]
    if kwargs["classes_from"] and params.get("classes") is not None:
        kwargs["classes"] = params["classes"]
    if params.get("frame_step") not in (None, ""):
        kwargs["frame_step"] = int(params["frame_step"])
    if params.get("carry_queries") is not None:
        kwargs["carry_queries"] = bool(params["carry_queries"])
    if params.get("advanced"):
        for name in ADVANCED:
            value = params.get(name)
            if value is None or value == "":
                continue
            if name == "background_words" and isinstance(value, str):
                value = [w.strip() for w in value.split(",") if w.strip()]
            kwargs[name] = value
    return kwargs


def exemplar_queries(params: dict[str, Any], dataset: Any) -> list[Any]:
    """The exemplar sets named by ``params["exemplar_sets"]``, loaded from ``dataset``."""
    names = list(params.get("exemplar_sets") or [])
    if not names:
        return []
    from cliprnn.errors import ConfigError
    from cliprnn.fiftyone.exemplar_sets import load_exemplar_set

    if dataset is None:
        raise ConfigError(f"exemplar sets {names} need the dataset that stores them")
    return [load_exemplar_set(dataset, name) for name in names]


#: Said under the progress bar while a run goes on: the App's progress view (FiftyOne's
#: ``set_progress``) always has a "Done" button, which only hides the view.
GOES_ON = " (Done hides this view; the run goes on)"


def _running(progress: Any) -> str:
    """The progress label of an immediate run: the run's own, plus :data:`GOES_ON` until
    the last sample is written."""
    return progress.label if progress.fraction >= 1 else progress.label + GOES_ON


def _summary_message(run: Any) -> str:
    s = run.summary
    failed = f", {s.failed} failed (see field '{run.fields.error}')" if s.failed else ""
    if s.no_queries:
        failed += f", {len(s.no_queries)} skipped (no labels in '{run.queries_from}')"
    if hasattr(s, "frames"):  # a video run
        return (
            f"Segmented {s.frames} frame{'s' * (s.frames != 1)} ({s.labelled_frames}) of "
            f"{s.processed} video{'s' * (s.processed != 1)} into "
            f"'{run.store.path(s.label_field)}'{failed}"
        )
    edit = f"; edit '{run.fields.detections}' in the Annotate tab" if run.fields.detections else ""
    return (
        f"Segmented {s.processed} sample{'s' * (s.processed != 1)} into "
        f"'{s.label_field}'{failed}{edit}"
    )


def _video_inputs(inputs: types.Object) -> None:
    """What a run on videos adds to the form: which frames, and carrying the queries."""
    inputs.view(
        "video_notice",
        types.Notice(
            label="Video: the frames are labelled (frame fields frames.<output field>), "
            "every frame or every k-th one"
        ),
    )
    inputs.int(
        "frame_step",
        default=1,
        min=1,
        label="Label every k-th frame",
        description="1 labels every frame; 3 labels frames 1, 4, 7, ... and leaves the others "
        "empty",
    )
    inputs.bool(
        "carry_queries",
        default=True,
        label="Carry the queries through time",
        description="Start each frame from the classes the previous labelled frame kept "
        "(faster); the full list again every few frames and after a scene cut",
    )


def _query_inputs(ctx, inputs: types.Object) -> None:
    from cliprnn.errors import CaRError
    from cliprnn.fiftyone.queries import class_sources, per_sample_sources, source_classes

    sources = class_sources(ctx.dataset)
    if sources:
        inputs.enum(
            "classes_from",
            [NO_SOURCE, *sources],
            default=NO_SOURCE,
            label="Classes from the dataset",
            description="Use a class list of this dataset as queries",
            view=choices_view(
                types.DropdownView,
                [NO_SOURCE, *sources],
                {NO_SOURCE: "None (free text only)", **sources},
            ),
        )
    spec = ctx.params.get("classes_from")
    spec = None if spec == NO_SOURCE else spec
    if spec:
        try:
            names, _ = source_classes(ctx.dataset, spec)
        except CaRError as e:
            fail(inputs, "classes_error", str(e))
            names = []
        if names:
            inputs.list(
                "classes",
                types.String(),
                default=names,
                label="Classes",
                description="Pre-filled from the dataset; remove the ones to skip",
                view=choices_view(
                    types.AutocompleteView, names, multiple=True, allow_user_input=False
                ),
            )
    own = per_sample_sources(ctx.dataset)
    inputs.enum(
        "queries_from",
        [NO_SOURCE, *own],
        default=NO_SOURCE,
        label="Each sample's own labels",
        description="Query every sample for the labels it already has (image-level labels "
        "become masks), plus the queries above and below",
        view=choices_view(
            types.DropdownView,
            [NO_SOURCE, *own],
            {NO_SOURCE: "None (the same queries for every sample)", "tags": "Sample tags"},
        ),
    )
    per_sample = ctx.params.get("queries_from") not in (None, "", NO_SOURCE)
    pictures = _exemplar_inputs(ctx, inputs)
    chosen = [
        *(ctx.params.get("classes") or []),
        *(ctx.params.get("queries") or []),
        *pictures,
    ]
    has_source = bool(spec and (ctx.params.get("classes") is None or chosen))
    inputs.str(
        "query_text",
        default="",
        required=not (has_source or chosen or per_sample),
        label="Text queries",
        description="One query per line, e.g. 'red circle'",
        view=types.TextFieldView(multiline=True, placeholder="red circle\nblue square"),
    )
    text = ctx.params.get("query_text") or ""
    if text and not text.strip() and not (has_source or chosen or per_sample):
        fail(inputs, "query_text_error", "The text queries are blank: type at least one query")


def _exemplar_inputs(ctx, inputs: types.Object) -> list[str]:
    """The dataset's stored exemplar sets as a multi-select (when it has any); the chosen
    ones, each checked to load (its samples still exist)."""
    from cliprnn.errors import CaRError
    from cliprnn.fiftyone.exemplar_sets import list_exemplar_sets

    from .exemplars import set_label

    sets = list_exemplar_sets(ctx.dataset)
    if not sets:
        return []
    inputs.list(
        "exemplar_sets",
        types.String(),
        default=[],
        label="Exemplar sets",
        description="Classes given by example images (stored with 'Use selection as "
        "exemplars'), beside the text queries",
        view=choices_view(
            types.DropdownView, sets, {n: set_label(n, i) for n, i in sets.items()}, multiple=True
        ),
    )
    chosen = [n for n in ctx.params.get("exemplar_sets") or [] if n]
    try:
        exemplar_queries({"exemplar_sets": chosen}, ctx.dataset)
    except CaRError as e:
        fail(inputs, "exemplar_sets_error", str(e))
    return chosen


def _model_inputs(ctx, inputs: types.Object) -> None:
    from cliprnn.config import PRESETS, VISUAL_PROMPTS, CaRConfig
    from cliprnn.errors import CaRError

    presets = [p for p in PRESET_LABELS if p in PRESETS]
    default_preset = _default_preset(presets)
    inputs.enum(
        "preset",
        presets,
        default=default_preset,
        label="Preset",
        description="Paper settings per dataset; models download on first use",
        view=choices_view(types.DropdownView, presets, PRESET_LABELS),
    )
    inputs.bool("advanced", default=False, label="Advanced settings", view=types.SwitchView())
    inputs.int(
        "batch_size",
        default=_defaults().DEFAULT_BATCH_SIZE,
        min=1,
        label="Batch size",
        description="Samples written to the database together; progress is shown per batch",
    )
    preset = ctx.params.get("preset") or default_preset
    try:
        base = CaRConfig.preset(preset)
    except CaRError as e:
        fail(inputs, "preset_error", str(e))
        return
    if not ctx.params.get("advanced"):
        _check_models(inputs, base)
        return
    for name, (kind, label) in ADVANCED.items():
        default = getattr(base, name)
        if kind == "str":
            inputs.str(name, default=default or "", label=label)
        elif kind == "float":
            inputs.float(name, default=default, min=0.0, max=1.0, label=label)
        elif kind == "bool":
            inputs.bool(name, default=default, label=label)
        elif kind == "prompts":
            inputs.list(
                name,
                types.String(),
                default=list(default),
                label=label,
                view=choices_view(types.DropdownView, VISUAL_PROMPTS, multiple=True),
            )
        elif kind == "words":
            inputs.str(name, default=", ".join(default), label=label)
        elif kind == "mode":
            inputs.enum(
                name,
                ["semantic", "referring"],
                default=default,
                label=label,
                view=types.RadioGroup(),
            )
        elif kind in ENUM_FIELDS:
            choices, note = ENUM_FIELDS[kind]
            inputs.enum(
                name,
                list(choices),
                default=default if default in choices else choices[0],
                label=label,
                description=note,
                view=choices_view(types.DropdownView, list(choices)),
            )
    try:
        kwargs = run_kwargs({**ctx.params, "advanced": True, "exemplar_sets": None})
        overrides = {k: kwargs[k] for k in ADVANCED if k in kwargs}
        if overrides.get("sam_checkpoint"):
            from pathlib import Path

            if not Path(overrides["sam_checkpoint"]).is_file():
                raise CaRError(f"SAM checkpoint {overrides['sam_checkpoint']!r} is not a file")
        config = CaRConfig.preset(preset, **overrides)
    except (CaRError, TypeError, ValueError) as e:
        fail(inputs, "config_error", str(e))
        return
    _check_models(inputs, config)


def _missing_models(config) -> list[str]:
    from cliprnn.clip_backend import model_problem

    found = {
        role: model_problem(getattr(config, f"{role}_model"), role)
        for role in ("proposal", "classifier")
    }
    return list(dict.fromkeys(p for p in found.values() if p))


def _default_preset(presets: list[str]) -> str:
    """The paper's VOC preset when its models can be had here, else the bundled model."""
    from cliprnn.config import CaRConfig

    preset = _defaults().DEFAULT_PRESET
    if "mini" in presets and _missing_models(CaRConfig.preset(preset)):
        return "mini"
    return preset


def _check_models(inputs: types.Object, config) -> None:
    """Refuse, in the form, models that cannot be loaded here (offline and not cached)."""
    problems = _missing_models(config)
    if problems:
        fail(
            inputs,
            "models_error",
            " ".join(problems) + " Choose the preset 'Bundled miniature CLIP' to run offline.",
        )


def _shard_inputs(ctx, inputs: types.Object, count: int) -> None:
    """The "Split into K jobs" field (scheduled runs), and a refusal while a sharded run
    holds the output field."""
    from cliprnn.fiftyone.lock import lock_holder

    if count > 1:
        inputs.int(
            "shards",
            default=1,
            min=1,
            label="Split into K jobs",
            description="When scheduled (Execute menu: Schedule): K delegated operations over "
            "disjoint slices of the target, one per `fiftyone delegated launch` worker you "
            "start. A run executed here is one job",
        )
    field = ctx.params.get("label_field")
    if not field or ctx.dataset is None:
        return
    held = lock_holder(str(ctx.dataset._doc.id), field)
    if held and held.get("run"):
        fail(
            inputs,
            "sharded_run_error",
            f"Field '{field}' belongs to the unfinished sharded run '{held['run']}' "
            f"({held.get('shards')} jobs). Wait for it, or resume or cancel it with "
            "'Resume a sharded segment run'.",
        )


class _FrameFieldsToo:
    """``has_field`` over a video dataset's sample and frame fields (a video run writes
    frame fields and a sample-level error field)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def has_field(self, name: str) -> bool:
        return self.dataset.has_field(name) or self.dataset.has_frame_field(name)


def _output_inputs(ctx, inputs: types.Object, video: bool = False) -> str | None:
    """The output fields of the form; the output field's name when it is usable."""
    from cliprnn.errors import CaRError
    from cliprnn.fiftyone.labels import OUTPUT_TYPES, check_field_name
    from cliprnn.fiftyone.scheduled import TOKEN_PARAM, reserved_fields

    fields = _FrameFieldsToo(ctx.dataset) if video else ctx.dataset
    reserved = reserved_fields(ctx.dataset, except_token=ctx.params.get(TOKEN_PARAM))
    D = _defaults()
    default_field = free_field_name(
        fields, D.DEFAULT_LABEL_FIELD, ("", "_det", "_error"), taken=reserved
    )
    inputs.str("label_field", default=default_field, required=True, label="Output field")
    inputs.list(
        "outputs",
        types.String(),
        default=list(D.DEFAULT_OUTPUTS),
        label="Outputs",
        description="The instance masks (<field>_det) are what the Annotate tab edits",
        view=choices_view(types.DropdownView, OUTPUT_TYPES, OUTPUT_LABELS, multiple=True),
    )
    if "detections" in (ctx.params.get("outputs") or D.DEFAULT_OUTPUTS):
        inputs.enum(
            "instances",
            list(INSTANCE_LABELS),
            default=D.DEFAULT_INSTANCES,
            label="Instances",
            view=choices_view(types.RadioGroup, INSTANCE_LABELS, INSTANCE_LABELS),
        )
    from cliprnn.config import CaRConfig

    inputs.int(
        "min_region_pixels",
        default=CaRConfig().min_region_pixels,
        min=0,
        label="Minimum region size (pixels)",
        description="Smaller regions merge into what surrounds them, in the mask and the "
        "instances alike (0 keeps every region)",
    )
    inputs.str(
        "output_dir",
        default="",
        label="Output directory (optional)",
        description="Absolute folder for mask and heatmap PNGs; masks stay in the "
        "database when empty",
    )
    inputs.bool("overwrite", default=False, label="Overwrite an existing field")
    inputs.bool("skip_existing", default=False, label="Skip samples that already have it")
    inputs.bool("skip_failures", default=False, label="Skip (and record) failing samples")
    output_dir = ctx.params.get("output_dir") or ""
    if isinstance(output_dir, dict):  # the App's file explorer
        output_dir = output_dir.get("absolute_path") or ""
    if output_dir:
        inputs.bool(
            "allow_media_dir",
            default=False,
            label="Allow it inside the images' folders",
            description="Off: a directory inside a folder holding the samples' images is refused",
        )
        problem = output_dir_problem(
            ctx.target_view(), output_dir, bool(ctx.params.get("allow_media_dir"))
        )
        if problem:
            fail(inputs, "output_dir_error", problem)
    field = ctx.params.get("label_field") or default_field
    try:
        check_field_name(field)
    except CaRError as e:
        fail(inputs, "label_field_error", str(e))
        return None
    if field in reserved:
        fail(
            inputs,
            "label_field_error",
            f"Field '{field}' is reserved by {reserved[field]}: choose another output field "
            f"(e.g. '{default_field}'), or wait for that run to finish",
        )
        return None
    if fields.has_field(field):
        msg = f"Field '{field}' exists."
        if ctx.params.get("overwrite") or ctx.params.get("skip_existing"):
            inputs.view("label_field_warning", types.Warning(label=msg))
        else:
            fail(
                inputs,
                "label_field_error",
                f"{msg} Tick 'Overwrite' or 'Skip samples that already have it'.",
            )
    if not ctx.dataset.persistent:
        inputs.view(
            "persistent_notice",
            types.Notice(
                label="This dataset is not persistent: delegated runs of it are lost when the "
                "App closes"
            ),
        )
    return field


def output_dir_problem(view: Any, output_dir: str, allow_media_dir: bool) -> str | None:
    """Why the form cannot use ``output_dir`` for a run over ``view`` (None when it can): not
    absolute, a file, inside the images' folders (unless allowed), or not writable. Creates
    nothing."""
    raw = os.path.expanduser(str(output_dir).strip())
    if not os.path.isabs(raw):
        return f"Output directory must be an absolute path, not {output_dir!r}"
    path = Path(raw).resolve()
    if path.exists() and not path.is_dir():
        return f"Output directory {str(path)!r} is a file, not a folder"
    if not allow_media_dir:
        folders = {Path(p).resolve().parent for p in view.distinct("filepath")}
        for folder in sorted(folders):
            if path == folder or folder in path.parents:
                return (
                    f"Output directory {str(path)!r} is inside the folder {str(folder)!r} that "
                    "holds the images: choose another folder, or tick 'Allow it inside the "
                    "images' folders'"
                )
    existing = path
    while not existing.exists():
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".cliprnn-write-test-"):
            pass
    except OSError as e:
        where = "" if existing == path else f" (its folder {str(existing)!r} refuses files)"
        return f"Output directory {str(path)!r} is not writable{where}: {e.strerror or e}"
    return None


def _writes_text(ctx, field: str, video: bool) -> str:
    """What a run will write, and where: the fields and the target, with counts."""
    from cliprnn.errors import CaRError
    from cliprnn.fiftyone.labels import output_fields

    outputs = [o for o in ctx.params.get("outputs") or _defaults().DEFAULT_OUTPUTS if o]
    try:
        f = output_fields(field, outputs, {})
    except CaRError:
        return f"Writes field '{field}' on {target_text(ctx)}"
    names = [n for n in (f.segmentation, f.detections, f.scores) if n]
    if "heatmaps" in outputs:
        names.append(f"{field}_heat_<query> (one per query)")
    where = "frame fields " if video else "fields "
    listed = ", ".join(f"'{n}'" if "<" not in n else n for n in names)
    note = ""
    if ctx.params.get("skip_existing"):
        note = "; samples that already have it are skipped"
    elif fields_exist(ctx.dataset, field, video) and ctx.params.get("overwrite"):
        note = "; their existing labels there are replaced, other samples keep theirs"
    return (
        f"Writes {where}{listed} (and '{f.error}' for failing samples) on "
        f"{target_text(ctx)}{note}, and the field's classes, colours and run record in the "
        "dataset's settings. Nothing else is changed."
    )


def fields_exist(dataset: Any, field: str, video: bool) -> bool:
    """Whether ``field`` is a (frame) field of ``dataset``."""
    return dataset.has_frame_field(field) if video else dataset.has_field(field)


def _scheduled_inputs(ctx, inputs: types.Object, field: str | None) -> None:
    """What a scheduled run does with the output field, and the dataset's scheduled runs
    that have not finished (state and progress, from their delegated operations)."""
    from cliprnn.fiftyone.scheduled import scheduled_runs

    from .runs import pending_text

    if field:
        inputs.view(
            "schedule_notice",
            types.Notice(
                label=f"Schedule (Execute menu) queues the run for a `fiftyone delegated "
                f"launch` worker and reserves '{field}' for it at once: other runs cannot take "
                "that name meanwhile. When it has finished, opening the dataset in the App "
                "says how it went and shows the field"
            ),
        )
    runs = scheduled_runs(ctx.dataset)
    if runs:
        lines = [f"- {pending_text(r)}" for r in runs]
        inputs.md(
            f"**Scheduled runs of this dataset ({plural(len(runs), 'run')})**\n\n"
            + "\n".join(lines),
            name="scheduled_runs",
        )


__all__ = ["DELEGATE_ABOVE", "Segment", "run_kwargs"]
