"""Operator ``segment``: run CLIP as RNN on a dataset, a view or selected samples."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .common import (
    DELEGATE_ABOVE,
    cliprnn_missing,
    delegation_inputs,
    execute_from_sdk,
    fail,
    refresh_app,
    requested_delegation,
    touch_notice,
)
from .segment_form import (
    model_inputs,
    output_inputs,
    query_inputs,
    scheduled_inputs,
    shard_inputs,
    video_inputs,
    writes_text,
)
from .segment_params import ADVANCED, NO_SOURCE, run_defaults, run_kwargs, shard_count


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
        query_inputs(ctx, inputs)
        if video:
            video_inputs(inputs)
        model_inputs(ctx, inputs)
        field = output_inputs(ctx, inputs, video)
        delegation_inputs(inputs, count)
        shard_inputs(ctx, inputs, 1 if video else count)  # sharded runs split images
        scheduled_inputs(ctx, inputs, field)
        if field:
            touch_notice(inputs, "writes", writes_text(ctx, field, video))
        del target
        return types.Property(inputs, view=types.View(label="Segment with text (CLIP as RNN)"))

    def resolve_run_name(self, ctx):
        """Called by FiftyOne just before it queues a scheduled run: reserve the output field
        for this run (FieldReservedError, shown in the App, when another run holds it) and
        give the queued operation the reservation's token."""
        from cliprnn.fiftyone.scheduled import TOKEN_PARAM, new_token, reserve_field

        field = ctx.params.get("label_field") or run_defaults().DEFAULT_LABEL_FIELD
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
        field = ctx.params.get("label_field") or run_defaults().DEFAULT_LABEL_FIELD
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
        D = run_defaults()
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


__all__ = ["DELEGATE_ABOVE", "Segment"]
