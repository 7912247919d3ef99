"""Contrastive image-text training of the miniature CLIP on generated scenes.

Run: ``python -m cliprnn.dev.mini_clip.train --seed 0 --steps 5000 --out DIR`` (or ``--minutes M``
for a wall-time budget); ``--role classifier`` with a larger ``--width``/``--image-size`` trains
the classifier model. ``--init DIR/checkpoint --resume`` continues a stopped run.
Only image-text pairs are used (no mask supervision); prompted views are drawn by the engine's
own ``apply_visual_prompts``, exactly as CaR shows them to the classifier. Three image
embeddings are trained: the final CLS token (standard CLIP), the penultimate block's CLS token
(what CaR's faithful classifier reads) and the mean of the final patch tokens (what CaR's
Grad-CAM head reads). Each gets a caption InfoNCE and a cross-entropy against the whole
vocabulary's texts.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer

from cliprnn.dev.mini_clip.data import (
    TRAIN_SEED_LIMIT,
    PairBatches,
    TextCache,
)
from cliprnn.dev.mini_clip.losses import (
    HEADS,
    bank_loss,
    contrastive_loss,
    image_embeddings,
    text_embeddings,
)
from cliprnn.dev.mini_clip.model import mini_clip_config, save_clip_folder
from cliprnn.dev.scenes import STUFF


def bilinear_pos_encoding(embeddings: torch.nn.Module):
    """Replacement for CLIPVisionEmbeddings.interpolate_pos_encoding: bilinear, like CaR."""

    def interpolate(_emb: torch.Tensor, height: int, width: int) -> torch.Tensor:
        pos = embeddings.position_embedding.weight
        grid = math.isqrt(pos.shape[0] - 1)
        gh, gw = height // embeddings.patch_size, width // embeddings.patch_size
        patch = pos[1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        if (gh, gw) != (grid, grid):
            patch = F.interpolate(patch, size=(gh, gw), mode="bilinear", align_corners=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([pos[:1].unsqueeze(0), patch], dim=1)

    return interpolate


def lr_at(progress: float, base: float, warmup: float = 0.03) -> float:
    if progress < warmup:
        return base * progress / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


STATE_FILE = "train_state.pt"

#: Set by SIGTERM under the CLI: the loop stops after its current step and checkpoints.
STOP = threading.Event()


def make_optimizer(model: CLIPModel, lr: float) -> torch.optim.AdamW:
    """AdamW (CLIP's betas and eps); no weight decay on embeddings, biases and norms."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def train_step(
    model: CLIPModel,
    opt: torch.optim.Optimizer,
    data: dict,
    tokens: TextCache,
    heads: tuple[str, ...],
    autocast,
    dev: torch.device,
) -> dict[str, torch.Tensor]:
    """One optimizer step on a ``PairBatches`` batch; returns the (detached) losses by name."""
    n = len(data["captions"])
    ids, mask = tokens(data["captions"] + data["bank"])
    with autocast:
        imgs = image_embeddings(model, data["pixels"].to(dev, non_blocking=True), heads)
        txt = text_embeddings(model, ids.to(dev), mask.to(dev))
    captions, bank = txt[:n], txt[n:]
    targets = data["targets"].to(dev)
    scale = model.logit_scale.exp().clamp(max=100)
    losses = {k: contrastive_loss(v, captions, data["keys"], scale) for k, v in imgs.items()}
    losses.update({f"{k}_bank": bank_loss(v, bank, targets, scale) for k, v in imgs.items()})
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return {k: v.detach() for k, v in losses.items()}


#: Autocast dtypes of --dtype; "auto" is bfloat16 on CUDA and CPU_DTYPE on the CPU.
DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}

#: The CPU default: float32. On the 2-core AMD EPYC (Zen 3, AVX2, no AVX-512/AMX) that trains
#: these models bfloat16 autocast was slower (docs/mini_clip.md, "Training speed").
CPU_DTYPE = "float32"


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--dtype name`` on ``device`` (None: plain float32)."""
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else CPU_DTYPE
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


#: Validation scenes (training seeds, never the benchmark's): the best checkpoint is kept by
#: their score. Disjoint from tune.py's default 999000+ and evaluate's 990000+ training checks.
VAL_SEEDS = range(998_000, 998_064)


def validate(folder: Path, role: str, seeds: range) -> dict[str, float]:
    """A checkpoint's validation score on training seeds (higher is better: ``score``).

    ``both``/proposal: CaR's oracle-query mIoU (only the present classes queried, one step) with
    the checkpoint as the proposal model and the shipped classifier; ``classifier``: prompted
    top-1 (faithful tower, the ``mini`` preset's prompts) of the checkpoint as the classifier.
    """
    if max(seeds) >= TRAIN_SEED_LIMIT:
        raise ValueError("validate on training seeds only (below 1,000,000)")
    if role == "classifier":
        from cliprnn.config import MINI_PRESET
        from cliprnn.dev.mini_clip.evaluate import prompt_classification

        out = prompt_classification(folder, seeds, MINI_PRESET["visual_prompts"])
        return {"score": 100 * out["prompted_top1"], **out}
    from cliprnn.assets import mini_model_paths
    from cliprnn.config import CaRConfig
    from cliprnn.dev.bench.accuracy import run_accuracy_benchmark

    config = CaRConfig.preset(
        "mini",
        proposal_model=str(folder),
        classifier_model=str(mini_model_paths()[1]),
        background_words=STUFF,
        device="cpu",
    )
    report = run_accuracy_benchmark(seeds, config, variants=("oracle_queries",), resamples=200)
    return {
        "score": report["oracle_queries_miou"],
        "oracle_queries_miou_ci": report["oracle_queries_miou_ci"],
        "seconds": report["seconds"],
    }


def train(
    seed: int,
    minutes: float,
    out: Path,
    tokenizer_dir: Path,
    batch: int = 96,
    lr: float = 2e-3,
    threads: int = 2,
    max_steps: int | None = None,
    model_kwargs: dict | None = None,
    init: Path | None = None,
    log: Callable[[str], None] = print,
    *,
    device: str = "cpu",
    workers: int = 1,
    mix: str = "all",
    heads: tuple[str, ...] = HEADS,
    hires_every: int = 3,
    checkpoint_minutes: float = 5.0,
    resume: bool = False,
    stop_at: int | None = None,
    dtype: str = "auto",
    compile_model: bool = False,
    log_every: int = 50,
    val_role: str | None = None,
    val_seeds: range = VAL_SEEDS,
) -> CLIPModel:
    """Train for ``minutes`` of wall time (or ``max_steps``); checkpoint to ``out`` regularly.

    Each image embedding in ``heads`` gets two contrastive losses: InfoNCE against the batch's
    captions (pairs with equal keys are positives) and cross-entropy against the whole
    vocabulary. ``out/checkpoint`` (fp32 weights plus ``train_state.pt``: optimizer, step) is
    rewritten every ``checkpoint_minutes`` and when the run stops (``STOP``, set by SIGTERM
    under the CLI, stops it after the current step). ``init`` starts from a saved model (a fresh
    schedule); with ``resume`` and a checkpoint folder as ``init``, the run continues where
    that checkpoint stopped (same schedule, optimizer state, next batches). The same code runs
    on CUDA (``device="cuda"``, bfloat16 autocast) with more data ``workers``. ``stop_at``
    stops at that step without changing the schedule (an interrupted run, for tests).
    ``dtype``: autocast (``autocast_dtype``); ``compile_model``: ``torch.compile`` both towers.
    With ``val_role`` set, each checkpoint is scored on ``val_seeds`` (``validate``); the best
    one so far is copied to ``out/best`` (scores in ``out/val.jsonl``, the best in
    ``out/best/val.json``).
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = pick_device(device)
    if init is not None:
        model = CLIPModel.from_pretrained(init, dtype=torch.float32)
    else:
        model = CLIPModel(mini_clip_config(**(model_kwargs or {})))
        with torch.no_grad():  # a sharper start than CLIP's 1/0.07 learns faster on small data
            model.logit_scale.fill_(math.log(20.0))
    model.to(dev)
    model.vision_model.embeddings.interpolate_pos_encoding = bilinear_pos_encoding(
        model.vision_model.embeddings
    )
    tokens = TextCache(CLIPTokenizer.from_pretrained(tokenizer_dir))
    opt = make_optimizer(model, lr)
    step, seen, spent, best = 0, 0, 0.0, -math.inf
    state_path = Path(init) / STATE_FILE if init is not None else None
    if resume:
        if state_path is None or not state_path.exists():
            raise SystemExit(f"--resume needs a checkpoint folder with {STATE_FILE} as --init")
        state = torch.load(state_path, map_location=dev, weights_only=False)
        opt.load_state_dict(state["optimizer"])
        step, seen, spent = state["step"], state["seen"], state["seconds"]
        best = state.get("best_score", best)
        max_steps = state["max_steps"] if max_steps is None else max_steps
        log(f"resumed at step {step} ({seen} pairs, {spent:.0f}s)")
    batches = torch.utils.data.DataLoader(
        PairBatches(
            seed,
            batch,
            model.config.vision_config.image_size,
            hires_every=hires_every,
            mix=mix,
            start_step=step,
        ),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=dev.type == "cuda",
    )
    amp = autocast_dtype(dtype, dev)
    autocast = torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None)
    if compile_model:
        model.vision_model.compile()
        model.text_model.compile()

    def checkpoint() -> None:
        nonlocal best
        at = time.time()
        folder = save_clip_folder(model, out / "checkpoint", tokenizer_dir, dtype=torch.float32)
        torch.save(
            {
                "optimizer": opt.state_dict(),
                "step": step,
                "seen": seen,
                "seconds": spent + time.time() - start,
                "max_steps": max_steps,
                "seed": seed,
                "best_score": best,
            },
            folder / STATE_FILE,
        )
        log(f"checkpoint at step {step}")
        if val_role is None:
            return
        model.eval()
        with torch.no_grad():
            scores = validate(folder, val_role, val_seeds)
        model.train()
        row = {"step": step, "seen": seen, "train_seconds": round(spent + at - start), **scores}
        with open(out / "val.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if scores["score"] > best:
            best = scores["score"]
            shutil.copytree(folder, out / "best", dirs_exist_ok=True)
            (out / "best" / STATE_FILE).unlink()
            (out / "best" / "val.json").write_text(json.dumps(row, indent=2))
            state = torch.load(folder / STATE_FILE, weights_only=False)
            state["best_score"] = best
            torch.save(state, folder / STATE_FILE)
        log(
            f"validation at step {step}: {scores['score']:.2f} (best {best:.2f}, "
            f"{time.time() - at:.0f}s)"
        )

    budget = minutes * 60.0
    start = last_ckpt = time.time()
    ckpt_step = step
    for data in batches:
        elapsed = time.time() - start
        if elapsed >= budget or (max_steps is not None and step >= max_steps):
            break
        if (stop_at is not None and step >= stop_at) or STOP.is_set():
            break
        seen += len(data["keys"])
        # a step budget makes the schedule (and so the run) independent of machine speed
        progress = step / max_steps if max_steps else elapsed / budget
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, lr)
        losses = train_step(model, opt, data, tokens, heads, autocast, dev)
        if step % log_every == 0:
            parts = " ".join(f"{k}={v.item():.3f}" for k, v in losses.items())
            loss = sum(losses.values())
            scale = model.logit_scale.exp().clamp(max=100)
            log(
                f"step {step} t={spent + elapsed:.0f}s seen={seen} "
                f"loss={loss.item():.3f} {parts} scale={scale.item():.1f} "
                f"lr={opt.param_groups[0]['lr']:.2e}"
            )
        step += 1
        if time.time() - last_ckpt > 60.0 * checkpoint_minutes:
            checkpoint()
            last_ckpt, ckpt_step = time.time(), step
    if STOP.is_set():
        log(f"stopped by a signal at step {step}")
    if step > ckpt_step:  # the time budget or a signal ended the run: keep it resumable
        checkpoint()
    total = spent + time.time() - start
    log(f"done: {step} steps, {seen} pairs, {total:.0f}s")
    stats = {"steps": step, "pairs": seen, "train_seconds": round(total, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_stats.json").write_text(json.dumps(stats))
    return model.cpu()


def main(argv: list[str] | None = None) -> None:
    """CLI: train, then save the proposal and classifier folders (fp16) under --out."""
    from cliprnn.assets import tokenizer_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, default=tokenizer_dir())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", type=Path, help="start from this CLIPModel folder")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="with --init OUT/checkpoint: continue that run (its step, schedule and optimizer)",
    )
    ap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    ap.add_argument("--workers", type=int, default=1, help="data worker processes")
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", *DTYPES),
        help=f"autocast dtype (auto: bfloat16 on CUDA, {CPU_DTYPE} on the CPU)",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile both towers")
    ap.add_argument("--log-every", type=int, default=50, help="log the losses every N steps")
    ap.add_argument(
        "--val-seeds",
        default=f"{VAL_SEEDS.start}:{VAL_SEEDS.stop}",
        help="START:END training seeds scored at each checkpoint (best kept in OUT/best); "
        "'none' to skip",
    )
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    ap.add_argument("--width", type=int, default=64, help="width of both towers (x64 = heads)")
    ap.add_argument("--text-width", type=int, default=None, help="text tower width (= --width)")
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--text-layers", type=int, default=4)
    ap.add_argument("--patch", type=int, default=8, help="patch size of the image tower")
    ap.add_argument("--projection-dim", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64, help="the image tower's input side")
    ap.add_argument(
        "--role",
        choices=("both", "classifier"),
        default="both",
        help="classifier: prompted-view-heavy pairs (MIXES), the CLS heads only, no 2x batches",
    )
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument(
        "--hires-every",
        type=int,
        default=3,
        help="every N-th batch a third of the size at twice the side (0: never; the "
        "classifier role never)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="stop after this many steps; the schedule then follows steps, not time",
    )
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # `kill PID` (or the end of a session) stops after the current step, with a checkpoint
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    with open(args.out / "train.log", "a", buffering=1) as logf:

        def log(msg: str) -> None:
            print(msg, flush=True)
            logf.write(msg + "\n")

        log(
            f"train: seed={args.seed} minutes={args.minutes} steps={args.steps} "
            f"role={args.role} torch={torch.__version__} args={vars(args)}"
        )
        start = time.time()
        model = train(
            args.seed,
            args.minutes,
            args.out,
            args.tokenizer,
            threads=args.threads,
            max_steps=args.steps,
            lr=args.lr,
            init=args.init,
            batch=args.batch,
            model_kwargs={
                "width": args.width,
                "text_width": args.text_width,
                "vision_layers": args.vision_layers,
                "text_layers": args.text_layers,
                "patch_size": args.patch,
                "projection_dim": args.projection_dim,
                "image_size": args.image_size,
            },
            log=log,
            device=args.device,
            workers=args.workers,
            checkpoint_minutes=args.checkpoint_minutes,
            resume=args.resume,
            dtype=args.dtype,
            compile_model=args.compile,
            log_every=args.log_every,
            val_role=None if args.val_seeds == "none" else args.role,
            val_seeds=VAL_SEEDS
            if args.val_seeds == "none"
            else range(*(int(x) for x in args.val_seeds.split(":"))),
            **(
                {"mix": "classifier", "heads": ("cls", "penultimate"), "hires_every": 0}
                if args.role == "classifier"
                else {"hires_every": args.hires_every}
            ),
        )
        roles = ("classifier",) if args.role == "classifier" else ("proposal", "classifier")
        for role in roles:
            save_clip_folder(model, args.out / role, args.tokenizer)
        info = {
            "role": args.role,
            "seed": args.seed,
            "minutes": args.minutes,
            "max_steps": args.steps,
            "wall_seconds": round(time.time() - start, 1),
        }
        stats = args.out / "train_stats.json"
        if stats.exists():
            info.update(json.loads(stats.read_text()))
        (args.out / "train_info.json").write_text(json.dumps(info, indent=2))
        log(json.dumps(info))


if __name__ == "__main__":
    main()
