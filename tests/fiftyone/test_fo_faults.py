"""Runs that lose nothing: a process killed at any write point resumes to the uninterrupted
result in every output field; two processes on different fields of one dataset keep both;
a database that goes away ends the run in words, keeping what was written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pymongo.errors
import pytest

from cliprnn.fiftyone import segment_collection
from cliprnn.fiftyone.check import check_field
from cliprnn.fiftyone.faults import KILL_AT

pytestmark = [pytest.mark.fiftyone, pytest.mark.slow]

QUERIES = ["red circle", "blue square", "green triangle"]
OUTPUTS = ["segmentation", "detections", "heatmaps"]
REPO_ROOT = Path(__file__).resolve().parents[2]

_CONFIG = """
from cliprnn import CaRConfig
cfg = CaRConfig.preset("voc", proposal_model=sys.argv[2], classifier_model=sys.argv[2],
                       crf=True, device="cpu", max_image_side=64,
                       min_region_pixels=0)  # as tiny_config
"""

# One run of QUERIES into field argv[3], files under argv[4]; argv[5] == "1" resumes.
_RUN = (
    """
import json, sys
import fiftyone as fo
from cliprnn.fiftyone import segment_collection
"""
    + _CONFIG
    + """
ds = fo.load_dataset(sys.argv[1])
summary = segment_collection(ds, sys.argv[6].split("|"), label_field=sys.argv[3], config=cfg,
                             batch_size=2, outputs=OUTPUTS, output_dir=sys.argv[4],
                             skip_existing=sys.argv[5] == "1", progress=False)
print(json.dumps(summary.to_dict()))
""".replace("OUTPUTS", repr(OUTPUTS))
)

# Rounds of one run each, every round started together with the twin process's run.
_TWIN = (
    """
import glob, os, sys, time
import fiftyone as fo
from cliprnn.fiftyone import segment_collection
"""
    + _CONFIG
    + """
ds = fo.load_dataset(sys.argv[1])
me, flags, rounds = sys.argv[3], sys.argv[4], int(sys.argv[5])
for r in range(rounds):
    open(os.path.join(flags, f"{me}-{r}"), "w").close()
    while len(glob.glob(os.path.join(flags, f"*-{r}"))) < 2:
        time.sleep(0.0005)
    segment_collection(ds, ["red circle", "blue square"], label_field=f"{me}{r}", config=cfg,
                       outputs=["segmentation", "detections"], progress=False)
"""
)


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **extra}


def _run(ds, model: Path, field: str, out: Path, resume: bool = False, **env: str):
    args = [ds.name, str(model), field, str(out), "1" if resume else "0", "|".join(QUERIES)]
    return subprocess.run(
        [sys.executable, "-c", _RUN, *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _outputs(ds, field: str) -> dict[str, dict]:
    """Every output of the run in ``field``, per image file, as plain comparable values."""
    ds.reload()
    heat = sorted(f for f in ds.get_field_schema() if f.startswith(f"{field}_heat_"))
    names = [field, f"{field}_det", f"{field}_scores", *heat]
    out = {}
    for sample in ds.select_fields(names):
        seg, det, scores = (sample[n] for n in names[:3])
        row = {
            "mask": seg.get_mask().tobytes() if seg is not None else None,
            "det": None
            if det is None
            else [
                (d.label, [round(v, 6) for v in d.bounding_box], d.mask.tobytes(), d["value"])
                for d in det.detections
            ],
            "scores": None
            if scores is None
            else [(c.label, c.confidence, c["kept"]) for c in scores.classifications],
        }
        for h in heat:
            label = sample[h]
            row[h[len(field) :]] = None if label is None else label.get_map().tobytes()
        out[Path(sample.filepath).name] = row
    assert ds.count(f"{field}_error") == 0 if ds.has_field(f"{field}_error") else True
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, scene_files, tiny_config):
    """The uninterrupted run's outputs."""
    import fiftyone as fo

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(p)) for p in scene_files])
    segment_collection(
        ds,
        QUERIES,
        label_field="car",
        config=tiny_config,
        batch_size=2,
        outputs=OUTPUTS,
        output_dir=str(tmp_path_factory.mktemp("ref")),
        progress=False,
    )
    yield _outputs(ds, "car")
    ds.delete()


# Six samples in batches of two: the points of the first, a middle and the last batch.
POINTS = [
    "prepared",
    "before_write:1",
    "after_write:1",
    "before_write:2",
    "after_write:3",
    "finished",
]


@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_at_a_write_point_resumes_to_the_uninterrupted_result(
    point, make_dataset, scene_files, tiny_clip_dir, tmp_path, reference
) -> None:
    ds = make_dataset(len(scene_files), persistent=True)
    killed = _run(ds, tiny_clip_dir, "car", tmp_path, **{KILL_AT: point})
    assert killed.returncode == -9, killed.stderr[-2000:]

    resumed = _run(ds, tiny_clip_dir, "car", tmp_path, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["processed"] + summary["skipped"] == len(scene_files)
    assert summary["skipped"] >= 0 and summary["failed"] == 0
    assert _outputs(ds, "car") == reference
    assert check_field(ds, "car").ok


def test_two_runs_started_together_on_different_fields_keep_both(
    make_dataset, tiny_clip_dir, tmp_path
) -> None:
    rounds = 20
    ds = make_dataset(2, persistent=True)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _TWIN,
                ds.name,
                str(tiny_clip_dir),
                me,
                str(tmp_path),
                str(rounds),
            ],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-2000:]
    ds.reload()
    schema = ds.get_field_schema()
    colored = {f["path"] for f in ds.app_config.color_scheme.fields or []}
    lost = []
    for r in range(rounds):
        for me in ("a", "b"):
            field = f"{me}{r}"
            ok = (
                field in schema
                and f"{field}_det" in schema
                and f"{field}_scores" in schema
                and field in ds.mask_targets
                and f"{field}_det" in ds.classes
                and f"{field}_det" in ds.label_schemas
                and {field, f"{field}_det"} <= colored
                and ds.count(field) == 2
                and check_field(ds, field).ok
            )
            if not ok:
                lost.append(field)
    assert not lost, f"fields lost or incomplete: {lost}"


def test_a_database_outage_ends_the_run_in_words_and_keeps_what_was_written(
    make_dataset, tiny_config, monkeypatch
) -> None:
    from cliprnn.fiftyone import collection as C
    from cliprnn.fiftyone import stores

    ds = make_dataset(6)
    real = stores.write_whole
    calls = []

    def flaky(collection, labels):
        calls.append(1)
        if len(calls) == 2:
            raise pymongo.errors.ServerSelectionTimeoutError("localhost:27017: timed out")
        return real(collection, labels)

    monkeypatch.setattr(stores, "write_whole", flaky)
    with pytest.raises(C.DatabaseError) as info:
        segment_collection(ds, QUERIES, label_field="car", config=tiny_config, batch_size=2,
                           progress=False)  # fmt: skip
    text = str(info.value)
    assert "could not take the results of 2 sample(s)" in text
    assert "2 sample(s) written before are kept" in text
    assert "skip_existing=True" in text
    assert ds.count("car") == 2
    monkeypatch.setattr(stores, "write_whole", real)
    summary = segment_collection(ds, QUERIES, label_field="car", config=tiny_config,
                                 skip_existing=True, progress=False)  # fmt: skip
    assert (summary.processed, summary.skipped) == (4, 2)
    assert ds.count("car") == 6
