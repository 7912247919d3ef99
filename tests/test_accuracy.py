"""The accuracy benchmark: held-out seeds, its report, and the shipped model through CaR."""

from __future__ import annotations

import numpy as np
import pytest

from cliprnn.assets import mini_model_paths
from cliprnn.dev.bench.accuracy import (
    DEFAULT_SEEDS,
    VARIANTS,
    bootstrap_interval,
    format_table,
    paired_gain_interval,
    run_accuracy_benchmark,
)
from cliprnn.dev.metrics import confusion, miou_of
from cliprnn.dev.mini_clip.data import BENCHMARK_SEED_START, TRAIN_SEED_LIMIT

shipped = pytest.mark.skipif(
    not all((p / "model.safetensors").exists() for p in mini_model_paths()),
    reason="the trained miniature CLIP is not in cliprnn/assets/mini_clip yet",
)


def _tuned():
    """The mini preset: the settings tuned on training seeds (see docs/mini_clip.md)."""
    from cliprnn.config import CaRConfig

    return CaRConfig.preset("mini", device="cpu")


def test_mini_preset_uses_the_scene_backgrounds() -> None:
    from cliprnn.config import MINI_PRESET
    from cliprnn.dev.scenes import STUFF

    assert MINI_PRESET["background_words"] == STUFF


KEYS = {"car_miou", "single_step_miou", "no_crf_miou", "gradcam_miou", "affinity_miou",
        "oracle_queries_miou", "car_miou_ci", "oracle_queries_miou_ci", "recurrence_gain",
        "recurrence_gain_ci", "absent_dropped", "present_kept", "images", "seconds"}  # fmt: skip


def test_default_seeds_are_held_out_from_training_and_spread() -> None:
    assert min(DEFAULT_SEEDS) >= BENCHMARK_SEED_START > TRAIN_SEED_LIMIT
    assert len(DEFAULT_SEEDS) >= 200
    # spread over the held-out range, not one run of consecutive seeds
    assert max(DEFAULT_SEEDS) - min(DEFAULT_SEEDS) >= 10_000_000
    assert QUICK_SEEDS[0] >= BENCHMARK_SEED_START


def test_variants_switch_off_one_stage_each() -> None:
    assert VARIANTS["car"] == {}
    assert VARIANTS["single_step"] == {"max_steps": 1}
    assert VARIANTS["no_crf"] == {"crf": False}
    assert VARIANTS["gradcam"] == {"refine_affinity": False}
    assert VARIANTS["affinity"] == {"refine_affinity": True}
    assert VARIANTS["oracle_queries"] == {"max_steps": 1, "confidence_threshold": 0.0}


def test_format_table_shows_every_row() -> None:
    report = {"car_miou": 41.23, "single_step_miou": 20.0, "no_crf_miou": 38.5,
              "gradcam_miou": 30.25, "absent_dropped": 0.915, "present_kept": 0.8,
              "images": 40, "seeds": "10000000:10000040", "seconds": 123.4,
              "car_miou_ci": [38.04, 44.96]}  # fmt: skip
    table = format_table(report)
    assert "full CaR" in table and " 41.2" in table and "[38.0, 45.0]" in table
    assert "one step" in table and " 20.0" in table
    assert "no CRF" in table and "Grad-CAM" in table and " 30.2" in table
    assert "91.5 %" in table and "80.0 %" in table and "40 images" in table
    assert "affinity refinement" in format_table({**report, "affinity_miou": 12.5})
    assert " 12.5" in format_table({**report, "affinity_miou": 12.5})
    more = format_table({**report, "oracle_queries_miou": 60.0, "recurrence_gain": 21.23,
                         "recurrence_gain_ci": [15.0, 27.5]})  # fmt: skip
    assert "oracle queries" in more and " 60.0" in more and "+21.2 [+15.0, +27.5]" in more


def test_per_image_confusions_sum_to_the_split_miou() -> None:
    from cliprnn.dev.metrics import ConfusionMatrix

    rng = np.random.default_rng(0)
    whole = ConfusionMatrix(5)
    mats, missed = [], []
    for _ in range(7):
        gt = rng.integers(0, 5, (6, 6))
        pred = np.where(rng.random((6, 6)) < 0.6, gt, rng.integers(0, 7, (6, 6)))
        whole.update(pred, gt)
        m, x = confusion(pred, gt, 5)
        mats.append(m)
        missed.append(x)
    mats, missed = np.stack(mats), np.stack(missed)
    assert miou_of(mats.sum(0), missed.sum(0)) == pytest.approx(whole.miou())
    lo, hi = bootstrap_interval(mats, missed, resamples=300)
    assert lo < 100 * whole.miou() < hi
    # the same image n times: no spread; a model against itself: no gain
    same = np.repeat(mats[:1], 5, axis=0), np.repeat(missed[:1], 5, axis=0)
    lo, hi = bootstrap_interval(*same, resamples=50)
    assert lo == pytest.approx(hi)
    assert paired_gain_interval((mats, missed), (mats, missed), resamples=50) == (0.0, 0.0)


#: The quick accuracy test: 24 held-out scenes, the whole class list each time.
QUICK_SEEDS = range(10_000_000, 10_000_024)


def quick_failures(report: dict) -> list[str]:
    """Bounds the shipped models meet on QUICK_SEEDS and a broken pipeline does not."""
    bounds = {
        "car_miou": (report["car_miou"], QUICK_MIN["car_miou"]),
        "present_kept": (report["present_kept"], QUICK_MIN["present_kept"]),
        "absent_dropped": (report["absent_dropped"], QUICK_MIN["absent_dropped"]),
    }
    return [f"{k} {v:.3f} < {low}" for k, (v, low) in bounds.items() if v < low]


#: The shipped models on QUICK_SEEDS (2026-12-08, the 2-head proposal model): mIoU 45.1, present
#: kept 0.508, absent dropped 0.955. Scoring each query on the next query's prompted image:
#: 12.2, 0.131, 0.981; a randomly initialised classifier of the shipped shape: 6.6, 0.098, 0.957.
#: (The kept bound was 0.5 for the models before, which kept 0.590 here; docs/accuracy.md.)
QUICK_MIN = {"car_miou": 40.0, "present_kept": 0.4, "absent_dropped": 0.9}


def _quick(config) -> dict:
    return run_accuracy_benchmark(QUICK_SEEDS, config, variants=("car",), resamples=10)


@pytest.mark.slow
@shipped
def test_full_car_keeps_present_queries_and_drops_absent_ones() -> None:
    # measured 45.1 mIoU, 0.508 kept, 0.955 dropped (QUICK_MIN); a random classifier or a
    # pipeline that scores the wrong prompted image fails these bounds (the two tests below)
    report = _quick(_tuned())
    assert report["images"] == len(QUICK_SEEDS)
    assert not quick_failures(report), report


@shipped
@pytest.mark.slow
def test_quick_bounds_fail_when_the_wrong_prompted_image_is_scored(monkeypatch) -> None:
    from cliprnn.classifier import MaskClassifier

    score = MaskClassifier.score

    def shifted(self, prompted, queries, **kwargs):
        # every query is scored on the next query's prompted image
        return score(self, prompted[1:] + prompted[:1], queries, **kwargs)

    monkeypatch.setattr(MaskClassifier, "score", shifted)
    report = _quick(_tuned())
    assert quick_failures(report), report


@shipped
@pytest.mark.slow
def test_quick_bounds_fail_for_a_random_classifier(tmp_path) -> None:
    from transformers import CLIPConfig, CLIPModel

    from cliprnn.dev.mini_clip.model import save_clip_folder

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = CLIPConfig.from_pretrained(mini_model_paths()[1])
    folder = save_clip_folder(CLIPModel(config), tmp_path / "random", mini_model_paths()[1])
    report = _quick(_tuned().replace(classifier_model=str(folder)))
    assert quick_failures(report), report


@shipped
@pytest.mark.slow
def test_every_variant_reports_the_issue_keys() -> None:
    report = run_accuracy_benchmark(range(10_000_000, 10_000_006), _tuned(), resamples=20)
    assert set(report) >= KEYS
    for key in ("car_miou", "single_step_miou", "no_crf_miou", "gradcam_miou",
                "oracle_queries_miou"):  # fmt: skip
        assert 0.0 <= report[key] <= 100.0
        lo, hi = report[f"{key}_ci"]
        assert lo <= report[key] + 1e-9 and report[key] <= hi + 1e-9
    assert report["car_mean_steps"] >= 2  # faithful mode always confirms once
    assert report["single_step_mean_steps"] == 1
    assert report["oracle_queries_mean_steps"] == 1


@shipped
def test_compare_pairs_settings_on_the_same_scenes() -> None:
    from cliprnn.dev.mini_clip.compare import compare_settings, main

    rows = compare_settings(range(999000, 999003), [{}, {}, {"mask_threshold": 0.9}], resamples=20)
    assert [r["setting"] for r in rows] == [{}, {}, {"mask_threshold": 0.9}]
    # the same setting twice: the same mIoU and no gain; another setting: another mIoU
    assert rows[1]["miou"] == rows[0]["miou"] and rows[1]["gain_ci"] == [0.0, 0.0]
    assert rows[2]["miou"] != rows[0]["miou"]
    assert rows[2]["gain"] == pytest.approx(rows[2]["miou"] - rows[0]["miou"], abs=0.02)
    lo, hi = rows[2]["gain_ci"]
    assert lo <= rows[2]["gain"] + 0.05 and rows[2]["gain"] <= hi + 0.05
    with pytest.raises(SystemExit, match="training seeds"):
        main(["{}", "--seeds", "10000000:10000002"])
