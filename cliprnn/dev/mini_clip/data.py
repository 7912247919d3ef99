"""Training data of the miniature CLIPs: generated image-text pairs in a fixed batch order."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from transformers import CLIPTokenizer

from cliprnn.dev.mini_clip.model import CLIP_MEAN, CLIP_STD
from cliprnn.dev.scenes import CAPTION_TEMPLATES, CLASSES, STUFF, STUFF_TEMPLATES, training_pair

#: Training pairs use seeds below this; benchmarks use seeds from BENCHMARK_SEED_START.
TRAIN_SEED_LIMIT = 1_000_000
BENCHMARK_SEED_START = 10_000_000


def to_pixels(images: list[np.ndarray], side: int) -> torch.Tensor:
    """uint8 RGB images -> normalised [B, 3, side, side] (area resize, like an antialiased one)."""
    arr = (
        np.stack(
            [
                im
                if im.shape[0] == side
                else cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA)
                for im in images
            ]
        ).astype(np.float32)
        / 255.0
    )
    arr = (arr - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class TextCache:
    """Token ids per caption, computed once."""

    def __init__(self, tokenizer: CLIPTokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = []
        for t in texts:
            if t not in self.cache:
                self.cache[t] = self.tokenizer(t, truncation=True, max_length=77).input_ids
            ids.append(self.cache[t])
        n = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([i + [pad] * (n - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])
        return input_ids, mask


#: The vocabulary of the class-bank loss: every thing class, then every stuff kind.
VOCABULARY: tuple[str, ...] = (*CLASSES, *STUFF)


#: ``training_pair`` draws ``default_rng([seed, 7]).random()`` first and makes a prompted view
#: when it is at least this (scenes.py); the classifier mix keeps those pairs and only some
#: others, without generating the pairs it skips.
PROMPTED_FROM = 0.58

#: Pair mixes: the share of non-prompted pairs (whole scenes, crops, plain stuff) kept.
MIXES: dict[str, float] = {"all": 1.0, "classifier": 0.35}


def keeps_pair(seed: int, mix: str) -> bool:
    """Whether ``mix`` trains on ``training_pair(seed)`` (decided without generating it)."""
    share = MIXES[mix]
    if share >= 1.0:
        return True
    if float(np.random.default_rng([seed, 7]).random()) >= PROMPTED_FROM:
        return True
    return float(np.random.default_rng([seed, 11]).random()) < share


class PairBatches(torch.utils.data.IterableDataset):
    """Training batches in a fixed order, whatever the number of data workers.

    Every worker replays the whole (cheap) schedule of seeds and templates and builds only its
    own steps (step % workers == worker id); the DataLoader interleaves them in step order.
    ``start_step`` skips the first steps (resuming a run). ``mix`` picks the pair mix (MIXES).
    """

    def __init__(
        self,
        seed: int,
        batch: int,
        side: int,
        hires_every: int = 3,
        mix: str = "all",
        start_step: int = 0,
    ) -> None:
        if mix not in MIXES:
            raise ValueError(f"mix must be one of {sorted(MIXES)}, got {mix!r}")
        self.seed, self.batch, self.side, self.hires_every = seed, batch, side, hires_every
        self.mix, self.start_step = mix, start_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng(self.seed)
        next_seed = int(rng.integers(0, TRAIN_SEED_LIMIT))
        index = {name: i for i, name in enumerate(VOCABULARY)}
        step = 0
        while True:
            # every few steps a third of a batch at twice the side: the CAM's resolution
            hires = self.hires_every > 0 and step % self.hires_every == self.hires_every - 1
            n = self.batch // 3 if hires else self.batch
            seeds = []
            while len(seeds) < n:
                if keeps_pair(next_seed, self.mix):
                    seeds.append(next_seed)
                next_seed = (next_seed + 1) % TRAIN_SEED_LIMIT
            templates = [
                str(rng.choice(CAPTION_TEMPLATES if i < len(CLASSES) else STUFF_TEMPLATES))
                for i in range(len(VOCABULARY))
            ]
            mine = step >= self.start_step and (step - self.start_step) % workers == wid
            step += 1
            if not mine:
                continue
            pairs = [training_pair(s) for s in seeds]
            targets = torch.zeros(n, len(VOCABULARY))
            for row, pair in enumerate(pairs):
                for label in pair.labels:
                    targets[row, index[label]] = 1.0 / len(pair.labels)
            yield {
                "pixels": to_pixels(
                    [p.image for p in pairs], 2 * self.side if hires else self.side
                ),
                "captions": [p.caption for p in pairs],
                "keys": [p.key for p in pairs],
                "targets": targets,
                "bank": [t.format(name) for t, name in zip(templates, VOCABULARY, strict=True)],
            }
