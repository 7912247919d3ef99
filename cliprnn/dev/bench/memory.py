"""bench-memory: peak memory of a FiftyOne run on images at the pixel budget, alone and in
batches, and of refusing an image over it. Each case runs in a fresh process (peak RSS)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

QUERIES = ["red circle", "blue square", "green triangle", "yellow star"]


def budget_image(path: Path, pixels: int, seed: int) -> tuple[int, int]:
    """Write a generated scene scaled up to at most ``pixels`` pixels (5:4) as a PNG."""
    from PIL import Image

    from cliprnn.dev.scenes import generate_scene

    height = int((pixels * 4 / 5) ** 0.5)
    width = pixels // height
    scene = generate_scene(seed, size=(256, 320))
    Image.fromarray(scene.image).resize((width, height), Image.Resampling.NEAREST).save(path)
    return width, height


def bomb_png(path: Path, width: int, height: int) -> None:
    """A valid PNG header declaring ``width`` × ``height`` gray pixels, with a few bytes of
    data: what a decompression bomb looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _case(kind: str, images: int, batch_size: int, config: str) -> dict[str, Any]:
    """One case in this process: build the files and dataset, run, report peak RSS."""
    import resource
    import time

    import fiftyone as fo

    from cliprnn.config import CaRConfig
    from cliprnn.fiftyone import segment_collection

    budget = CaRConfig.preset(config).max_image_pixels
    folder = Path(tempfile.mkdtemp(prefix="cliprnn-mem-"))
    paths = []
    for i in range(images):
        path = folder / f"image_{i}.png"
        if kind == "over":
            bomb_png(path, 8000, 8000)  # over the budget, under Pillow's own bomb limit
        else:
            budget_image(path, budget, 70_000_000 + i)
        paths.append(str(path))
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    summary = segment_collection(
        ds, QUERIES, label_field="mem", config=config, outputs=["segmentation", "detections"],
        batch_size=batch_size, skip_failures=True, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ds.delete()
    return dict(
        case=kind, images=images, batch_size=batch_size, budget_mpx=budget / 1e6,
        processed=summary.processed, failed=summary.failed, seconds=round(seconds, 1),
        rss_before_mb=before // 1024, peak_rss_mb=peak // 1024,
        error=summary.errors[0][1] if summary.errors else None,
    )  # fmt: skip


CASES = [("budget", 1, 1), ("budget", 4, 4), ("over", 1, 1)]


def run_memory_benchmark(config: str = "mini", cases=CASES) -> list[dict[str, Any]]:
    """Every case in a fresh process; their reports in order."""
    rows = []
    for kind, images, batch_size in cases:
        out = subprocess.run(
            [sys.executable, "-m", "cliprnn.dev.bench.memory", kind, str(images), str(batch_size),
             config],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | images | batch | processed / failed | seconds | peak RSS MB |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        what = "at the budget" if r["case"] == "budget" else "64 Mpx file (refused)"
        lines.append(
            f"| {what} ({r['budget_mpx']:g} Mpx) | {r['images']} | {r['batch_size']} | "
            f"{r['processed']} / {r['failed']} | {r['seconds']} | {r['peak_rss_mb']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(_case(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
