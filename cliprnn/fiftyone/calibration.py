"""Calibrate CaR on a view's labelled samples, and keep the result with the dataset.

:func:`calibrate_view` reads a ``Segmentation`` ground-truth field (masks in the database or
``mask_path`` files, class names from the field's mask targets), runs the engine's
:func:`cliprnn.calibration.calibrate` and stores what it found under a name;
:func:`calibration_config` gives it back as a configuration for segment runs, which also
take ``config="calibration:<name>"`` (:func:`stored_config`).

A calibration is stored as a FiftyOne **custom run** of the dataset (run key
``cliprnn_calibration_<name>``, method ``cliprnn.calibrate``), not in ``dataset.info`` or an
execution store, because a run is FiftyOne's own per-dataset record of a computation over
some of its samples: it lives in the database (it survives restarts), ``dataset.list_runs()``
and ``get_run_info()`` show it beside the segment runs' records, it remembers the view it was
computed on (``load_run_view``), it is deleted with the dataset and copied by ``clone()``.
Its config, a small document read with the dataset, holds the summary the forms list (scores,
chosen values, the configuration to segment with); its results, kept in GridFS beyond the
16 MB document cap, hold the full record: the search space, every candidate's score, the
curves and the sample ids. Writes hold the dataset-document lock
(:func:`cliprnn.fiftyone.lock.dataset_edit`, which reloads the dataset first), so a stale
dataset object never writes over another process's records; reads reload the dataset's
document, so a calibration another process stored (the App server, a delegated worker) shows
at once.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import fiftyone as fo
import numpy as np

from cliprnn.calibration.result import jsonable
from cliprnn.calibration.targets import norm_name
from cliprnn.config import DEFAULT_PRESET, CaRConfig, ConfigLike
from cliprnn.errors import CaRError

if TYPE_CHECKING:
    from cliprnn.calibration import CalibrationResult, LabelledImage

#: A FiftyOne dataset or view (``fo.core.collections.SampleCollection``; FiftyOne has no types).
SampleCollection: TypeAlias = Any

#: Method name of the calibration run records.
METHOD = "cliprnn.calibrate"
#: Run key of the calibration ``name``: this prefix + name.
RUN_PREFIX = "cliprnn_calibration_"
#: A segment run's ``config="calibration:<name>"`` names a stored calibration.
PREFIX = "calibration:"
#: Format of a stored record.
VERSION = 1
#: Samples an error message names before "and N more".
SHOW = 5
_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")

__all__ = [
    "METHOD",
    "PREFIX",
    "calibrate_view",
    "calibration_config",
    "calibration_config_object",
    "calibration_record",
    "check_calibration_name",
    "delete_calibration",
    "free_calibration_name",
    "ground_truth_fields",
    "ground_truth_targets",
    "labelled_images",
    "list_calibrations",
    "load_calibration",
    "stored_config",
]


def _error(message: str) -> CaRError:
    from cliprnn.calibration import CalibrationError

    return CalibrationError(message)


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - SHOW} more" if len(names) > SHOW else ""
    return ", ".join(names[:SHOW]) + more


# ------------------------------------------------------------------------- ground truth
def ground_truth_fields(collection: SampleCollection) -> list[str]:
    """Top-level ``Segmentation`` fields of ``collection`` (where ground truth can be)."""
    return sorted(collection.get_field_schema(embedded_doc_type=fo.Segmentation))


def ground_truth_targets(collection: SampleCollection, gt_field: str) -> dict[int, str]:
    """Label value -> class name of the ground-truth field ``gt_field``: the dataset's mask
    targets for that field, else its default mask targets. Value 0 is background whether or
    not it is named.

    Raises CalibrationError when ``gt_field`` is not a Segmentation field, or has no integer
    mask targets (the names are what calibration scores queries against)."""
    ds = collection._root_dataset
    fields = ground_truth_fields(collection)
    if gt_field not in fields:
        raise _error(
            f"ground-truth field {gt_field!r} is not a Segmentation field of dataset "
            f"'{ds.name}'; its Segmentation fields: {fields or 'none'}"
        )
    targets = ds.mask_targets.get(gt_field) or ds.default_mask_targets or {}
    out: dict[int, str] = {}
    for key, name in targets.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise _error(
                f"ground-truth field '{gt_field}' has RGB mask targets ({key!r}); calibration "
                "needs integer label maps with integer mask targets"
            ) from None
        out[value] = str(name)
    if not {v: n for v, n in out.items() if v != 0}:
        raise _error(
            f"ground-truth field '{gt_field}' has no mask targets: name its label values, e.g. "
            f"dataset.mask_targets['{gt_field}'] = {{1: 'cat', 2: 'dog'}}; dataset.save() "
            "(calibration scores each query against the class of the same name)"
        )
    return out


def _sample_name(sid: str, path: str) -> str:
    return f"sample {sid} ({path})"


def labelled_images(
    collection: SampleCollection,
    gt_field: str,
    targets: Mapping[int, str] | None = None,
    ignore_values: Sequence[int] = (255,),
) -> tuple[list[LabelledImage], list[str]]:
    """The samples of ``collection`` as the engine's labelled images (the image file, the
    ground-truth label map from ``mask`` or ``mask_path``, a name giving the sample's id and
    file), and their sample ids.

    Raises CalibrationError naming the samples without ground truth, a mask that cannot be
    read or is not a label map, and a sample whose mask holds values its mask targets (or
    ``ignore_values``) do not name."""
    from cliprnn.calibration import LabelledImage

    targets = dict(ground_truth_targets(collection, gt_field) if targets is None else targets)
    ids, paths, labels = collection.values(["id", "filepath", gt_field])
    if not ids:
        raise _error("no samples to calibrate on: select labelled samples")
    missing = [_sample_name(s, p) for s, p, g in zip(ids, paths, labels, strict=True) if g is None]
    if missing:
        raise _error(
            f"{len(missing)} of the {len(ids)} samples have no ground truth in '{gt_field}': "
            f"{_listed(missing)}. Calibrate on labelled samples only (e.g. "
            f"view.exists('{gt_field}'))"
        )
    known = {0, *targets, *(int(v) for v in ignore_values)}
    images = []
    for sid, path, label in zip(ids, paths, labels, strict=True):
        name = _sample_name(sid, path)
        try:
            mask = label.get_mask()
        except Exception as e:  # a missing or unreadable mask_path
            raise _error(f"{name}: cannot read its ground-truth mask: {e}") from e
        if mask is None:
            raise _error(f"{name}: its '{gt_field}' label has neither a mask nor a mask_path")
        mask = np.asarray(mask)
        if mask.dtype == bool:
            mask = mask.astype(np.uint8)
        if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            raise _error(
                f"{name}: its '{gt_field}' mask is {mask.dtype} {tuple(mask.shape)}, not an "
                "integer label map [H, W]"
            )
        unknown = sorted(int(v) for v in np.unique(mask) if int(v) not in known)
        if unknown:
            raise _error(
                f"{name}: its '{gt_field}' mask holds values {unknown[:10]} that the field's "
                f"mask targets do not name (named: {sorted(targets)}); add them to "
                f"dataset.mask_targets['{gt_field}']"
            )
        images.append(LabelledImage(image=path, ground_truth=mask, name=name))
    return images, list(ids)


def _queries(
    collection: SampleCollection,
    gt_field: str,
    targets: Mapping[int, str],
    queries: Sequence[str] | str | None,
    classes_from: str | None,
    classes: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    """The queries to calibrate for, and the ground-truth classes left out of them (extra
    background words)."""
    from cliprnn.fiftyone.queries import clean_queries, resolve_queries

    gt_names = clean_queries(n for v, n in sorted(targets.items()) if v != 0)
    if queries is None and classes_from is None:
        chosen = gt_names
        if classes is not None:
            wanted = {norm_name(c) for c in classes}
            chosen = [n for n in gt_names if norm_name(n) in wanted]
    else:
        chosen = resolve_queries(collection, queries, classes_from, classes).queries
    asked = {norm_name(q) for q in chosen}
    if not asked & {norm_name(n) for n in gt_names}:
        raise _error(
            f"none of the queries {_listed(chosen) or '(none)'} names a class of the ground "
            f"truth '{gt_field}' (its classes: {_listed(gt_names)}): calibration scores each "
            "query against the ground-truth class of the same name"
        )
    return chosen, [n for n in gt_names if norm_name(n) not in asked]


# ------------------------------------------------------------------------------ names
def _key(name: str) -> str:
    return RUN_PREFIX + name


def check_calibration_name(name: Any) -> str:
    """``name`` stripped; CalibrationError unless it is 1-64 letters, digits or underscores
    (it becomes part of a FiftyOne run key)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name.strip()):
        raise _error(f"a calibration name is 1-64 letters, digits or underscores, got {name!r}")
    return name.strip()


def free_calibration_name(dataset: SampleCollection, base: str = "calibration") -> str:
    """``base``, ``base_2``, ... : the first name no stored calibration of ``dataset`` has."""
    taken = set(list_calibrations(dataset))
    n = 1
    while (name := base if n == 1 else f"{base}_{n}") in taken:
        n += 1
    return name


# ------------------------------------------------------------------------------ configs
def _config_mapping(dataset: SampleCollection, config: ConfigLike) -> dict[str, Any]:
    """``config`` as a mapping :meth:`CaRConfig.resolve` takes: a preset name stays a
    ``{"preset": ...}`` (so the bundled model's folder is found anew on every machine), a
    stored calibration becomes its own mapping, a CaRConfig every field."""
    config = stored_config(dataset, config)
    if config is None:
        return {"preset": DEFAULT_PRESET}
    if isinstance(config, str):
        return {"preset": config}
    if isinstance(config, CaRConfig):
        out = config.to_dict()
        out.pop("extras", None)
        return out
    return dict(jsonable(config))


def _resolve_mapping(mapping: Mapping[str, Any]) -> CaRConfig:
    """The CaRConfig of a stored mapping; a full field dict (no preset) has the bundled
    model's folder mapped to this install's (as a sharded run's spec does)."""
    if "preset" in mapping:
        return CaRConfig.resolve(mapping)
    from cliprnn.fiftyone.spec import config_from_dict

    return config_from_dict(mapping)


def stored_config(dataset: SampleCollection, config: Any) -> Any:
    """``config``, with ``"calibration:<name>"`` replaced by the stored calibration's
    configuration (:func:`calibration_config_object`); anything else is returned as it is."""
    if isinstance(config, str) and config.startswith(PREFIX):
        return calibration_config_object(dataset, config[len(PREFIX) :].strip())
    return config


# ------------------------------------------------------------------------------ calibrate
def calibrate_view(
    view: SampleCollection,
    gt_field: str,
    queries: Sequence[str] | str | None = None,
    *,
    classes_from: str | None = None,
    classes: Sequence[str] | None = None,
    config: ConfigLike = None,
    budget: int = 150,
    folds: int = 5,
    seed: int = 0,
    min_gain_se: float = 1.0,
    name: str | None = None,
    overwrite: bool = False,
    ignore_values: Sequence[int] = (255,),
    space: Any = None,
    progress: Callable[[float, str], Any] | None = None,
) -> CalibrationResult:
    """Calibrate CaR on the labelled samples of ``view`` and store the result on its dataset
    as the calibration ``name`` (default: the first free ``calibration``, ``calibration_2``...).

    ``gt_field`` is a Segmentation field whose mask targets name its label values (0 is
    background). The queries are the ground truth's class names by default (only those in
    ``classes`` when given); ``queries`` (free text) and ``classes_from`` (a class list of the
    dataset, as segment runs take it) choose others instead. Ground-truth classes that are
    not queried join the search's background words. ``config`` is the base configuration
    (a preset name, a mapping with ``"preset"``, a CaRConfig, or ``"calibration:<name>"``;
    default the ``"voc"`` preset); ``budget``, ``folds``, ``seed``, ``min_gain_se``,
    ``ignore_values`` and ``space`` (a :class:`cliprnn.calibration.SearchSpace`, default
    around the base with the unqueried classes as extra background words) go to
    :func:`cliprnn.calibration.calibrate`.
    ``progress(fraction, label)`` is called as the work goes on.

    Returns the :class:`~cliprnn.calibration.CalibrationResult`; segment with
    ``config="calibration:<name>"`` or :func:`calibration_config`. A name already stored
    raises CalibrationError unless ``overwrite``. Every mask is read (and checked) before the
    models load; the errors name the samples at fault.
    """
    from cliprnn.calibration import SearchSpace, calibrate
    from cliprnn.fiftyone.engine import get_car

    def report(fraction: float, label: str) -> None:
        if progress is not None:
            progress(fraction, label)

    dataset = view._root_dataset
    name = check_calibration_name(name) if name is not None else free_calibration_name(dataset)
    if not overwrite and name in list_calibrations(dataset):
        raise _error(
            f"dataset '{dataset.name}' already has a calibration '{name}'; choose another name "
            "or overwrite it"
        )
    targets = ground_truth_targets(view, gt_field)
    chosen, extra = _queries(view, gt_field, targets, queries, classes_from, classes)
    base_mapping = _config_mapping(dataset, config)
    base = _resolve_mapping(base_mapping)
    report(0.0, f"Reading the ground truth of {len(view)} samples")
    samples, ids = labelled_images(view, gt_field, targets, ignore_values)
    report(0.02, "Loading the models")
    car = get_car(base)
    search = space if space is not None else SearchSpace.default(base, extra_background=extra)

    def step(fraction: float, label: str) -> None:
        report(0.03 + 0.95 * fraction, label)

    # The engine cache keys models by the fields labels alone depend on (its CaR may hold
    # other values of them): the calibrated configuration is the base one with the chosen
    # values, whatever engine computed it.
    result = calibrate(
        car,
        samples,
        chosen,
        targets,
        space=search,
        budget=budget,
        folds=folds,
        seed=seed,
        min_gain_se=min_gain_se,
        ignore_values=tuple(ignore_values),
        progress=step,
    )
    result.config = base.replace(**{k: getattr(result.config, k) for k in result.overrides})
    report(0.99, f"Storing the calibration '{name}'")
    _store(view, name, gt_field, chosen, extra, targets, base_mapping, result, ids)
    report(1.0, f"Stored the calibration '{name}'")
    return result


def _segment_mapping(base_mapping: Mapping[str, Any], tuned: CaRConfig) -> dict[str, Any]:
    """What to segment with: the base mapping with the chosen values over it; every field
    when that would not give exactly ``tuned``."""
    base = _resolve_mapping(base_mapping)
    changed = {k: v for k, v in tuned.to_dict().items() if getattr(base, k) != getattr(tuned, k)}
    mapping = {**base_mapping, **changed}
    if _resolve_mapping(mapping) == tuned:
        return mapping
    full = tuned.to_dict()
    full.pop("extras", None)
    return full


def _summary(result: CalibrationResult) -> dict[str, Any]:
    """The result's numbers (what the forms and tables show), JSON-able."""
    return jsonable(
        dict(
            overrides=result.overrides,
            kept_base=result.kept_base,
            score=result.score,
            score_interval=list(result.score_interval),
            base_score=result.base_score,
            base_interval=list(result.base_interval),
            gain=result.gain,
            gain_interval=list(result.gain_interval),
            fit_score=result.fit_score,
            samples=result.samples,
            folds=result.folds,
            seed=result.seed,
            budget=getattr(result, "budget", None),
            candidates=len(result.candidates),
            passes_computed=result.passes_computed,
            passes_requested=result.passes_requested,
            naive_grid_passes=result.naive_grid_passes,
            seconds=result.seconds,
        )
    )


def _store(
    view: SampleCollection,
    name: str,
    gt_field: str,
    queries: list[str],
    extra_background: list[str],
    targets: Mapping[int, str],
    base_mapping: dict[str, Any],
    result: CalibrationResult,
    ids: list[str],
) -> None:
    from cliprnn.fiftyone.lock import dataset_edit
    from cliprnn.fiftyone.runs import _version

    key = _key(name)
    record = dict(
        method=METHOD,
        version=VERSION,
        cliprnn_version=_version(),
        name=name,
        # dt.timezone.utc: Python 3.10 (the oldest supported; mypy checks for it) has no dt.UTC
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        gt_field=gt_field,
        queries=list(queries),
        extra_background=list(extra_background),
        targets=[[int(v), n] for v, n in sorted(targets.items())],
        base=base_mapping,
        config=_segment_mapping(base_mapping, result.config),
        **_summary(result),
    )
    with dataset_edit(view._root_dataset):
        view.register_run(key, view.init_run(**record), overwrite=True, cleanup=False)
        results = view.init_run_results(key, result=result.to_dict(), sample_ids=list(ids))
        view.save_run_results(key, results, overwrite=True, cache=False)


# ------------------------------------------------------------------------------ stored
def _records(dataset: SampleCollection) -> dict[str, dict[str, Any]]:
    """The calibration run records of the dataset, read fresh: another process (a delegated
    worker, the App server) may have stored or deleted one since this dataset object loaded
    its document."""
    root = dataset._root_dataset
    root.reload()
    out = {}
    for key in root.list_runs():
        if not key.startswith(RUN_PREFIX):
            continue
        config = root.get_run_info(key).config
        if getattr(config, "method", None) != METHOD:
            continue
        record = config.serialize()
        out[record.get("name") or key[len(RUN_PREFIX) :]] = record
    return dict(sorted(out.items(), key=lambda kv: kv[0].casefold()))


def _unknown(name: str, dataset: SampleCollection) -> CaRError:
    names = ", ".join(f"'{n}'" for n in list_calibrations(dataset)) or "none"
    return _error(
        f"dataset '{dataset._root_dataset.name}' has no calibration '{name}'; its "
        f"calibrations: {names}"
    )


def list_calibrations(dataset: SampleCollection) -> dict[str, dict[str, Any]]:
    """The stored calibrations of ``dataset`` by name (sorted): each one's summary record:
    ``gt_field``, ``queries``, ``base`` (the base configuration mapping), ``config`` (the
    mapping to segment with), ``overrides`` (the chosen values), ``kept_base``, ``score`` and
    ``score_interval`` (cross-validated mIoU, %), ``base_score``, ``base_interval``,
    ``gain``, ``gain_interval``, ``fit_score``, ``samples``, ``folds``, ``seed``,
    ``candidates``, the pass counts, ``seconds`` and ``created_at``."""
    return {
        name: {k: v for k, v in rec.items() if k not in ("cls", "type", "method")}
        for name, rec in _records(dataset).items()
    }


def calibration_record(dataset: SampleCollection, name: str) -> dict[str, Any]:
    """The full stored record of the calibration ``name``: its :func:`list_calibrations`
    summary plus ``result`` (:meth:`CalibrationResult.to_dict`: the search space, every
    candidate's score, the curves) and ``sample_ids`` (the samples it was calibrated on)."""
    root = dataset._root_dataset
    records = list_calibrations(root)
    if name not in records:
        raise _unknown(name, root)
    results = root.load_run_results(_key(name), cache=False, load_view=False)
    return {
        **records[name],
        "result": dict(getattr(results, "result", None) or {}),
        "sample_ids": list(getattr(results, "sample_ids", None) or []),
    }


def load_calibration(dataset: SampleCollection, name: str) -> CalibrationResult:
    """The stored calibration ``name`` as a :class:`~cliprnn.calibration.CalibrationResult`."""
    from cliprnn.calibration import CalibrationResult

    result = CalibrationResult.from_dict(calibration_record(dataset, name)["result"])
    result.config = calibration_config_object(dataset, name)
    return result


def calibration_config(dataset: SampleCollection, name: str) -> dict[str, Any]:
    """The configuration the calibration ``name`` chose, as a mapping of CaRConfig fields
    with its base ``"preset"`` (:meth:`CaRConfig.resolve` takes it; so do segment runs'
    ``config`` and the operator's SDK call). Raises CalibrationError listing the dataset's
    calibrations when ``name`` is unknown."""
    records = list_calibrations(dataset)
    if name not in records:
        raise _unknown(name, dataset)
    return dict(records[name]["config"])


def calibration_config_object(dataset: SampleCollection, name: str) -> CaRConfig:
    """:func:`calibration_config` as a CaRConfig (the bundled model found on this machine)."""
    return _resolve_mapping(calibration_config(dataset, name))


def delete_calibration(dataset: SampleCollection, name: str) -> None:
    """Delete the stored calibration ``name`` (CalibrationError listing the others if
    unknown); labels segmented with it stay."""
    from cliprnn.fiftyone.lock import dataset_edit

    root = dataset._root_dataset
    if name not in list_calibrations(root):
        raise _unknown(name, root)
    with dataset_edit(root):
        root.delete_run(_key(name))
