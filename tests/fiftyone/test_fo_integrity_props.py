"""Property test of the labeling loop's invariants over random operation sequences on
generated scenes: subset runs, overwrites, skip-existing runs, renames, merges, deletions,
fold-backs of instance edits and rebuilds. After every operation:

(a)+(b) ``check_field`` finds no sample whose mask values, instance values, score lists or
        instances disagree with the field's classes or with each other;
(d)     every sample the operation did not target means what it meant before (class name ->
        pixels of the semantic mask, and its instances), up to the class edit itself.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from meaning import class_pixels, field_targets

from cliprnn.errors import ConfigError
from cliprnn.fiftyone import (
    apply_mask_edits,
    edit_mask_classes,
    rebuild_instances,
    segment_collection,
)
from cliprnn.fiftyone.check import check_field

pytestmark = [pytest.mark.fiftyone, pytest.mark.slow]

POOL = [
    "red circle",
    "blue square",
    "green triangle",
    "yellow star",
    "purple cross",
    "orange diamond",
    "cyan ring",
]
FIELD = "labels"


def snapshot(ds) -> dict[str, tuple]:
    """Per sample: class name -> pixels of the semantic mask, and its instances' classes."""
    ds.reload()
    targets = field_targets(ds, FIELD)
    det = f"{FIELD}_det"
    out = {}
    for sid, seg, dets in zip(*ds.values(["id", FIELD, det]), strict=True):
        if seg is None:
            out[sid] = None
            continue
        pixels = class_pixels(seg.get_mask(), targets)
        instances = Counter(d.label for d in (dets.detections if dets else []))
        out[sid] = (pixels, dict(instances))
    return out


def renamed(state: tuple | None, mapping: dict[str, str | None]) -> tuple | None:
    """What a sample means after a class edit: names mapped, deleted classes gone."""
    if state is None:
        return None
    pixels, instances = Counter(), Counter()
    for name, n in state[0].items():
        new = mapping.get(name, name)
        if new is not None:
            pixels[new] += n
    for name, n in state[1].items():
        new = mapping.get(name, name)
        if new is not None:
            instances[new] += n
    return dict(pixels), dict(instances)


class Loop:
    """Applies random operations to a dataset, returning which samples each one targeted
    and the class mapping it applied to every sample."""

    def __init__(self, ds, config, rng: random.Random) -> None:
        self.ds, self.config, self.rng = ds, config, rng
        self.ids = ds.values("id")

    def classes(self) -> list[str]:
        self.ds.reload()
        return sorted(self.ds.mask_targets.get(FIELD, {}).values())

    def subset(self) -> list[str]:
        k = self.rng.randint(1, len(self.ids))
        return sorted(self.rng.sample(self.ids, k))

    def segment(self) -> tuple[str, set[str], dict]:
        target = self.subset()
        queries = self.rng.sample(POOL, self.rng.randint(2, 4))
        exists = self.ds.has_field(FIELD)
        mode = self.rng.choice(["overwrite", "skip_existing"]) if exists else "new"
        segment_collection(
            self.ds.select(target), queries, label_field=FIELD, config=self.config,
            outputs=["segmentation", "detections"], overwrite=mode == "overwrite",
            skip_existing=mode == "skip_existing", progress=False,
        )  # fmt: skip
        return f"segment {mode} {len(target)} {queries}", set(target), {}

    def rename(self) -> tuple[str, set[str], dict]:
        old = self.rng.choice(self.classes())
        new = f"{old} v{self.rng.randint(2, 99)}"
        edit_mask_classes(self.ds, FIELD, rename={old: new})
        return f"rename {old} -> {new}", set(), {old: new}

    def merge(self) -> tuple[str, set[str], dict]:
        a, b = self.rng.sample(self.classes(), 2)
        edit_mask_classes(self.ds, FIELD, merge={b: [a, b]})
        return f"merge {a} into {b}", set(), {a: b}

    def delete(self) -> tuple[str, set[str], dict]:
        name = self.rng.choice(self.classes())
        edit_mask_classes(self.ds, FIELD, delete=[name])
        return f"delete {name}", set(), {name: None}

    def fold_back(self) -> tuple[str, set[str], dict]:
        """Relabel one instance of one sample (as the App's Annotate tab saves it), apply."""
        sid = self.rng.choice(self.ids)
        sample = self.ds[sid]
        dets = sample[f"{FIELD}_det"]
        if dets is not None and dets.detections:
            det = self.rng.choice(dets.detections)
            det.label = self.rng.choice(self.classes())
            sample.save()
        apply_mask_edits(self.ds.select(sid), FIELD)
        return f"fold back one relabel on {sid}", {sid}, {}

    def rebuild(self) -> tuple[str, set[str], dict]:
        target = self.subset()
        rebuild_instances(self.ds.select(target), FIELD)
        return f"rebuild {len(target)}", set(target), {}


@pytest.mark.parametrize("seed", range(4))
def test_random_operation_sequences_keep_the_invariants(seed, make_dataset, tiny_config) -> None:
    rng = random.Random(seed)
    ds = make_dataset(4)
    loop = Loop(ds, tiny_config, rng)
    history = [loop.segment()[0]]
    ops = [loop.segment, loop.rename, loop.merge, loop.delete, loop.fold_back, loop.rebuild]
    for _ in range(7):
        op = rng.choice(ops)
        before = snapshot(ds)
        try:
            what, targeted, mapping = op()
        except (ConfigError, ValueError) as e:
            if op in (loop.merge, loop.delete, loop.rename) and len(loop.classes()) < 2:
                continue
            raise AssertionError(f"after {history}: {op.__name__} failed: {e}") from e
        history.append(what)
        report = check_field(ds, FIELD)
        assert report.ok, f"after {history}:\n{report.summary()}"
        after = snapshot(ds)
        for sid, state in before.items():
            if sid in targeted:
                continue
            assert after[sid] == renamed(state, mapping), f"{sid} changed after {history}"
