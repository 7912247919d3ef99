"""The miniature CLIP: its architecture, the training loop, and the shipped checkpoints."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cliprnn.assets import mini_model_paths, tokenizer_dir, tokenizer_source
from cliprnn.dev.mini_clip.model import mini_clip_config

SHIPPED = mini_model_paths()
shipped = pytest.mark.skipif(
    not all((p / "model.safetensors").exists() for p in SHIPPED),
    reason="the trained miniature CLIP is not in cliprnn/assets/mini_clip yet",
)


def test_config_is_a_scaled_down_openai_vit_clip() -> None:
    cfg = mini_clip_config()
    for tower in (cfg.text_config, cfg.vision_config):
        assert tower.hidden_act == "quick_gelu"
        assert tower.hidden_size // tower.num_attention_heads == 64
        assert tower.intermediate_size == 4 * tower.hidden_size
    assert cfg.text_config.vocab_size == 49408
    assert cfg.text_config.max_position_embeddings == 77
    assert cfg.text_config.eos_token_id == 49407
    assert cfg.vision_config.image_size % cfg.vision_config.patch_size == 0
    assert cfg.projection_dim == cfg.vision_config.projection_dim


def test_training_steps_are_seeded(tmp_path: Path) -> None:
    from cliprnn.dev.mini_clip.train import train

    logs: list[str] = []
    tiny = dict(width=64, vision_layers=1, text_layers=1, image_size=32, projection_dim=32)

    def run() -> torch.Tensor:
        model = train(0, 60.0, tmp_path, tokenizer_dir(), batch=8, lr=1e-3, max_steps=2,
                      model_kwargs=tiny, log=logs.append)  # fmt: skip
        return model.visual_projection.weight.detach().clone()

    a, b = run(), run()
    assert torch.equal(a, b)
    assert any("step 0" in line for line in logs)
    assert "done: 2 steps, 16 pairs" in logs[-1]


def test_batches_are_seeded_and_label_the_whole_vocabulary() -> None:
    from cliprnn.dev.mini_clip.data import VOCABULARY, PairBatches
    from cliprnn.dev.scenes import CLASSES, STUFF

    def first(n: int) -> list[dict]:
        it = iter(PairBatches(3, batch=9, side=32))
        return [next(it) for _ in range(n)]

    a, b = first(3), first(3)
    assert [x["captions"] for x in a] == [x["captions"] for x in b]
    assert torch.equal(a[2]["pixels"], b[2]["pixels"])
    assert [tuple(x["pixels"].shape) for x in a] == [(9, 3, 32, 32)] * 2 + [(3, 3, 64, 64)]
    assert (*CLASSES, *STUFF) == VOCABULARY
    for batch in a:
        targets = batch["targets"]
        assert targets.shape == (len(batch["captions"]), len(VOCABULARY))
        torch.testing.assert_close(targets.sum(1), torch.ones(len(targets)))
        assert all(name in text for name, text in zip(VOCABULARY, batch["bank"], strict=True))


def test_classifier_mix_keeps_prompted_views_without_generating_pairs() -> None:
    from cliprnn.dev.mini_clip.data import keeps_pair
    from cliprnn.dev.scenes import training_pair

    seeds = range(200)
    kinds = {s: training_pair(s).kind for s in seeds}
    assert all(keeps_pair(s, "all") for s in seeds)
    kept = [s for s in seeds if keeps_pair(s, "classifier")]
    assert all(s in kept for s in seeds if kinds[s] == "prompt")
    share = sum(kinds[s] == "prompt" for s in kept) / len(kept)
    assert share > 0.6 > sum(k == "prompt" for k in kinds.values()) / len(kinds)


def test_batches_do_not_depend_on_workers_or_resuming() -> None:
    from cliprnn.dev.mini_clip.data import PairBatches

    def first(n: int, workers: int = 0, start: int = 0) -> list[dict]:
        data = PairBatches(5, batch=6, side=32, mix="classifier", start_step=start)
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers)
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                return out
        return out

    alone, shared, resumed = first(4), first(4, workers=2), first(2, start=2)
    assert [b["captions"] for b in alone] == [b["captions"] for b in shared]
    assert [b["captions"] for b in alone[2:]] == [b["captions"] for b in resumed]
    assert torch.equal(alone[3]["pixels"], resumed[1]["pixels"])


def test_resuming_a_checkpoint_continues_the_same_run(tmp_path: Path) -> None:
    from cliprnn.dev.mini_clip.train import STATE_FILE, train

    tiny = dict(width=64, vision_layers=1, text_layers=1, image_size=32, projection_dim=32)
    common = dict(batch=4, lr=1e-3, model_kwargs=tiny, log=lambda _: None, workers=0)
    straight = train(0, 60.0, tmp_path / "a", tokenizer_dir(), max_steps=3, **common)
    # checkpoint after every step, stop after 2 of the 3 steps' schedule, then resume
    train(0, 60.0, tmp_path / "b", tokenizer_dir(), max_steps=3, checkpoint_minutes=0.0,
          stop_at=2, **common)  # fmt: skip
    state = torch.load(tmp_path / "b" / "checkpoint" / STATE_FILE, weights_only=False)
    assert state["step"] == 2 and state["max_steps"] == 3
    resumed = train(0, 60.0, tmp_path / "c", tokenizer_dir(), init=tmp_path / "b" / "checkpoint",
                    resume=True, **common)  # fmt: skip
    torch.testing.assert_close(
        resumed.visual_projection.weight, straight.visual_projection.weight, atol=1e-6, rtol=0
    )


def test_a_grown_tower_starts_as_the_source_model() -> None:
    from transformers import CLIPModel

    from cliprnn.dev.mini_clip.model import grow_vision_tower

    torch.manual_seed(0)
    source = CLIPModel(mini_clip_config(vision_layers=2, text_layers=1, image_size=32)).eval()
    grown = grow_vision_tower(source, vision_layers=4, image_size=32).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = source.vision_model(pixel_values=pixels)
        b = grown.vision_model(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(b.pooler_output, a.pooler_output)
    torch.testing.assert_close(b.hidden_states[-2], a.last_hidden_state)  # the faithful input
    bigger = grow_vision_tower(source, vision_layers=4, image_size=48)
    assert bigger.config.vision_config.image_size == 48
    assert bigger.vision_model.embeddings.position_embedding.weight.shape[0] == 36 + 1
    torch.testing.assert_close(
        bigger.text_model.embeddings.token_embedding.weight,
        source.text_model.embeddings.token_embedding.weight,
    )


def test_a_widened_tower_has_more_heads_and_the_same_embeddings() -> None:
    from transformers import CLIPModel

    from cliprnn.dev.mini_clip.losses import image_embeddings
    from cliprnn.dev.mini_clip.model import widen_vision_tower

    torch.manual_seed(0)
    source = CLIPModel(mini_clip_config(vision_layers=2, text_layers=1, image_size=32)).eval()
    wide = widen_vision_tower(source, 192).eval()
    assert wide.config.vision_config.num_attention_heads == 3
    assert wide.config.vision_config.intermediate_size == 4 * 192
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = image_embeddings(source, pixels), image_embeddings(wide, pixels)
        noisy = image_embeddings(widen_vision_tower(source, 192, noise=0.05).eval(), pixels)
    for head in a:
        torch.testing.assert_close(b[head], a[head], atol=1e-5, rtol=0)
        # the noise breaks the copies' symmetry and moves the embeddings only a little
        assert 0 < (noisy[head] - a[head]).abs().max() < 0.2
    torch.testing.assert_close(
        wide.text_model.embeddings.token_embedding.weight,
        source.text_model.embeddings.token_embedding.weight,
    )
    with pytest.raises(ValueError, match="multiple"):
        widen_vision_tower(source, 96)


def test_prompted_pairs_are_drawn_by_the_inference_drawer() -> None:
    from cliprnn.dev.mini_clip.data import PairBatches, to_pixels
    from cliprnn.dev.scenes import training_pair
    from cliprnn.visual_prompts import apply_visual_prompts

    calls: list[tuple[str, ...]] = []

    def recording(image, mask, prompts):
        calls.append(tuple(prompts))
        return apply_visual_prompts(image, mask.astype(np.float32), tuple(prompts), 0.5)

    seeds = range(60)
    default = [training_pair(s) for s in seeds]
    recorded = [training_pair(s, draw=recording) for s in seeds]
    prompted = [i for i, p in enumerate(default) if p.kind == "prompt"]
    assert len(calls) == len(prompted) > 10
    # by default prompted views are CaR's own drawing: the very pixels the classifier sees
    for a, b in zip(default, recorded, strict=True):
        assert (a.caption, a.labels) == (b.caption, b.labels)
        np.testing.assert_array_equal(a.image, b.image)
    # what the training batches hold is that drawing
    batch = next(iter(PairBatches(11, batch=6, side=32, hires_every=0)))
    rng = np.random.default_rng(11)
    first = int(rng.integers(0, 1_000_000))
    pairs = [training_pair(s) for s in range(first, first + 6)]
    assert batch["captions"] == [p.caption for p in pairs]
    torch.testing.assert_close(batch["pixels"], to_pixels([p.image for p in pairs], 32))


def test_a_stopped_run_leaves_a_checkpoint_to_resume(tmp_path: Path) -> None:
    from cliprnn.dev.mini_clip.train import STATE_FILE, STOP, train

    tiny = dict(width=64, vision_layers=1, text_layers=1, image_size=32, projection_dim=32)

    def log(line: str) -> None:  # what SIGTERM does under the CLI, during step 0
        if line.startswith("step 0"):
            STOP.set()

    try:
        train(0, 60.0, tmp_path, tokenizer_dir(), batch=4, lr=1e-3, max_steps=50,
              model_kwargs=tiny, log=log, workers=0, log_every=1,
              checkpoint_minutes=1000.0)  # fmt: skip
    finally:
        STOP.clear()
    state = torch.load(tmp_path / "checkpoint" / STATE_FILE, weights_only=False)
    assert state["step"] == 1 and state["max_steps"] == 50


def test_cpu_autocast_dtype_trains_and_validation_keeps_the_best(tmp_path: Path) -> None:
    from cliprnn.dev.mini_clip.train import STATE_FILE, autocast_dtype, train, validate

    assert autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert autocast_dtype("float32", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="dtype"):
        autocast_dtype("float16", torch.device("cpu"))
    tiny = dict(width=64, vision_layers=1, text_layers=1, image_size=32, projection_dim=32)
    model = train(0, 60.0, tmp_path, tokenizer_dir(), batch=6, lr=1e-3, max_steps=2,
                  model_kwargs=tiny, log=lambda _: None, workers=0, dtype="bfloat16",
                  checkpoint_minutes=0.0, val_role="classifier",
                  val_seeds=range(998_000, 998_003))  # fmt: skip
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    best = json.loads((tmp_path / "best" / "val.json").read_text())
    assert best["score"] == max(r["score"] for r in rows)
    assert (tmp_path / "best" / "model.safetensors").exists()
    assert not (tmp_path / "best" / STATE_FILE).exists()
    state = torch.load(tmp_path / "checkpoint" / STATE_FILE, weights_only=False)
    assert state["best_score"] == best["score"]
    with pytest.raises(ValueError, match="training seeds"):
        validate(tmp_path / "best", "classifier", range(10_000_000, 10_000_002))


def test_bank_loss_prefers_the_labelled_text() -> None:
    from cliprnn.dev.mini_clip.losses import bank_loss

    bank = torch.eye(3)
    targets = torch.tensor([[0.0, 1.0, 0.0]])
    right = bank_loss(torch.tensor([[0.0, 1.0, 0.0]]), bank, targets, torch.tensor(10.0))
    wrong = bank_loss(torch.tensor([[1.0, 0.0, 0.0]]), bank, targets, torch.tensor(10.0))
    assert right < 0.01 < 9 < wrong


def _safetensors_dtypes(path: Path) -> set[str]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


@shipped
def test_shipped_files_are_small_fp16_and_complete() -> None:
    total = 0
    for folder in SHIPPED:
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors"} <= names
        # the tokenizer ships once, in cliprnn/assets/tokenizer; the loader falls back to it
        assert not names & {"vocab.json", "merges.txt"}
        assert _safetensors_dtypes(folder / "model.safetensors") == {"F16"}
        total += sum(p.stat().st_size for p in folder.iterdir())
    assert total <= 40 * 1024 * 1024


@shipped
def test_shipped_model_loads_like_a_hub_model() -> None:
    from transformers import CLIPModel, CLIPTokenizer

    from cliprnn.clip_backend import ClipBackend

    for folder in SHIPPED:
        model = CLIPModel.from_pretrained(folder)
        assert model.config.vision_config.hidden_act == "quick_gelu"
        tok = CLIPTokenizer.from_pretrained(tokenizer_source(folder))
        # the standard CLIP BPE ids (OpenAI's tokenizer gives exactly these)
        assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        backend = ClipBackend.load(str(folder), role="proposal")
        emb = backend.encode_text(["a red circle", "a blue star"])
        assert emb.shape == (2, model.config.projection_dim)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-4)


@shipped
def test_mini_preset_points_at_the_shipped_folders() -> None:
    from transformers import CLIPConfig

    from cliprnn.car import CaR
    from cliprnn.config import CaRConfig

    cfg = CaRConfig.preset("mini", device="cpu")
    assert Path(cfg.proposal_model) == SHIPPED[0]
    assert Path(cfg.classifier_model) == SHIPPED[1]
    car = CaR(cfg).load()
    assert car.proposal_backend.image_size == 64
    # the classifier is read at its own model's input size (64 px for the shipped one)
    size = CLIPConfig.from_pretrained(SHIPPED[1]).vision_config.image_size
    assert car.classifier_backend.image_size == size


@shipped
def test_shipped_model_reads_visual_prompts() -> None:
    from cliprnn.dev.mini_clip.evaluate import prompt_classification

    # 24 classes: chance is ~4 %; the shipped model gets 47 % (30 scenes), far above it
    metrics = prompt_classification(SHIPPED[1], range(990_000, 990_030))
    assert metrics["objects"] >= 60
    assert metrics["prompted_top1"] >= 0.3, metrics
    assert metrics["stuff_max_prob"] < 0.5, metrics  # no class is confident on stuff (0.36)
