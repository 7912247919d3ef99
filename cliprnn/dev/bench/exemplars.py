"""Exemplar-query benchmark: every class queried by K example crops instead of its name.

Exemplar crops come from training scenes (seeds below 1,000,000), never from the held-out scenes
that are scored. Runs: text queries (the preset as it is, and in clean mode, the mode exemplar
queries run in), all classes by K exemplars, a mixed run (every other class by text), and a
class no caption of the miniature CLIP ever named (a teal crescent the generator adds to half
the scenes) queried by its name and by exemplars.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from cliprnn.config import CaRConfig
from cliprnn.dev.bench.accuracy import (
    BOOTSTRAP,
    DEFAULT_SEEDS,
    SplitScore,
    describe_seeds,
)
from cliprnn.dev.scenes import (
    CLASSES,
    DEFAULT_SIZE,
    Scene,
    SceneObject,
    _visible_bbox,
    generate_scene,
)
from cliprnn.exemplars import Exemplars

#: Training seeds the exemplar crops are taken from (first objects of each class, in order).
EXEMPLAR_SEEDS = range(500_000, 560_000)
#: Training seeds the calibration is fitted on (other scenes than the exemplars').
CALIBRATION_SEEDS = range(600_000, 600_120)
#: An exemplar is an object with at least this many visible pixels.
MIN_EXEMPLAR_PIXELS = 150
#: Exemplars per class of the mixed run and of the calibration.
DEFAULT_K = 3

#: The class no caption names: its words and its colour (RGB), drawn as a crescent.
NOVEL_NAME = "teal crescent"
NOVEL_RGB = (20, 170, 160)
_NOVEL_SALT = 7_919


def novel_scene(seed: int, size: tuple[int, int] = DEFAULT_SIZE) -> Scene:
    """``generate_scene(seed)`` plus, in about half the seeds, a teal crescent (label 25).

    The crescent goes where every earlier object keeps at least 40 % of its pixels.
    """
    scene = generate_scene(seed, size)
    rng = np.random.default_rng([seed, _NOVEL_SALT])
    if rng.random() < 0.5:
        return scene
    h, w = scene.label_map.shape
    value = len(CLASSES) + 1
    for _attempt in range(8):
        r = min(h, w) * rng.uniform(0.1, 0.22)
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        angle = rng.uniform(0, 2 * np.pi)
        mask = np.zeros((h, w), np.uint8)
        cv2.circle(mask, (round(cx), round(cy)), round(r), 1, -1)
        dx, dy = 0.5 * r * np.cos(angle), 0.5 * r * np.sin(angle)
        cv2.circle(mask, (round(cx + dx), round(cy + dy)), round(0.85 * r), 0, -1)
        inside = mask.astype(bool)
        if inside.sum() < MIN_EXEMPLAR_PIXELS // 2:
            continue
        if any((scene.label_map[~inside] == o.class_index + 1).sum() < 0.4 * o.pixels
               for o in scene.objects):  # fmt: skip
            continue
        image = scene.image.copy()
        noise = rng.normal(0, 3, size=(int(inside.sum()), 3))
        image[inside] = np.clip(np.asarray(NOVEL_RGB) + noise, 0, 255).astype(np.uint8)
        labels = scene.label_map.copy()
        labels[inside] = value
        objects = [
            SceneObject(lv - 1, int((labels == lv).sum()), _visible_bbox(labels == lv))
            for lv in (*(o.class_index + 1 for o in scene.objects), value)
        ]
        return Scene(seed, image, labels, scene.stuff, objects)
    return scene


def _present(scene: Scene) -> set[str]:
    labels = (*CLASSES, NOVEL_NAME)
    return {labels[o.class_index] for o in scene.objects}


def class_exemplars(
    k: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    seeds: Iterable[int] = EXEMPLAR_SEEDS,
    novel: bool = False,
) -> dict[str, Exemplars]:
    """K exemplars per class (and of the novel class with ``novel``) from training scenes.

    Each exemplar is a scene image with the object's relative box, the first ``k`` objects of
    the class with at least ``MIN_EXEMPLAR_PIXELS`` visible pixels, in seed order.
    """
    names = (*CLASSES, NOVEL_NAME)
    found: dict[int, list[tuple[np.ndarray, list[float]]]] = {i: [] for i in range(len(CLASSES))}
    scans = [(generate_scene, range(len(CLASSES)))]
    if novel:  # the novel class's exemplars from the scenes that add it
        found[len(CLASSES)] = []
        scans.append((novel_scene, range(len(CLASSES), len(CLASSES) + 1)))
    for make, wanted in scans:
        for seed in seeds:
            scene = make(seed, size)
            h, w = scene.label_map.shape
            for o in scene.objects:
                usable = o.class_index in wanted and o.pixels >= MIN_EXEMPLAR_PIXELS
                if usable and len(found[o.class_index]) < k:
                    x0, y0, x1, y1 = o.bbox
                    box = [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]
                    found[o.class_index].append((scene.image, box))
            if all(len(found[i]) >= k for i in wanted):
                break
    short = [names[i] for i, v in found.items() if len(v) < k]
    if short:
        raise ValueError(f"fewer than {k} exemplars in the exemplar seeds for {short}")
    return {
        names[i]: Exemplars(names[i], tuple(im for im, _ in v), tuple(b for _, b in v))
        for i, v in found.items()
    }


def fit_calibration(
    config: CaRConfig | None = None,
    k: int = DEFAULT_K,
    seeds: Iterable[int] = CALIBRATION_SEEDS,
) -> dict[str, tuple[float, float]]:
    """(a, b) per CLIP role mapping exemplar cosines onto the text cosines' scale.

    For each role, the mean cosine of matching pairs and of non-matching pairs is measured for
    text queries and for K-exemplar queries on training scenes (classifier: each object's
    prompted image, as the recurrence draws it from its true mask; CAM head: the whole scene,
    a class matching when the scene shows it); (a, b) maps the exemplar means onto the text
    means. Returns ``{"exemplar_cam_calibration": (a, b), "exemplar_classifier_calibration":
    (a, b)}``, ready for ``CaRConfig.replace``.
    """
    import torch

    from cliprnn.car import CaR
    from cliprnn.exemplars import exemplar_embedding
    from cliprnn.visual_prompts import apply_visual_prompts

    config = (config or CaRConfig.preset("mini")).replace(faithful=False)
    car = CaR(config).load()
    cls_backend, cam_backend = car.classifier_backend, car.proposal_backend
    exemplars = class_exemplars(k)
    names = list(CLASSES)
    cls_columns = {
        "text": car.classifier.ensemble_text_features(names),
        "exemplars": torch.stack([exemplar_embedding(cls_backend, exemplars[n], "cls", config)
                                  for n in names]),
    }  # fmt: skip
    cam_text = cam_backend.encode_text([config.cam_template.format(n) for n in names])
    cam_columns = {
        "text": cam_text / cam_text.norm(dim=-1, keepdim=True),
        "exemplars": torch.stack(
            [exemplar_embedding(cam_backend, exemplars[n], "patch_mean") for n in names]
        ),
    }
    sums = {(role, kind): np.zeros(4) for role in ("cam", "cls") for kind in cls_columns}

    def add(role: str, feature: torch.Tensor, positive: np.ndarray) -> None:
        columns = cls_columns if role == "cls" else cam_columns
        for kind, matrix in columns.items():
            cos = (matrix.float().cpu() @ feature.float().cpu()).numpy()
            acc = sums[(role, kind)]
            acc += (cos[positive].sum(), positive.sum(), cos[~positive].sum(), (~positive).sum())

    for seed in seeds:
        scene = generate_scene(seed)
        positive = np.zeros(len(names), bool)
        positive[scene.present] = True
        add("cam", cam_backend.patch_mean_embeddings(
            cam_backend.cam_input(scene.image, cam_backend.patch_size))[0], positive)  # fmt: skip
        for o in scene.objects:
            prompted = apply_visual_prompts(
                scene.image, scene.mask(o.class_index).astype(np.float32),
                config.visual_prompts, config.mask_threshold, faithful=False,
            )  # fmt: skip
            pixels = cls_backend.classifier_input([prompted], crop=config.classifier_crop)
            own = np.zeros(len(names), bool)
            own[o.class_index] = True
            add("cls", cls_backend.image_embeddings(pixels, truncated=False)[0], own)
    out = {}
    for role, key in (("cam", "exemplar_cam_calibration"),
                      ("cls", "exemplar_classifier_calibration")):  # fmt: skip
        t, z = sums[(role, "text")], sums[(role, "exemplars")]
        t_pos, t_neg, z_pos, z_neg = t[0] / t[1], t[2] / t[3], z[0] / z[1], z[2] / z[3]
        a = (t_pos - t_neg) / (z_pos - z_neg)
        out[key] = (round(float(a), 4), round(float(t_neg - a * z_neg), 4))
    return out


def run_exemplar_benchmark(
    ks: Sequence[int] = (1, 3, 10),
    seeds: Iterable[int] = DEFAULT_SEEDS,
    config: CaRConfig | None = None,
    mixed_k: int = DEFAULT_K,
    novel: bool = True,
    resamples: int = BOOTSTRAP,
    progress: Callable[[int, int], None] | None = None,
    rows: Iterable[str] | None = None,
) -> dict[str, Any]:
    """mIoU (in %, 95 % bootstrap intervals) and keep rates of text and exemplar queries.

    Rows: ``text`` (the preset), ``text_clean`` (clean mode, where exemplar queries run),
    ``exemplars_<K>`` for every K, ``mixed`` (even-indexed classes by text, the others by
    ``mixed_k`` exemplars), and with ``novel`` the scenes with the unseen class queried with
    ``novel_text`` (its name) and ``novel_exemplars`` (``mixed_k`` exemplars), each reporting
    the unseen class's IoU and keep rates. Every row has the accuracy benchmark's keys
    (``<row>_miou``, ``_miou_ci``, ``_absent_dropped``, ``_present_kept``, ``_mean_steps``) and
    ``<row>_seconds_per_image``. ``rows`` limits the runs (for tuning).
    """
    from cliprnn.car import CaR

    seeds = list(seeds)
    config = config if config is not None else CaRConfig.preset("mini")
    start = time.perf_counter()
    base = CaR(config)
    clean = base.sharing_models(faithful=False)
    names = list(CLASSES)
    per_k = {k: class_exemplars(k, novel=novel) for k in sorted({*ks, mixed_k})}
    runs: dict[str, tuple[Any, list[Any], bool]] = {
        "text": (base, names, False),
        "text_clean": (clean, names, False),
    }
    for k in ks:
        runs[f"exemplars_{k}"] = (clean, [per_k[k][n] for n in names], False)
    runs["mixed"] = (clean, [n if i % 2 == 0 else per_k[mixed_k][n]
                             for i, n in enumerate(names)], False)  # fmt: skip
    if novel:
        runs["novel_text"] = (clean, [*names, NOVEL_NAME], True)
        runs["novel_exemplars"] = (clean, [*names, per_k[mixed_k][NOVEL_NAME]], True)
    if rows is not None:
        wanted = set(rows)
        runs = {name: run for name, run in runs.items() if name in wanted}
    labels = ("background", *CLASSES, NOVEL_NAME)
    scores = {name: SplitScore(len(seeds), labels) for name in runs}
    novel_counts = {name: np.zeros(4, np.int64) for name in runs if runs[name][2]}
    seconds = dict.fromkeys(runs, 0.0)
    for i, seed in enumerate(seeds):
        plain = generate_scene(seed)
        with_novel = novel_scene(seed) if novel else plain
        for name, (car, queries, on_novel) in runs.items():
            scene = with_novel if on_novel else plain
            present = _present(scene)
            tic = time.perf_counter()
            result = car.segment(scene.image, queries)
            seconds[name] += time.perf_counter() - tic
            scores[name].add(i, result, scene.label_map, present,
                             {q: labels.index(q) for q in result.queries})  # fmt: skip
            if on_novel:
                shown, kept = NOVEL_NAME in present, NOVEL_NAME in result.kept
                novel_counts[name] += (not shown, not shown and not kept, shown, shown and kept)
        if progress is not None:
            progress(i + 1, len(seeds))
    report: dict[str, Any] = {}
    for name, score in scores.items():
        report.update(score.summary(name, resamples))
        report[f"{name}_seconds_per_image"] = seconds[name] / max(len(seeds), 1)
        if name in novel_counts:
            c = novel_counts[name]
            report[f"{name}_class_iou"] = score.class_iou().get(NOVEL_NAME, float("nan"))
            report[f"{name}_class_kept"] = float(c[3] / max(c[2], 1))
            report[f"{name}_class_dropped"] = float(c[1] / max(c[0], 1))
    report["ks"] = list(ks)
    report["mixed_k"] = mixed_k
    report["calibration"] = {
        "cam": list(config.exemplar_cam_calibration),
        "classifier": list(config.exemplar_classifier_calibration),
    }
    report["images"] = len(seeds)
    report["seeds"] = describe_seeds(seeds)
    report["seconds"] = time.perf_counter() - start
    return report


def format_table(report: dict[str, Any]) -> str:
    """The exemplar benchmark as a text table."""
    rows = [("text queries (preset)", "text"), ("text queries, clean mode", "text_clean")]
    rows += [(f"{k} exemplar(s) per class", f"exemplars_{k}") for k in report["ks"]]
    rows.append((f"mixed: half text, half {report['mixed_k']} exemplars", "mixed"))
    lines = [f"{'queries':<40} {'mIoU':>6}  95 % interval   absent dropped  present kept  s/img"]
    lines += [_row(label, key, report) for label, key in rows if f"{key}_miou" in report]
    novel_rows = (("  by its name", "novel_text"),
                  (f"  by {report['mixed_k']} exemplars", "novel_exemplars"))  # fmt: skip
    if any(f"{key}_miou" in report for _, key in novel_rows):
        lines.append(f"unseen class '{NOVEL_NAME}' (in about half the scenes):")
        for label, key in novel_rows:
            if f"{key}_miou" not in report:
                continue
            lines.append(
                _row(label, key, report)
                + f"\n      its IoU {report[f'{key}_class_iou']:.1f}, kept when shown "
                f"{100 * report[f'{key}_class_kept']:.1f} %, dropped when absent "
                f"{100 * report[f'{key}_class_dropped']:.1f} %"
            )
    cam, cls = report["calibration"]["cam"], report["calibration"]["classifier"]
    lines.append(f"calibration a·c + b: CAM {tuple(cam)}, classifier {tuple(cls)}")
    lines.append(f"{report['images']} images (seeds {report['seeds']}), {report['seconds']:.0f} s")
    return "\n".join(lines)


def _row(label: str, key: str, report: dict[str, Any]) -> str:
    lo, hi = report[f"{key}_miou_ci"]
    return (
        f"{label:<40} {report[f'{key}_miou']:6.1f}  [{lo:.1f}, {hi:.1f}]"
        f"   {100 * report[f'{key}_absent_dropped']:13.1f} %"
        f" {100 * report[f'{key}_present_kept']:11.1f} %  {report[f'{key}_seconds_per_image']:.2f}"
    )
