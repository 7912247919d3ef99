"""The Segment operator's parameters: form labels, shared defaults, and params -> run options."""

from __future__ import annotations

from typing import Any

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


def config_choices(dataset: Any) -> tuple[list[str], dict[str, str]]:
    """The form's "Preset" choices and their labels: the presets, then the calibrations
    stored on ``dataset`` (value ``calibration:<name>``, see cliprnn.fiftyone.calibration)."""
    from cliprnn.config import PRESETS
    from cliprnn.fiftyone.calibration import PREFIX, list_calibrations

    values = [p for p in PRESET_LABELS if p in PRESETS]
    labels = dict(PRESET_LABELS)
    for name, record in list_calibrations(dataset).items() if dataset is not None else ():
        values.append(PREFIX + name)
        labels[PREFIX + name] = calibration_label(name, record)
    return values, labels


def calibration_label(name: str, record: dict[str, Any]) -> str:
    """How a form names a stored calibration: ``Calibration 'shapes': 41.2 % mIoU (base
    33.0 %), cross-validated on 6 samples of 'ground_truth'``."""
    base = record.get("base") or {}
    preset = base.get("preset") if isinstance(base, dict) else None
    of = f" of preset '{preset}'" if preset else ""
    return (
        f"Calibration '{name}': {record['score']:.1f} % mIoU (base{of} "
        f"{record['base_score']:.1f} %), cross-validated on {record['samples']} samples of "
        f"'{record['gt_field']}'"
    )


def run_defaults() -> Any:
    """:mod:`cliprnn.fiftyone.defaults`, imported when needed: the plugin loads (and its form
    says how to install cliprnn) where cliprnn is missing."""
    from cliprnn.fiftyone import defaults

    return defaults


def shard_count(params: dict[str, Any]) -> int:
    """The form's (or SDK's) "Split into K jobs" value; 1 when absent."""
    from cliprnn.fiftyone.shards import check_shards

    value = params.get("shards")
    return 1 if value in (None, "") else check_shards(int(value))


def run_kwargs(params: dict[str, Any], dataset: Any = None) -> dict[str, Any]:
    """SegmentationRun keyword arguments from the form's (or the SDK's) params; the exemplar
    sets they name are loaded from ``dataset``; what they leave out takes the defaults of
    :mod:`cliprnn.fiftyone.defaults`."""
    D = run_defaults()
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
