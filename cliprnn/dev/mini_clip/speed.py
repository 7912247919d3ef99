"""Training-step speed of the CPU paths, measured interleaved so a shared machine's load hits
every configuration alike.

Run: ``python -m cliprnn.dev.mini_clip.speed MODEL_DIR --rounds 4``. Each configuration trains its
own copy of the model (same start, same batches in the same order) with ``train_step``; the
rounds alternate between configurations, one step each, and the median seconds per step and per
pair are reported, with each configuration's losses against the first's (a dtype that trains
gives close losses over equal steps). The batches are generated beforehand (data generation
runs in a separate worker process during training), a hires batch every ``--hires-every``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from contextlib import nullcontext

import torch
from transformers import CLIPModel, CLIPTokenizer

from cliprnn.assets import tokenizer_source
from cliprnn.dev.mini_clip.data import PairBatches, TextCache
from cliprnn.dev.mini_clip.losses import HEADS
from cliprnn.dev.mini_clip.train import bilinear_pos_encoding, make_optimizer, train_step

#: name -> (threads, autocast dtype or None, channels_last, compile, batch multiple)
CONFIGS: dict[str, tuple[int, torch.dtype | None, bool, bool, int]] = {
    "float32, 1 thread": (1, None, False, False, 1),
    "bfloat16 autocast, 1 thread": (1, torch.bfloat16, False, False, 1),
    "float32, 1 thread, channels-last": (1, None, True, False, 1),
    "float32, 2 threads": (2, None, False, False, 1),
    "float32, 1 thread, 2x batch": (1, None, False, False, 2),
    "bfloat16 autocast, 2 threads": (2, torch.bfloat16, False, False, 1),
}
COMPILED = {"float32, 1 thread, torch.compile": (1, None, False, True, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--rounds", type=int, default=4, help="timed steps per configuration")
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--hires-every", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--only", default="", help="configuration names separated by ;")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = ap.parse_args(argv)
    configs = dict(CONFIGS, **(COMPILED if args.compile else {}))
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only.split(";")}
    base = CLIPModel.from_pretrained(args.model_dir, dtype=torch.float32)
    tokens = TextCache(CLIPTokenizer.from_pretrained(tokenizer_source(args.model_dir)))
    side = base.config.vision_config.image_size
    steps = args.rounds + 1  # the first step of each configuration is a warm-up
    batches = {}
    for mult in sorted({c[4] for c in configs.values()}):
        it = iter(PairBatches(1, args.batch * mult, side, hires_every=args.hires_every))
        batches[mult] = [next(it) for _ in range(steps)]
    runs = {}
    for name, (_, _, _, compiled, _) in configs.items():
        torch.manual_seed(0)
        model = copy.deepcopy(base).train()
        emb = model.vision_model.embeddings
        emb.interpolate_pos_encoding = bilinear_pos_encoding(emb)
        if compiled:
            model.vision_model.compile()
            model.text_model.compile()
        runs[name] = {"model": model, "opt": make_optimizer(model, args.lr), "t": [], "loss": []}
    for i in range(steps):
        for name, (threads, amp, last, _, mult) in configs.items():
            torch.set_num_threads(threads)
            run, data = runs[name], dict(batches[mult][i])
            if last:
                data["pixels"] = data["pixels"].contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast("cpu", dtype=amp) if amp is not None else nullcontext()
            start = time.perf_counter()
            losses = train_step(
                run["model"], run["opt"], data, tokens, HEADS, ctx, torch.device("cpu")
            )
            run["t"].append(time.perf_counter() - start)
            run["loss"].append(float(sum(losses.values())))
    first = next(iter(runs.values()))
    for name, run in runs.items():
        mult = configs[name][4]
        pairs = [len(b["keys"]) for b in batches[mult][1:]]
        per_step = statistics.median(run["t"][1:])
        diff = max(abs(a - b) for a, b in zip(run["loss"], first["loss"], strict=True))
        row = {
            "config": name,
            "seconds_per_step": round(per_step, 3),
            "pairs_per_second": round(sum(pairs) / sum(run["t"][1:]), 1),
            "first_step_seconds": round(run["t"][0], 1),
            "losses": [round(x, 3) for x in run["loss"]],
            "max_loss_difference_to_first": round(diff, 4) if mult == 1 else None,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
