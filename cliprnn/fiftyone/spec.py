"""The settings a sharded run fixes once, when planned, and the run each shard rebuilds
from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fiftyone as fo

from cliprnn.config import CaRConfig
from cliprnn.errors import ConfigError
from cliprnn.exemplars import Exemplars
from cliprnn.fiftyone import labels as L
from cliprnn.fiftyone.engine import get_car
from cliprnn.fiftyone.queries import clean_queries, sample_queries
from cliprnn.fiftyone.results import RunSummary
from cliprnn.fiftyone.runs import run_key_for
from cliprnn.fiftyone.stores import SampleFields


def run_spec(run: Any) -> dict[str, Any]:
    """Everything the shards of a sharded ``run`` (a SegmentationRun) must agree on, JSON- and
    BSON-safe (queries may hold dots, so mappings keyed by them are stored as pairs)."""
    if run.store.prefix:
        raise ConfigError(
            "sharded runs split image datasets; run this collection (frame fields) as one job"
        )
    return dict(
        label_field=run.fields.label_field,
        outputs=list(run.outputs),
        config=run.config.to_dict(),
        instances=run.instances,
        queries=list(run.queries),
        shared_queries=list(run.shared_queries),
        exemplars=[e.to_spec() for e in run.exemplars.values()],
        queries_from=run.queries_from,
        classes_from=run.classes_from,
        values=[[q, int(v)] for q, v in run.values.items()],
        mask_targets=[[int(v), q] for v, q in run.mask_targets.items()],
        output_dir=str(run.output_dir) if run.output_dir else None,
        overwrite=run.overwrite,
        skip_existing=run.skip_existing,
        skip_failures=run.skip_failures,
        batch_size=run.batch_size,
        num_workers=run.num_workers,
        prefetch_ahead=run.prefetch_ahead,
    )


def restore_run(
    run: Any, dataset: fo.Dataset, spec: Mapping[str, Any], ids: Sequence[str], load_model: bool
) -> None:
    """Set the attributes of ``run`` (a SegmentationRun not yet initialised) so that it runs
    the settings of ``spec`` (:func:`run_spec`) over the samples ``ids`` of ``dataset``, in
    that order. Samples deleted since are skipped; with ``queries_from`` each sample is
    queried for its own labels now, limited to the planned queries."""
    run.dataset = dataset
    run.collection = dataset
    run.outputs = list(spec["outputs"])
    run.config = config_from_dict(spec["config"])
    run.instances = spec["instances"]
    run.queries_from = spec.get("queries_from") or None
    run.queries = list(spec["queries"])
    run.shared_queries = list(spec["shared_queries"])
    run.exemplars = {e["name"]: Exemplars.from_spec(e) for e in spec.get("exemplars") or []}
    run.classes_from = spec.get("classes_from")
    run.values = {q: int(v) for q, v in spec["values"]}
    run.mask_targets = {int(v): q for v, q in spec["mask_targets"]}
    run.fields = L.output_fields(spec["label_field"], run.outputs, run.values)
    run.dtype = L.mask_dtype(max(run.mask_targets))
    run.overwrite, run.skip_existing = bool(spec["overwrite"]), bool(spec["skip_existing"])
    run.skip_failures = bool(spec["skip_failures"])
    run.batch_size = int(spec["batch_size"])
    run.num_workers = int(spec["num_workers"])
    run.prefetch_ahead = int(spec["prefetch_ahead"])
    run.output_dir = Path(spec["output_dir"]) if spec.get("output_dir") else None
    run.store = run.error_store = SampleFields(dataset)

    ids = list(ids)
    found = dict(zip(*dataset.select(ids).values(["id", "filepath"]), strict=True))
    run.ids = [sid for sid in ids if sid in found]
    run.skipped = len(ids) - len(run.ids)
    run.per_sample = None
    no_queries: list[str] = []
    if run.queries_from:
        own = sample_queries(dataset.select(run.ids), run.queries_from)
        run.per_sample = {
            sid: [q for q in clean_queries([*names, *run.shared_queries]) if q in run.values]
            for sid, names in own.items()
        }
        no_queries = [sid for sid in run.ids if not run.per_sample.get(sid)]
        run.ids = [sid for sid in run.ids if run.per_sample.get(sid)]
        run.skipped += len(no_queries)
    run.paths = [found[sid] for sid in run.ids]
    run.car = get_car(run.config) if load_model else None
    run.summary = RunSummary(
        run.fields.label_field,
        run.fields.all(),
        dict(sorted(run.mask_targets.items())),
        skipped=run.skipped,
        run_key=run_key_for(run.fields.label_field),
        output_dir=str(run.output_dir) if run.output_dir else None,
        no_queries=no_queries,
    )


def config_from_dict(data: Mapping[str, Any]) -> CaRConfig:
    """The CaRConfig that :meth:`CaRConfig.to_dict` wrote (lists back to tuples).

    The bundled miniature CLIP is named by its folder inside the installed package, which
    differs between machines: a path to it that does not exist here is mapped to this
    install's copy (a sharded run planned on one machine runs on others)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    for role in ("proposal", "classifier"):
        name = f"{role}_model"
        path = fields.get(name)
        if isinstance(path, str) and _is_bundled_elsewhere(path, role):
            from cliprnn.assets import mini_model_paths

            fields[name] = str(mini_model_paths()[role == "classifier"])
    return CaRConfig().replace(**fields)


def _is_bundled_elsewhere(path: str, role: str) -> bool:
    p = Path(path)
    return p.is_absolute() and p.parts[-3:] == ("assets", "mini_clip", role) and not p.exists()
