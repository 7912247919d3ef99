"""bench-speed's pieces: the forced drop schedule, the prefetcher, and the reports' shape."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cliprnn.dev.bench.speed import drop_schedule, format_table, measure, query_names
from cliprnn.prefetch import prefetch

TINY = dict(width=64, layers=2, patch_size=16, image_size=32)


# -- drop schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queries", "steps", "expected"),
    [
        (20, 2, [10, 10]),  # halve in the first step, then the confirmation step
        (20, 3, [20, 10, 10]),  # linspace(20, 10, 2) = [20, 10]
        (20, 5, [20, 17, 13, 10, 10]),  # linspace(20, 10, 4) = 20, 16.67, 13.33, 10
        (1, 2, [1, 1]),
        (7, 1, [7]),
    ],
)
def test_drop_schedule(queries: int, steps: int, expected: list[int]) -> None:
    assert drop_schedule(queries, steps) == expected


def test_query_names_are_the_voc_classes_then_numbered() -> None:
    assert query_names(2) == ["aeroplane", "bicycle"]
    assert query_names(22)[21] == "object 21"


# -- prefetch ---------------------------------------------------------------------------------


def test_prefetch_yields_in_order_with_exceptions_in_place() -> None:
    def load(i: int) -> int:
        time.sleep(0.02 * (5 - i % 5))  # later items finish first
        if i == 3:
            raise OSError("truncated file 3")
        return i * i

    out = list(prefetch(range(8), load, workers=3, ahead=4))
    assert [item for item, _ in out] == list(range(8))
    assert [v for i, v in out if i != 3] == [0, 1, 4, 16, 25, 36, 49]
    assert isinstance(out[3][1], OSError) and "truncated file 3" in str(out[3][1])


def test_prefetch_never_runs_more_than_ahead_items_early() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def load(i: int) -> int:
        with lock:
            started.append(i)
        return i

    gen = prefetch(range(100), load, workers=2, ahead=3)
    for item, _ in gen:
        time.sleep(0.005)
        with lock:
            # the current item plus at most 3 ahead have been submitted
            assert max(started) <= item + 3
        if item == 10:
            break
    gen.close()
    assert len(started) <= 15


def test_prefetch_loads_ahead_while_the_consumer_works() -> None:
    def load(i: int) -> int:
        time.sleep(0.1)
        return i

    start = time.perf_counter()
    for _ in prefetch(range(6), load, workers=2, ahead=4):
        time.sleep(0.1)  # the "inference"
    elapsed = time.perf_counter() - start
    # serial would take 6 * 0.2 = 1.2 s; overlapped about 0.1 + 6 * 0.1 = 0.7 s
    assert elapsed < 1.0


def test_prefetch_without_workers_and_empty_input() -> None:
    out = list(prefetch(["a", "b"], str.upper, workers=0))
    assert out == [("a", "A"), ("b", "B")]
    assert list(prefetch([], str.upper)) == []
    with pytest.raises(ValueError):
        list(prefetch(["a"], str.upper, workers=-1))


# -- the measurement on tiny random models ------------------------------------------------------


def test_measure_reports_stages_and_a_label_map_digest() -> None:
    out = measure(queries=3, steps=2, device="cpu", optimised=True, repeats=1, archs=(TINY, TINY))
    assert out["steps"] == 2
    for stage in ("dense", "text", "cam", "affinity", "prompts", "classifier", "crf"):
        assert stage in out["stages"], stage
    assert out["stages"]["text"] < out["first_image_seconds"]
    assert len(out["label_map_sha256"]) == 64
    assert len(out["scores"]) == 3
    assert out["peak_rss_mb"] > 0


@pytest.mark.slow
def test_bf16_run_saves_its_label_map_and_reports_agreement(tmp_path) -> None:
    from cliprnn.dev.bench.speed import run_speed_benchmark

    labels = str(tmp_path / "l.npy")
    out = measure(queries=2, steps=2, device="cpu", optimised=True, repeats=0,
                  archs=(TINY, TINY), dtype="bfloat16", labels_out=labels)  # fmt: skip
    assert np.load(tmp_path / "l.npy").shape == (375, 500)
    report = run_speed_benchmark(queries=2, steps=2, baseline=False, archs=(TINY, TINY),
                                 repeats=0, bf16=True)  # fmt: skip
    assert 0.0 <= report["bf16_pixel_agreement"] <= 1.0
    assert report["bf16_speedup"] > 0 and "bf16_stages" in report
    assert "bf16 pixels equal to fp32" in format_table(report)
    assert out["steps"] == 2


def test_format_table_lists_the_headline_numbers() -> None:
    report = {
        "device": "cpu", "threads": 2, "archs": ["ViT-B/16", "ViT-L/14"], "queries": 20,
        "schedule": [10, 10], "seconds_per_image": 12.5, "first_image_seconds": 30.0,
        "peak_rss_mb": 2900.0, "first_query_seconds": 4.0, "marginal_query_seconds": 0.5,
        "marginal_over_first": 0.125, "baseline_seconds_per_image": 250.0,
        "baseline_peak_rss_mb": 3000.0, "speedup": 20.0, "identical": True,
        "max_score_difference": 0.0, "stages": {"classifier": 8.0},
        "load_average": {"before": [1.0, 1.0, 1.0], "after": [1.0, 1.0, 1.0]},
    }  # fmt: skip
    table = format_table(report)
    assert "20.0x" in table and "identical label maps" in table
    assert "stage: classifier" in table


def test_dataset_throughput_over_jpeg_files() -> None:
    from cliprnn.dev.bench.throughput import dataset_throughput

    out = dataset_throughput(2, queries=2, steps=2, archs=(TINY, TINY), fiftyone=False)
    assert out["images"] == 2 and out["failures"] == 0
    assert out["images_per_second"] == pytest.approx(2 / out["seconds"])
    assert np.isfinite(out["decode_seconds_per_image"])


def test_dataset_throughput_with_crf_overlap_gives_identical_outputs() -> None:
    from cliprnn.dev.bench.throughput import dataset_throughput

    out = dataset_throughput(
        3, queries=3, steps=2, archs=(TINY, TINY), fiftyone=False, crf_workers=1
    )
    assert out["crf_workers"] == 1 and out["overlap_identical"] is True
    assert out["overlap_images_per_second"] == pytest.approx(3 / out["overlap_seconds"])
    assert out["overlap_speedup"] > 0


@pytest.mark.slow
def test_first_image_is_reported_cold_and_warm() -> None:
    from cliprnn.dev.bench.speed import run_speed_benchmark

    report = run_speed_benchmark(queries=3, steps=2, baseline=False, archs=(TINY, TINY))
    cold, warm = report["text_cache_cold"], report["text_cache_warm"]
    # the cold run fills an empty cache; the warm one (another process) only reads it
    assert cold["hits"] == 0 and cold["writes"] > 0
    assert warm["misses"] == 0 and warm["writes"] == 0 and warm["hits"] == cold["writes"]
    assert report["warm_identical"] is True
    for key in ("first_over_steady", "first_over_steady_warm", "first_image_seconds_warm"):
        assert report[key] > 0
    # the warm run embeds nothing: its text time is the disk reads only
    assert 0 <= report["first_image_text_seconds_warm"] < report["first_image_seconds_warm"]
    assert report["first_image_text_seconds"] > 0
    table = format_table(report)
    assert "first image, warm text cache" in table and "first / steady, cold" in table


# -- bench-calibration on a tiny split ----------------------------------------------------------


@pytest.mark.slow
def test_calibration_benchmark_reports_finite_numbers_inside_their_intervals(
    one_torch_thread,
) -> None:
    import json
    import math

    pytest.importorskip("cliprnn.calibration", reason="the calibration engine is not merged yet")
    from cliprnn.dev.bench.calibration import format_table, run_calibration_benchmark

    lines: list[str] = []
    report = run_calibration_benchmark(
        labelled=[4], seeds=range(10_000_000, 10_400_000, 100_000), styles=["sparse"],
        budget=4, resamples=200, log=lines.append,
    )  # fmt: skip
    json.dumps(report)  # JSON-able
    assert report["images"] == 4 and report["labelled"] == [4] and report["styles"] == ["sparse"]
    assert report["labelled_seeds"] == "500000:500004" and report["seconds"] > 0
    (row,) = report["rows"]
    assert row["style"] == "sparse" and row["labelled"] == 4
    for key in ("preset_miou", "calibrated_miou", "gain", "cv_score", "cv_base_score", "cv_gain",
                "fit_score", "search_seconds"):  # fmt: skip
        assert math.isfinite(row[key]), key
    for point, interval in (("preset_miou", "preset_miou_ci"),
                            ("calibrated_miou", "calibrated_miou_ci"), ("gain", "gain_ci"),
                            ("cv_score", "cv_score_ci"), ("cv_gain", "cv_gain_ci")):  # fmt: skip
        lo, hi = row[interval]
        assert lo <= row[point] <= hi, (point, lo, row[point], hi)
    assert row["gain"] == pytest.approx(row["calibrated_miou"] - row["preset_miou"])
    assert 0 < row["passes_computed"] <= row["passes_requested"] <= row["naive_grid_passes"]
    assert isinstance(row["overrides"], dict) and isinstance(row["kept_base"], bool)
    if row["kept_base"]:
        assert row["overrides"] == {} and row["gain"] == 0.0
    assert any("preset" in line for line in lines)
    assert "sparse" in format_table(report)


def test_calibration_benchmark_refuses_bad_labelled_seeds_and_margin_before_any_work(
    capsys,
) -> None:
    from cliprnn import CaRConfig
    from cliprnn.__main__ import main
    from cliprnn.dev.bench.calibration import labelled_seeds, run_calibration_benchmark

    assert labelled_seeds(520_000, 30) == range(520_000, 520_030)
    # a model that cannot load: any work before the check would fail with another error
    absent = CaRConfig.preset("mini", proposal_model="/nonexistent/clip")
    with pytest.raises(ValueError, match="must be training seeds"):
        run_calibration_benchmark(labelled=[30], labelled_start=999_990, config=absent)
    assert main(["bench-calibration", "--labelled-start", "999990", "--labelled", "30"]) == 2
    assert "--labelled-start: labelled seeds 999990:1000020" in capsys.readouterr().err
    assert main(["bench-calibration", "--min-gain-se", "-1"]) == 2
    assert "--min-gain-se must be >= 0" in capsys.readouterr().err
