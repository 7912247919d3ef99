"""Sharded-run throughput: N images over K `fiftyone delegated launch` workers against one.

Target (issue #11): a sharded run of N images over K workers finishes within 1.1x of
N/K single-worker image times plus one model load (K = 2, one compute thread each).

1. One worker runs the N images as one job: its image time t (the job's loop seconds / N) and
   its model load L (the job's wall time minus its loop) are read from the run's state.
2. K fresh workers (so each loads the model) run the same N images as K jobs; T is the wall
   time from queueing to the run's completion.
3. Reported: T, the ideal N/K * t + L, the budget 1.1 * (N/K * t + L), and T / ideal.

Runs against a private, throw-away FiftyOne database (a temporary FIFTYONE_DATABASE_DIR), with
the bundled miniature CLIP (offline). Example::

    python scripts/bench_shards.py --images 24 --size 224 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
QUERIES = ["red circle", "blue square", "green triangle", "yellow star"]


def _worker_env(plugins: Path) -> dict[str, str]:
    one = dict(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return {**os.environ, **one, "FIFTYONE_PLUGINS_DIR": str(plugins)}


def start_workers(n: int, plugins: Path) -> list[subprocess.Popen]:
    cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    procs = [
        subprocess.Popen(
            [cli, "delegated", "launch"],
            env=_worker_env(plugins),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(n)
    ]
    for p in procs:  # ready once it polls
        for raw in p.stdout:
            if b"Delegated operation service running" in raw:
                break
        else:
            raise RuntimeError("a worker exited before it was ready")
        # keep draining its output so it never blocks on a full pipe
        threading.Thread(target=lambda s=p.stdout: s.read(), daemon=True).start()
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def timed_run(ds, field: str, shards: int, workers: int, plugins: Path, kwargs: dict) -> dict:
    from cliprnn.fiftyone import queue_sharded_run
    from cliprnn.fiftyone import runs as R

    procs = start_workers(workers, plugins)
    try:
        start = time.perf_counter()
        plan = queue_sharded_run(ds, shards, label_field=field, outputs=["segmentation"], **kwargs)
        while True:
            doc = R.get_plan(plan.run_id)
            states = [d["state"] for d in R.shard_docs(plan.run_id)]
            if doc["state"] == "complete":
                break
            if "failed" in states:
                raise RuntimeError(f"a job failed: {R.shard_docs(plan.run_id)}")
            time.sleep(0.05)
        wall = time.perf_counter() - start
    finally:
        stop_workers(procs)
    shards_out = []
    for d in R.shard_docs(plan.run_id):
        (att,) = d["attempts"]
        job = (att["ended"] - att["started"]).total_seconds()
        shards_out.append(dict(samples=d["size"], loop_s=d["seconds"], job_s=job, pid=d["pid"]))
    return dict(wall_s=wall, shards=shards_out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="cliprnn-bench-shards-"))
    try:
        return _bench(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(args: argparse.Namespace, tmp: Path) -> int:
    os.environ.pop("FIFTYONE_DATABASE_URI", None)  # never a shared database
    os.environ["FIFTYONE_DATABASE_DIR"] = str(tmp / "db")
    os.environ["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "clip-as-rnn").symlink_to(REPO_ROOT, target_is_directory=True)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(plugins)

    import fiftyone as fo
    from PIL import Image

    from cliprnn.dev.scenes import generate_scene

    media = tmp / "media"
    media.mkdir()
    paths = []
    for i in range(args.images):
        path = media / f"scene_{i}.png"
        Image.fromarray(generate_scene(700_000 + i, size=(args.size, args.size)).image).save(path)
        paths.append(path)
    ds = fo.Dataset("bench-shards", persistent=True)
    ds.add_samples([fo.Sample(filepath=str(p)) for p in paths])
    kwargs = dict(queries=QUERIES, config=args.preset, num_workers=0, batch_size=4)

    one = timed_run(ds, "one", 1, 1, plugins, kwargs)
    (s1,) = one["shards"]
    t = s1["loop_s"] / args.images
    load = s1["job_s"] - s1["loop_s"]
    k = args.workers
    many = timed_run(ds, "many", k, k, plugins, kwargs)
    ideal = args.images / k * t + load
    report = dict(
        images=args.images,
        size=args.size,
        workers=k,
        image_s=round(t, 4),
        model_load_s=round(load, 3),
        single_worker_wall_s=round(one["wall_s"], 2),
        sharded_wall_s=round(many["wall_s"], 2),
        ideal_s=round(ideal, 2),
        budget_s=round(1.1 * ideal, 2),
        ratio_to_ideal=round(many["wall_s"] / ideal, 3),
        shards=many["shards"],
        load_average=os.getloadavg(),
    )
    fo.delete_dataset(ds.name)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    ok = many["wall_s"] <= report["budget_s"]
    print("within budget" if ok else "over budget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
