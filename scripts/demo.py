"""`make demo`: a persistent FiftyOne dataset of generated scenes, segmented by the plugin's
`segment` operator with the bundled miniature CLIP, evaluated against the exact ground truth."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_URI = "@cliprnn/clip-as-rnn"
DATASET = "cliprnn-demo"
FIRST_SEED = 70_000_000  # held out: training pairs use seeds below 1,000,000


def plugins_dir() -> Path:
    """A plugins folder that holds only a link to this checkout (FIFTYONE_PLUGINS_DIR)."""
    base = REPO_ROOT / "build" / "fiftyone-plugins"
    base.mkdir(parents=True, exist_ok=True)
    link = base / "clip-as-rnn"
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return base


def build_dataset(n: int, size: int, media_dir: Path):
    """(Re)create the demo dataset: n scenes with their ground-truth masks."""
    import fiftyone as fo
    from PIL import Image

    from cliprnn.dev.scenes import CLASSES, generate_scene

    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    media_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        scene = generate_scene(FIRST_SEED + i, size=(size, size))
        path = media_dir / f"scene_{FIRST_SEED + i}.png"
        Image.fromarray(scene.image).save(path)
        gt = fo.Segmentation(mask=scene.label_map.astype("uint8"))
        samples.append(fo.Sample(filepath=str(path), ground_truth=gt))
    ds = fo.Dataset(DATASET, persistent=True)
    ds.add_samples(samples)
    ds.mask_targets = {"ground_truth": {i + 1: name for i, name in enumerate(CLASSES)}}
    ds.app_config.color_scheme = fo.ColorScheme(color_by="value")
    ds.save()
    return ds


def mean_iou(confusion) -> float:
    """mIoU over the ground-truth classes present (background included), as the paper does."""
    import numpy as np

    m = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(m)
    union = m.sum(axis=0) + m.sum(axis=1) - tp
    present = m.sum(axis=1) > 0
    return float(np.mean(tp[present] / union[present])) if present.any() else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Build, segment, evaluate, and print how to look at the result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--model", help="a local CLIP folder for both stages (overrides preset)")
    args = parser.parse_args(argv)

    os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(plugins_dir()))
    import fiftyone as fo
    import fiftyone.operators as foo

    media = Path(fo.config.default_dataset_dir) / DATASET
    ds = build_dataset(args.samples, args.size, media)
    print(f"Dataset '{DATASET}': {len(ds)} generated scenes in {media}")

    segment = foo.get_operator(f"{PLUGIN_URI}/segment")
    start = time.perf_counter()
    models = dict(proposal_model=args.model, classifier_model=args.model) if args.model else {}
    segment(
        ds,
        classes_from="mask_targets:ground_truth",
        label_field="cliprnn",
        preset=args.preset,
        outputs=["segmentation", "detections"],
        **models,
    )
    seconds = time.perf_counter() - start
    ds.reload()
    summary = ds.load_run_results("cliprnn_cliprnn")
    print(
        f"Segmented {summary.processed} images in {seconds:.1f} s with preset "
        f"'{args.preset}' (failed: {summary.failed})"
    )

    targets = {0: "background", **ds.mask_targets["ground_truth"]}
    results = ds.evaluate_segmentations(
        "cliprnn", gt_field="ground_truth", eval_key="eval_cliprnn", mask_targets=targets
    )
    metrics = results.metrics()
    miou = mean_iou(results.pixel_confusion_matrix)
    print(
        f"Pixel accuracy {metrics['accuracy']:.3f}  precision {metrics['precision']:.3f}  "
        f"recall {metrics['recall']:.3f}  mIoU {miou:.3f}"
    )
    kept = sum(len(s.kept) for s in ds.values("cliprnn"))
    queries = len(ds.mask_targets["cliprnn"])
    print(f"Queries per image: {queries}; kept on average: {kept / len(ds):.2f}")
    print("\nOpen it in the App:  make app   (or: fiftyone app launch cliprnn-demo)")
    print("Then open the operator browser (`) and run 'Segment with text (CLIP as RNN)'.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
