"""Where a segmentation run's text queries come from: the dataset's class lists or free text."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fiftyone as fo

from cliprnn.errors import ConfigError, QueryError
from cliprnn.exemplars import Exemplars

#: Label types whose ``label`` attribute can seed a query list.
_LABELLED_TYPES = (
    fo.Classification,
    fo.Classifications,
    fo.Detection,
    fo.Detections,
    fo.Polyline,
    fo.Polylines,
    fo.Keypoint,
    fo.Keypoints,
)

#: Prefixes of a ``classes_from`` spec (besides the two dataset-wide defaults).
SOURCE_KINDS = ("mask_targets", "classes", "labels")


@dataclass
class ResolvedQueries:
    """The queries of a run, and the mask values a class source fixes for some of them."""

    queries: list[str]
    source: str | None = None
    source_values: dict[str, int] = field(default_factory=dict)
    source_names: list[str] = field(default_factory=list)  # the classes taken from ``source``


def clean_queries(queries: Iterable[str]) -> list[str]:
    """Strip each query; drop empty ones and repeats, keeping first-seen order. A query with a
    control character (a NUL byte, a line break inside it) is refused, naming it."""
    out: list[str] = []
    for q in queries:
        if not isinstance(q, str):
            raise QueryError(f"queries must be strings, got {type(q).__name__}: {q!r}")
        q = q.strip()
        if any(unicodedata.category(c) == "Cc" for c in q):
            raise QueryError(f"query {q!r} holds a control character; remove it")
        if q and q not in out:
            out.append(q)
    return out


def _target_names(targets: Mapping) -> dict[str, int | None]:
    """Class name -> integer mask value (None for RGB-keyed targets); value 0 is background."""
    out: dict[str, int | None] = {}
    for key, name in targets.items():
        if not isinstance(name, str) or not name.strip():
            continue
        try:
            value: int | None = int(key)
        except (TypeError, ValueError):
            value = None  # "#rrggbb" keys of RGB masks
        if value == 0:
            continue
        out.setdefault(name.strip(), value)
    return out


def label_fields(collection: fo.core.collections.SampleCollection) -> list[str]:
    """Top-level fields whose labels carry a ``label`` string (Detections, Classifications...)."""
    schema = collection.get_field_schema(embedded_doc_type=_LABELLED_TYPES)
    return sorted(schema)


def class_sources(collection: fo.core.collections.SampleCollection) -> dict[str, str]:
    """The class lists a run can take its queries from: ``classes_from`` spec -> description.

    Cheap: reads only dataset-level settings and the schema, never the samples.
    """
    ds = collection._root_dataset
    out: dict[str, str] = {}
    if ds.default_mask_targets:
        out["default_mask_targets"] = "Default mask targets"
    for name in sorted(ds.mask_targets):
        out[f"mask_targets:{name}"] = f"Mask targets of '{name}'"
    if ds.default_classes:
        out["default_classes"] = "Default classes"
    for name in sorted(ds.classes):
        out[f"classes:{name}"] = f"Classes of '{name}'"
    for name in label_fields(collection):
        out[f"labels:{name}"] = f"Labels found in '{name}'"
    return out


def source_classes(
    collection: fo.core.collections.SampleCollection, spec: str
) -> tuple[list[str], dict[str, int]]:
    """The class names a ``classes_from`` spec names, and their mask values when it fixes them.

    ``spec`` is ``default_mask_targets``, ``default_classes``, ``mask_targets:FIELD``,
    ``classes:FIELD`` or ``labels:FIELD`` (distinct labels of a label field); a bare field name
    means the first of those three that the dataset has for it.
    """
    ds = collection._root_dataset
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"classes_from must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    kind, _, name = spec.partition(":")
    if not name:
        if spec == "default_mask_targets":
            return _mask_target_classes(ds.default_mask_targets, spec)
        if spec == "default_classes":
            return clean_queries(ds.default_classes), {}
        return source_classes(collection, _guess_kind(collection, spec))
    if kind == "mask_targets":
        if name not in ds.mask_targets:
            raise ConfigError(f"classes_from={spec!r}: dataset has no mask_targets for '{name}'")
        return _mask_target_classes(ds.mask_targets[name], spec)
    if kind == "classes":
        if name not in ds.classes:
            raise ConfigError(f"classes_from={spec!r}: dataset has no classes for '{name}'")
        return clean_queries(ds.classes[name]), {}
    if kind == "labels":
        if name not in label_fields(collection):
            raise ConfigError(
                f"classes_from={spec!r}: '{name}' is not a top-level label field with class "
                f"labels; choose from {label_fields(collection)}"
            )
        _, path = collection._get_label_field_path(name, "label")
        return clean_queries(v for v in collection.distinct(path) if isinstance(v, str)), {}
    raise ConfigError(
        f"classes_from={spec!r}: unknown source; use default_mask_targets, default_classes, "
        f"or one of {list(SOURCE_KINDS)} followed by ':FIELD'"
    )


def _guess_kind(collection: fo.core.collections.SampleCollection, name: str) -> str:
    ds = collection._root_dataset
    if name in ds.mask_targets:
        return f"mask_targets:{name}"
    if name in ds.classes:
        return f"classes:{name}"
    if name in label_fields(collection):
        return f"labels:{name}"
    raise ConfigError(
        f"classes_from={name!r}: the dataset has no mask_targets, classes or label field of that "
        f"name; available sources: {sorted(class_sources(collection))}"
    )


def _mask_target_classes(targets: Mapping, spec: str) -> tuple[list[str], dict[str, int]]:
    names = _target_names(targets or {})
    if not names:
        raise ConfigError(f"classes_from={spec!r}: no class names besides background (value 0)")
    return list(names), {n: v for n, v in names.items() if v is not None}


def resolve_queries(
    collection: fo.core.collections.SampleCollection,
    queries: Sequence[str] | str | None = None,
    classes_from: str | None = None,
    classes: Sequence[str] | None = None,
    allow_empty: bool = False,
) -> ResolvedQueries:
    """Combine the classes of ``classes_from`` (first; only those in ``classes`` when given)
    with free-text ``queries``.

    A string ``queries`` is one query per line. Raises QueryError when nothing is left, unless
    ``allow_empty`` (the samples bring queries of their own).
    """
    if isinstance(queries, str):
        queries = queries.splitlines()
    source_names: list[str] = []
    source_values: dict[str, int] = {}
    if classes_from:
        source_names, source_values = source_classes(collection, classes_from)
        if classes is not None:
            chosen = set(clean_queries(classes))
            source_names = [n for n in source_names if n in chosen]
    merged = clean_queries([*source_names, *(queries or [])])
    if not merged and not allow_empty:
        raise QueryError(
            "no queries: give text queries, or a classes_from source with at least one class"
        )
    return ResolvedQueries(merged, classes_from or None, source_values, source_names)


def assign_values(
    queries: Sequence[str],
    source_values: Mapping[str, int] | None = None,
    existing: Mapping[int, str] | None = None,
) -> dict[str, int]:
    """Mask value per query: a source's own value, else the value a field already uses for that
    name, else the smallest free value >= 1. Values never collide; 0 stays background."""
    existing_by_name = {name: int(v) for v, name in (existing or {}).items()}
    taken: dict[int, str] = {int(v): n for v, n in (existing or {}).items()}
    out: dict[str, int] = {}
    pending: list[str] = []
    for q in queries:
        for value in (
            (source_values or {}).get(q),
            existing_by_name.get(q),
        ):
            if value is not None and value > 0 and taken.get(value, q) == q:
                out[q] = value
                taken[value] = q
                break
        else:
            pending.append(q)
    free = 1
    for q in pending:
        while free in taken:
            free += 1
        out[q] = free
        taken[free] = q
    return out


#: Label types whose labels can be a sample's own queries (besides the sample's tags).
PER_SAMPLE_TYPES = (fo.Classification, fo.Classifications, fo.Detections)
TAGS = "tags"


def per_sample_sources(collection: fo.core.collections.SampleCollection) -> list[str]:
    """Fields a run can take each sample's own queries from: ``tags`` and the top-level
    Classification, Classifications and Detections fields."""
    schema = collection.get_field_schema(embedded_doc_type=PER_SAMPLE_TYPES)
    return [TAGS, *sorted(schema)]


def _as_names(value: Any) -> list[str]:
    """Flatten a sample's label values into query strings; None and blanks are dropped,
    numbers become their text."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [n for v in value for n in _as_names(v)]
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, int | float | str):
        text = str(value).strip()
        return [text] if text else []
    raise QueryError(f"a label must be a string, got {type(value).__name__}: {value!r}")


def sample_queries(
    collection: fo.core.collections.SampleCollection, field_name: str
) -> dict[str, list[str]]:
    """Each sample's own queries (sample id -> names, first-seen order) from ``field_name``:
    ``"tags"`` or a Classification, Classifications or Detections field."""
    if field_name != TAGS and field_name not in per_sample_sources(collection):
        raise ConfigError(
            f"queries_from={field_name!r}: not 'tags' nor a Classification, Classifications or "
            f"Detections field; choose from {per_sample_sources(collection)}"
        )
    path = TAGS if field_name == TAGS else collection._get_label_field_path(field_name, "label")[1]
    ids, values = collection.values(["id", path])
    return {sid: clean_queries(_as_names(v)) for sid, v in zip(ids, values, strict=True)}


def check_exemplar_names(
    exemplars: Mapping[str, Exemplars], texts: Sequence[str], where: str
) -> None:
    """QueryError when an exemplar query has the name of a text query from ``where``."""
    folded = {t.casefold() for t in texts}
    clash = [name for name in exemplars if name.casefold() in folded]
    if clash:
        raise QueryError(
            f"exemplar query {clash[0]!r} has the name of a class in {where}; rename the "
            "exemplar set or leave that class out"
        )


def describe_exemplars(exemplars: Exemplars) -> dict[str, Any]:
    """What the run record says of an exemplar query: its size and, for files, where."""
    images = exemplars.images
    paths = [str(i) for i in images] if all(isinstance(i, (str, Path)) for i in images) else None
    return {"images": len(images), "paths": paths, "boxes": exemplars.to_spec()["boxes"]
            if paths else None}  # fmt: skip
