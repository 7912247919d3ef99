"""Make a run's instance field editable in the App's Annotate tab (label schema, active) and
give each class the same colour in the semantic and the instance field; keep the scores
field out of the App's sidebar by default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import fiftyone as fo


def schema_classes(dataset: fo.Dataset, field: str) -> list[str]:
    """The label choices the Annotate tab offers for ``field`` (empty if not in the schema)."""
    schema = dataset.label_schemas.get(field) or {}
    return list(schema.get("classes") or [])


def make_editable(dataset: fo.Dataset, field: str, classes: Sequence[str]) -> None:
    """Put the Detections ``field`` into the dataset's label schema with ``classes`` as its
    label choices (a dropdown, so any class can be chosen, used or not), and activate it.

    An existing schema of the field keeps its attributes and settings; its classes become
    ``classes`` followed by any it had that are not among them.
    """
    schema = dataset.label_schemas.get(field)
    if schema is None:
        schema = dataset.generate_label_schemas(field, scan_samples=False)
    old = [c for c in schema.get("classes") or [] if c not in classes]
    schema["classes"] = [*dict.fromkeys(classes), *old]
    schema["component"] = "dropdown"
    dataset.update_label_schema(field, schema)
    if field not in dataset.active_label_schemas:
        dataset.activate_label_schemas(field)


def set_schema_classes(dataset: fo.Dataset, field: str, classes: Sequence[str]) -> None:
    """Replace the label choices of ``field``'s schema (no-op when it has none)."""
    schema = dataset.label_schemas.get(field)
    if schema is None:
        return
    schema["classes"] = list(dict.fromkeys(classes))
    dataset.update_label_schema(field, schema)


def _palette() -> list[str]:
    return list(fo.app_config.color_pool)


def match_colors(
    dataset: fo.Dataset,
    mask_targets: Mapping[int, str],
    seg_field: str | None,
    det_field: str | None,
) -> None:
    """Colour each class by its mask value, identically in the Segmentation ``seg_field``
    (mask target colours) and the Detections ``det_field`` (colours by label)."""
    pool = _palette()
    targets = {int(v): n for v, n in mask_targets.items() if int(v) != 0}
    colors = {v: pool[(v - 1) % len(pool)] for v in targets}
    scheme = dataset.app_config.color_scheme or fo.ColorScheme()
    entries = [
        dict(e) for e in (scheme.fields or []) if e.get("path") not in (seg_field, det_field)
    ]
    if seg_field:
        entries.append(
            dict(
                path=seg_field,
                maskTargetsColors=[{"intTarget": v, "color": c} for v, c in colors.items()],
            )
        )
    if det_field:
        entries.append(
            dict(
                path=det_field,
                colorByAttribute="label",
                valueColors=[{"value": targets[v], "color": c} for v, c in colors.items()],
            )
        )
    scheme.fields = entries
    if scheme.color_by is None:
        scheme.color_by = "value"
    dataset.app_config.color_scheme = scheme
    dataset.save()


def hide_by_default(dataset: fo.Dataset, path: str) -> None:
    """Leave ``path`` unticked in the App's sidebar by default (a run's scores list every
    query on every thumbnail, dropped ones included), unless the dataset's default already
    lists the fields to show."""
    active = dataset.app_config.active_fields
    if active is not None and not active.exclude:
        return
    paths = list(active.paths) if active is not None else []
    if path not in paths:
        dataset.app_config.active_fields = fo.ActiveFields(exclude=True, paths=[*paths, path])
