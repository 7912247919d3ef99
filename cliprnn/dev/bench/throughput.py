"""Dataset throughput: images per second over generated JPEG files, decoding overlapped.

Optionally also with each image's CRF overlapped with the next image's model passes
(``cliprnn.pipeline.segment_stream``), checking that every output is the same.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cliprnn.car import set_forced_schedule
from cliprnn.dev.bench.common import PAPER_ARCHS, bench_image, build_car, drop_schedule, query_names
from cliprnn.prefetch import prefetch


def write_images(n: int, folder: str | Path, *, first_seed: int = 0) -> list[Path]:
    """Save ``n`` generated 500×375 scenes as JPEG files in ``folder``; their paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"scene_{first_seed + i:05d}.jpg"
        Image.fromarray(bench_image(first_seed + i)).save(path, quality=90)
        paths.append(path)
    return paths


def dataset_throughput(
    n: int,
    device: str = "cpu",
    *,
    queries: int = 20,
    steps: int = 2,
    archs: tuple[Any, Any] = PAPER_ARCHS,
    workers: int = 2,
    ahead: int = 4,
    fiftyone: bool = True,
    crf_workers: int = 0,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Images per second of CaR over ``n`` generated JPEG files read through :func:`prefetch`.

    The bench-speed configuration (VOC preset, random-weight ``archs``, fixed drop schedule) runs
    over ``n`` files after one untimed warm-up file (kernels and the class list's text
    embeddings, which a dataset run computes once). ``decode_seconds_per_image`` is the
    decoding cost the prefetcher hides. With ``crf_workers`` > 0 the files are run again through
    ``segment_stream`` with that many CRF workers: ``overlap_images_per_second``,
    ``overlap_speedup`` (over the sequential rate) and ``overlap_identical`` (every label map,
    kept list and score equal to the sequential run's). With ``fiftyone`` the same files also
    go through ``cliprnn.fiftyone.segment_collection`` when it is importable; its rate (or the
    reason it could not run) is reported too. Timings on a shared machine are noisy.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    car = build_car(device, True, archs, dtype)
    names = query_names(queries)
    set_forced_schedule(car, drop_schedule(len(names), steps))
    from cliprnn.imageio import load_image as load  # CaR.segment resizes, keeping full-res masks

    report: dict[str, Any] = {"images": n, "workers": workers, "ahead": ahead,
                              "crf_workers": crf_workers}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cliprnn-throughput-") as tmp:
        warm, *paths = write_images(n + 1, tmp, first_seed=1000)
        car.segment(load(warm), names)
        start = time.perf_counter()
        for path in paths:
            load(path)
        report["decode_seconds_per_image"] = (time.perf_counter() - start) / n
        failures = 0
        digests = []
        start = time.perf_counter()
        for _, image in prefetch(paths, load, workers=workers, ahead=ahead):
            if isinstance(image, BaseException):
                failures += 1
                continue
            digests.append(result_digest(car.segment(image, names)))
        elapsed = time.perf_counter() - start
        report.update(seconds=elapsed, images_per_second=n / elapsed, failures=failures)
        if crf_workers > 0:
            from cliprnn.pipeline import segment_stream

            overlapped = []
            start = time.perf_counter()
            stream = segment_stream(
                car, prefetch(paths, load, workers=workers, ahead=ahead), names, crf_workers
            )
            for _, result in stream:
                overlapped.append(
                    result if isinstance(result, BaseException) else result_digest(result)
                )
            overlap_seconds = time.perf_counter() - start
            report.update(
                overlap_seconds=overlap_seconds,
                overlap_images_per_second=n / overlap_seconds,
                overlap_speedup=elapsed / overlap_seconds,
                overlap_identical=overlapped == digests,
            )
        if fiftyone:
            report.update(_through_segment_collection(car, names, paths))
    return report


def result_digest(result: Any) -> str:
    """SHA-256 of a CaRResult's label map, kept queries and scores (equal outputs, equal digest)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(result.label_map, dtype=np.int32).tobytes())
    h.update(repr(list(result.kept)).encode())
    h.update(np.ascontiguousarray(result.scores, dtype=np.float32).tobytes())
    return h.hexdigest()


def _through_segment_collection(car: Any, names: list[str], paths: list[Path]) -> dict[str, Any]:
    """Run the files through segment_collection with ``car`` as its engine (images/s)."""
    try:
        import fiftyone as fo

        from cliprnn.fiftyone import engine, segment_collection
    except Exception as exc:  # FiftyOne or the plugin package not installed
        return {"fiftyone_images_per_second": None, "fiftyone_error": f"{exc}"}
    dataset = None
    try:
        dataset = fo.Dataset()
        dataset.add_samples([fo.Sample(filepath=str(p)) for p in paths])
        with engine._lock:
            engine._cache[car.config] = car  # the run reuses this engine instead of loading one
        start = time.perf_counter()
        segment_collection(
            dataset, names, label_field="car_bench", config=car.config, outputs=["segmentation"]
        )
        elapsed = time.perf_counter() - start
        done = len(dataset.exists("car_bench"))
        return {
            "fiftyone_images_per_second": done / elapsed if done else None,
            "fiftyone_seconds": elapsed,
            "fiftyone_segmented": done,
        }
    except Exception as exc:
        return {
            "fiftyone_images_per_second": None,
            "fiftyone_error": f"{type(exc).__name__}: {exc}",
        }
    finally:
        with engine._lock:
            engine._cache.pop(car.config, None)
        if dataset is not None:
            dataset.delete()
