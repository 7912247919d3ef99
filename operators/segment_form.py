"""The Segment operator's form: queries, models, outputs, sharding and scheduling inputs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import fiftyone.operators.types as types

from .common import (
    choices_view,
    fail,
    free_field_name,
    plural,
    target_text,
)
from .segment_params import (
    ADVANCED,
    ENUM_FIELDS,
    INSTANCE_LABELS,
    NO_SOURCE,
    OUTPUT_LABELS,
    config_choices,
    exemplar_queries,
    run_defaults,
    run_kwargs,
)


def video_inputs(inputs: types.Object) -> None:
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


def query_inputs(ctx, inputs: types.Object) -> None:
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


def preset_input(ctx, inputs: types.Object, label: str, description: str) -> Any | None:
    """The ``preset`` dropdown: the presets and the dataset's stored calibrations. Returns the
    chosen one's CaRConfig, or None (with an error in the form) when it cannot be resolved."""
    from cliprnn.config import PRESETS, CaRConfig
    from cliprnn.errors import CaRError
    from cliprnn.fiftyone.calibration import stored_config

    presets, labels = config_choices(ctx.dataset)
    default_preset = _default_preset([p for p in presets if p in PRESETS])
    inputs.enum(
        "preset",
        presets,
        default=default_preset,
        label=label,
        description=description,
        view=choices_view(types.DropdownView, presets, labels),
    )
    try:
        return CaRConfig.resolve(
            stored_config(ctx.dataset, ctx.params.get("preset") or default_preset)
        )
    except CaRError as e:
        fail(inputs, "preset_error", str(e))
        return None


def model_inputs(ctx, inputs: types.Object) -> None:
    from cliprnn.config import VISUAL_PROMPTS, CaRConfig
    from cliprnn.errors import CaRError

    base = preset_input(
        ctx,
        inputs,
        "Preset",
        "Paper settings per dataset, or a calibration stored by 'Calibrate on labelled "
        "samples'; models download on first use",
    )
    inputs.bool("advanced", default=False, label="Advanced settings", view=types.SwitchView())
    inputs.int(
        "batch_size",
        default=run_defaults().DEFAULT_BATCH_SIZE,
        min=1,
        label="Batch size",
        description="Samples written to the database together; progress is shown per batch",
    )
    if base is None:
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
        config = CaRConfig.resolve(base, **overrides)
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

    preset = run_defaults().DEFAULT_PRESET
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


def shard_inputs(ctx, inputs: types.Object, count: int) -> None:
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


def output_inputs(ctx, inputs: types.Object, video: bool = False) -> str | None:
    """The output fields of the form; the output field's name when it is usable."""
    from cliprnn.errors import CaRError
    from cliprnn.fiftyone.labels import OUTPUT_TYPES, check_field_name
    from cliprnn.fiftyone.scheduled import TOKEN_PARAM, reserved_fields

    fields = _FrameFieldsToo(ctx.dataset) if video else ctx.dataset
    reserved = reserved_fields(ctx.dataset, except_token=ctx.params.get(TOKEN_PARAM))
    D = run_defaults()
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


def writes_text(ctx, field: str, video: bool) -> str:
    """What a run will write, and where: the fields and the target, with counts."""
    from cliprnn.errors import CaRError
    from cliprnn.fiftyone.labels import output_fields

    outputs = [o for o in ctx.params.get("outputs") or run_defaults().DEFAULT_OUTPUTS if o]
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


def scheduled_inputs(ctx, inputs: types.Object, field: str | None) -> None:
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
