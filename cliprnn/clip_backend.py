"""One loaded CLIP model (Hugging Face ``CLIPModel``) and the tensor passes CaR needs from it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cliprnn.compact import align_weights, compact_parameter_count, upcast_once
from cliprnn.compact import compact_weights as _compact_weights
from cliprnn.errors import ConfigError, ModelLoadError
from cliprnn.text_cache import TextCache, entry_key, resolve_text_cache_dir, weights_digest

VOCAB_SIZE = 49408
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DenseState:
    """The image tower's text-independent state for one CAM input."""

    tokens: torch.Tensor  # [1, n+1, D] input of the Grad-CAM block (no grad)
    affinity: torch.Tensor  # [n, n] head-averaged attention of the last blocks, CLS removed
    grid_hw: tuple[int, int]
    input_hw: tuple[int, int]
    cam_layer: int  # index of the Grad-CAM block (0-based, non-negative)


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from a config value ("auto" picks CUDA, then MPS, then CPU)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device: unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {device!r} was asked for but CUDA is not available in this torch "
            f"({torch.__version__}); use device='cpu' or 'auto'"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device: {device!r} was asked for but only {torch.cuda.device_count()} CUDA "
            "device(s) exist"
        )
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps and mps.is_available()):
        raise ConfigError(
            f"device: {device!r} was asked for but MPS is not available; use device='cpu' or 'auto'"
        )
    return dev


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """ToTensor then CLIP mean/std normalisation: [3, H, W] float32."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    x = x.permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


#: Largest dimensions a model folder's config.json may declare (ViT-bigG/14 fits), and the
#: most parameters they may add up to: checked before any weight is allocated.
MODEL_LIMITS = {
    "hidden_size": 4096,
    "intermediate_size": 16384,
    "num_hidden_layers": 64,
    "num_attention_heads": 64,
    "image_size": 1024,
    "max_position_embeddings": 1024,
    "vocab_size": 1_000_000,
}
MAX_MODEL_PARAMETERS = 3_000_000_000


def _check_model_size(config: dict[str, Any], what: str) -> None:
    """ModelLoadError when a CLIP config declares dimensions past MODEL_LIMITS (a corrupt or
    hostile config.json would otherwise allocate until memory runs out)."""
    total = 0
    for tower in ("text_config", "vision_config"):
        sub = config.get(tower) or {}
        for key, limit in MODEL_LIMITS.items():
            value = sub.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
                raise ModelLoadError(
                    f"{what}: {tower}.{key} = {value!r} is outside 1..{limit}; the config.json "
                    "is corrupt or not a CLIP this library can load"
                )
        width = int(sub.get("hidden_size", 768))
        inner = int(sub.get("intermediate_size", 4 * width))
        total += int(sub.get("num_hidden_layers", 12)) * (4 * width * width + 2 * width * inner)
        total += int(sub.get("vocab_size", 0)) * width
    if total > MAX_MODEL_PARAMETERS:
        raise ModelLoadError(
            f"{what}: its config.json declares about {total / 1e9:.1f} billion parameters, over "
            f"the limit of {MAX_MODEL_PARAMETERS / 1e9:g} billion; it is corrupt or too large"
        )


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or name.endswith((".safetensors", ".pt", ".pth", ".bin"))
    )


def _hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return "the Hugging Face cache"


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


class ClipBackend:
    """A frozen CLIP model with its tokenizer, computing in fp32 (or autocast on CUDA).

    With ``compact_weights`` the weights that are exact in fp16 (or bf16) are held in 16 bits
    and read back as fp32 by each layer when it runs: half the memory, the same output.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        role: str = "proposal",
        name: str = "",
        faithful: bool = True,
        cache_text: bool = True,
        compact_weights: bool = False,
        group_templates: bool = True,
        text_cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if compact_weights:
            _compact_weights(model)
        #: parameters (elements) held in 16 bits (0 when not compact)
        self.compact_parameters: int = compact_parameter_count(model)
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.role = role
        self.name = name
        self.faithful = faithful
        self.cache_text = cache_text
        #: embed each query's templates in one fixed forward pass (``encode_templates``)
        self.group_templates = group_templates
        #: the on-disk text cache's folder (None: memory only); used only with ``cache_text``
        self.text_cache_dir = resolve_text_cache_dir(text_cache_dir)
        vision = model.config.vision_config
        self.patch_size: int = int(vision.patch_size)
        self.image_size: int = int(vision.image_size)
        self.num_layers: int = int(vision.num_hidden_layers)
        self.context_length: int = int(model.config.text_config.max_position_embeddings)
        self.eot_token_id: int = int(model.config.text_config.eos_token_id)
        self._logit_scale = model.logit_scale.detach().float().exp()
        self.logit_scale: float = float(self._logit_scale)
        self._text_cache: dict[str, torch.Tensor] = {}  # one string per pass
        self._group_cache: dict[tuple[tuple[str, ...], str], torch.Tensor] = {}  # (templates, q)
        self._disk: TextCache | None = None
        self._disk_namespace: str | None = None
        self._disk_lock = threading.Lock()
        self._weights_hash: str | None = None
        #: wall seconds spent embedding texts (forward passes and disk cache reads)
        self.text_seconds = 0.0
        self._posemb_cache: dict[tuple[int, int], torch.Tensor] = {}
        #: exemplar query embeddings by (content key, kind) (``cliprnn.exemplars``)
        self.exemplar_cache: dict[tuple[str, str], torch.Tensor] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        role: str = "proposal",
        faithful: bool = True,
        cache_text: bool = True,
        compact_weights: bool = True,
        group_templates: bool = True,
        text_cache_dir: str | os.PathLike[str] | None = None,
    ) -> ClipBackend:
        """Load a CLIP by Hugging Face hub name or local ``CLIPModel`` folder.

        Raises ModelLoadError naming the role, the name, where it looked and how to use a local
        copy. Weights stay fp32; ``dtype`` float16/bfloat16 means autocast (see ``autocast``). With
        ``compact_weights``, weights exact in 16 bits are held in 16 bits. ``text_cache_dir`` (a
        ``CaRConfig.text_cache_dir`` value; None disables it) keeps text embeddings on disk.
        """
        from transformers import CLIPModel

        name = str(name_or_path)
        where, folder = cls._locate(name, role)
        try:
            model = CLIPModel.from_pretrained(
                where,
                attn_implementation="eager",
                dtype=torch.float32,
                trust_remote_code=False,
            )
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(cls._load_failure(name, role, folder, exc)) from exc
        text_vocab = int(model.config.text_config.vocab_size)
        if text_vocab != VOCAB_SIZE:
            raise ModelLoadError(
                f"{role} CLIP model {name!r}: text vocabulary of {text_vocab} tokens; only "
                f"OpenAI's {VOCAB_SIZE}-token BPE vocabulary is supported"
            )
        tokenizer = cls._load_tokenizer(folder, name, role)
        dev = resolve_device(device)
        model = model.eval().requires_grad_(False)
        align_weights(model)
        if compact_weights:  # before the move: the device copy is then the compact one
            _compact_weights(model)
        return cls(
            model.to(dev),
            tokenizer,
            device=dev,
            dtype=dtype,
            role=role,
            name=name,
            faithful=faithful,
            cache_text=cache_text,
            compact_weights=compact_weights,
            group_templates=group_templates,
            text_cache_dir=text_cache_dir,
        )

    @classmethod
    def from_config(cls, config: Any, role: str = "proposal") -> ClipBackend:
        """Load the proposal or classifier model named by a ``CaRConfig``."""
        if role not in ("proposal", "classifier"):
            raise ValueError(f"role must be 'proposal' or 'classifier', got {role!r}")
        name = config.proposal_model if role == "proposal" else config.classifier_model
        return cls.load(
            name,
            device=resolve_device(config.device),
            dtype=_DTYPES[config.dtype],
            role=role,
            faithful=config.faithful,
            cache_text=config.cache_text,
            compact_weights=config.compact_weights,
            group_templates=config.group_templates,
            text_cache_dir=config.text_cache_dir,
        )

    @staticmethod
    def _locate(name: str, role: str) -> tuple[str, Path | None]:
        """(what to pass to from_pretrained, the local folder or None for a hub name)."""
        path = Path(name).expanduser()
        hint = (
            "Pass a folder holding a Hugging Face CLIPModel (config.json + model.safetensors), "
            "or convert an OpenAI checkpoint with "
            "cliprnn.convert_openai_checkpoint(src, folder)."
        )
        if path.exists():
            path = path.resolve()
            if path.is_file():
                raise ModelLoadError(
                    f"{role} CLIP model {name!r}: {path} is a file, not a model folder. {hint}"
                )
            config_file = path / "config.json"
            if not config_file.is_file():
                raise ModelLoadError(
                    f"{role} CLIP model {name!r}: {path} is not a CLIP checkpoint folder "
                    f"(no config.json). {hint}"
                )
            try:
                model_type = json.loads(config_file.read_text()).get("model_type")
            except (OSError, ValueError) as exc:
                raise ModelLoadError(
                    f"{role} CLIP model {name!r}: cannot read {config_file}: {exc}"
                ) from exc
            if model_type != "clip":
                raise ModelLoadError(
                    f"{role} CLIP model {name!r}: {path} holds a {model_type!r} model, not a "
                    f"CLIP checkpoint (model_type 'clip'). {hint}"
                )
            _check_model_size(json.loads(config_file.read_text()), f"{role} CLIP model {name!r}")
            return str(path), path
        if _looks_like_path(name):
            raise ModelLoadError(
                f"{role} CLIP model {name!r}: local folder {path.resolve()} does not exist. {hint}"
            )
        if _offline() and not ClipBackend._hub_cached(name):
            raise ModelLoadError(
                f"{role} CLIP model {name!r} is not a local folder and is not in the Hugging "
                f"Face cache ({_hub_cache_dir()}), and the hub is offline (HF_HUB_OFFLINE). "
                f"{hint}"
            )
        return name, None

    @staticmethod
    def _hub_cached(name: str) -> bool:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "config.json")
        except Exception:
            return False
        return isinstance(found, str)

    @staticmethod
    def _load_failure(name: str, role: str, folder: Path | None, exc: Exception) -> str:
        where = str(folder) if folder else f"the Hugging Face hub and cache ({_hub_cache_dir()})"
        return (
            f"could not load the {role} CLIP model {name!r} from {where}: "
            f"{type(exc).__name__}: {exc}. Pass a folder holding a Hugging Face CLIPModel, or "
            "convert an OpenAI checkpoint with cliprnn.convert_openai_checkpoint(src, folder)."
        )

    @staticmethod
    def _load_tokenizer(folder: Path | None, name: str, role: str) -> Any:
        from transformers import CLIPTokenizer

        from cliprnn.assets import tokenizer_dir

        has_files = folder is not None and all(
            (folder / f).is_file() for f in ("vocab.json", "merges.txt")
        )
        source = folder if has_files else tokenizer_dir()
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(source))
        except Exception as exc:
            raise ModelLoadError(
                f"{role} CLIP model {name!r}: cannot load the tokenizer from {source}: {exc}"
            ) from exc
        if len(tokenizer) != VOCAB_SIZE:
            raise ModelLoadError(
                f"{role} CLIP model {name!r}: the tokenizer in {source} has {len(tokenizer)} "
                f"tokens, not CLIP's {VOCAB_SIZE}; its vocab.json/merges.txt are not the CLIP "
                "BPE files (remove them to use the bundled tokenizer)"
            )
        return tokenizer

    # ------------------------------------------------------------------ helpers
    @property
    def vision_layers(self) -> Any:
        """The image tower's encoder blocks (``CLIPEncoderLayer`` list)."""
        return self.model.vision_model.encoder.layers

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to ``dtype`` when a reduced precision is asked; else a no-op.

        CUDA takes float16 or bfloat16; a CPU takes bfloat16 only (fast where it has AMX or
        AVX-512 BF16 units), and computes in fp32 when float16 is asked.
        """
        if self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16):
            return torch.autocast(device_type="cuda", dtype=self.dtype)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _few_threads(self) -> contextlib.AbstractContextManager[Any]:
        """One CPU thread for passes made of many small operations (short texts).

        Each parallel operation waits for every worker thread; on a busy machine that wait,
        not the arithmetic, dominates small operations.
        """
        return _one_thread() if self.device.type == "cpu" else contextlib.nullcontext()

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """OpenAI ``clip.tokenize`` ids: [n, context] int64, zero after EOT (truncated to fit)."""
        ids = self.tokenizer(
            list(texts), truncation=True, max_length=self.context_length, add_special_tokens=True
        )["input_ids"]
        out = torch.zeros(len(ids), self.context_length, dtype=torch.long)
        for row, seq in enumerate(ids):
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out

    def _text_pass(self) -> contextlib.ExitStack:
        """The context of every text forward pass: no grad, autocast, one CPU thread, weights
        upcast once for all the passes inside."""
        stack = contextlib.ExitStack()
        for ctx in (torch.no_grad(), self.autocast(), self._few_threads(), upcast_once()):
            stack.enter_context(ctx)
        return stack

    def _forward_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """One forward pass of the text tower over ``texts``: L2-normalised [n, d].

        The batch is cut after its longest end-of-text token. Attention is causal and each
        embedding is read at its own end-of-text position, so the padding after it never
        changes the result; the arithmetic may still round differently with the batch's shape,
        so callers always embed the same group of strings together (see ``encode_text``).
        Call inside ``_text_pass``.
        """
        ids = self.tokenize(texts)
        length = max(self._text_length(row) for row in ids)
        pooled = self.model.text_model(input_ids=ids[:, :length].to(self.device)).pooler_output
        return _normalise(self.model.text_projection(pooled).float())

    def _text_length(self, ids: torch.Tensor) -> int:
        ends = (ids == self.eot_token_id).nonzero()
        return int(ends[0, 0]) + 1 if len(ends) else int(ids.shape[0])

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        # One text per forward: a text's embedding must not depend on which texts share its
        # batch (matrix kernels round differently by position and batch shape), so cached and
        # uncached runs agree to the bit.
        start = time.perf_counter()
        with self._text_pass():
            out = torch.cat([self._forward_texts([text]) for text in texts])
        self.text_seconds += time.perf_counter() - start
        return out

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings [n, d], each string embedded on its own.

        With ``cache_text`` they are cached per string, in memory and (with ``text_cache_dir``)
        on disk.
        """
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.model.config.projection_dim, device=self.device)
        if not self.cache_text:
            return self._encode_uncached(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if missing:
            for text, feature in zip(missing, self._embed_groups([(t,) for t in missing]),
                                     strict=True):  # fmt: skip
                self._text_cache[text] = feature[0]
        return torch.stack([self._text_cache[t] for t in texts])

    def encode_templates(self, templates: Sequence[str], queries: Sequence[str]) -> torch.Tensor:
        """[Q, T, d]: every template filled with every query, L2-normalised.

        With ``group_templates`` (and more than one template) each query's T strings are one
        fixed group, embedded in one forward pass: a query's embeddings then depend only on the
        query and the template list, never on the other queries, and the cache (in memory and
        on disk) holds one [T, d] entry per query. Otherwise every string is embedded on its
        own (``encode_text``).
        """
        templates, queries = tuple(templates), list(queries)
        if not queries:
            dim = self.model.config.projection_dim
            return torch.zeros(0, len(templates), dim, device=self.device)
        if len(templates) == 1 or not self.group_templates:
            flat = self.encode_text([t.format(q) for q in queries for t in templates])
            return flat.view(len(queries), len(templates), -1)
        if not self.cache_text:
            start = time.perf_counter()
            with self._text_pass():
                out = torch.stack(
                    [self._forward_texts([t.format(q) for t in templates]) for q in queries]
                )
            self.text_seconds += time.perf_counter() - start
            return out
        missing = [q for q in dict.fromkeys(queries) if (templates, q) not in self._group_cache]
        if missing:
            groups = [tuple(t.format(q) for t in templates) for q in missing]
            for q, feats in zip(missing, self._embed_groups(groups), strict=True):
                self._group_cache[(templates, q)] = feats
        return torch.stack([self._group_cache[(templates, q)] for q in queries])

    def text_ensemble(self, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Per name: mean over templates of normalised embeddings, renormalised ([n, d])."""
        return _normalise(self.encode_templates(templates, names).mean(dim=1))

    # ------------------------------------------------------------------ disk cache
    @property
    def weights_hash(self) -> str:
        """SHA-256 of the text tower's weights and settings (computed once, on first use)."""
        if self._weights_hash is None:
            model = self.model
            text_config = model.config.text_config
            settings = {
                name: getattr(text_config, name, None)
                for name in ("hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "max_position_embeddings", "vocab_size",
                             "hidden_act", "layer_norm_eps", "eos_token_id")
            }  # fmt: skip
            settings["projection_dim"] = model.config.projection_dim
            settings["attention"] = getattr(model.config, "_attn_implementation", None)
            tensors = [
                (f"{part}.{name}", tensor)
                for part in ("text_model", "text_projection")
                for name, tensor in getattr(model, part).state_dict().items()
            ]
            self._weights_hash = weights_digest(tensors, json.dumps(settings, sort_keys=True))
        return self._weights_hash

    def _text_compute(self) -> str:
        """Where and in what precision text passes run: part of every disk cache key."""
        reduced = (
            self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
        ) or (
            self.device.type == "cpu" and self.dtype == torch.bfloat16
        )  # what ``autocast`` runs in
        precision = str(self.dtype) if reduced else "torch.float32"
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else 0
            where = f"cuda:{torch.cuda.get_device_name(index)}"
        elif self.device.type == "cpu":
            cpu = getattr(torch.backends, "cpu", None)
            capability = cpu.get_cpu_capability() if cpu is not None else "?"
            where = f"cpu:{capability}:1-thread"
        else:
            where = self.device.type
        return f"{where}|{precision}|torch {torch.__version__}"

    def disk_cache(self) -> TextCache | None:
        """The on-disk text cache (None when disabled); hashes the weights on first call."""
        if self.text_cache_dir is None or not self.cache_text:
            return None
        with self._disk_lock:
            if self._disk is None:
                self._disk_namespace = f"{self.weights_hash}|{self._text_compute()}"
                self._disk = TextCache(self.text_cache_dir)
        return self._disk

    def _embed_groups(self, groups: list[tuple[str, ...]]) -> list[torch.Tensor]:
        """Each group's embeddings [len(group), d] from one forward pass per group, read from and
        written to the disk cache when it is enabled."""
        start = time.perf_counter()
        disk = self.disk_cache()
        dim = int(self.model.config.projection_dim)
        out: list[torch.Tensor | None] = [None] * len(groups)
        keys: list[str] = []
        if disk is not None:
            assert self._disk_namespace is not None
            for i, group in enumerate(groups):
                ids = [row[: self._text_length(row)].tolist() for row in self.tokenize(group)]
                keys.append(entry_key(self._disk_namespace, [list(group), ids]))
                found = disk.load(keys[i], (len(group), dim))
                if found is not None:
                    out[i] = torch.from_numpy(found).to(self.device)
        todo = [i for i, feats in enumerate(out) if feats is None]
        if todo:
            with self._text_pass():
                for i in todo:
                    out[i] = self._forward_texts(groups[i])
            if disk is not None:
                for i in todo:
                    feats = out[i]
                    assert feats is not None
                    disk.store(keys[i], feats.detach().cpu().numpy(), groups[i])
        self.text_seconds += time.perf_counter() - start
        return [feats for feats in out if feats is not None]

    # ------------------------------------------------------------------ image tower
    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """[1 + gh*gw, D]: CLS kept, patch grid resized bilinearly; fp16-rounded if faithful."""
        key = (grid_h, grid_w)
        if key not in self._posemb_cache:
            weight = self.model.vision_model.embeddings.position_embedding.weight.float()
            side = round(math.sqrt(weight.shape[0] - 1))
            patch = weight[1:]
            if (grid_h, grid_w) != (side, side):
                grid = patch.reshape(1, side, side, -1).permute(0, 3, 1, 2)
                grid = F.interpolate(grid, size=key, mode="bilinear", align_corners=False)
                patch = grid.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)
            full = torch.cat([weight[:1], patch])
            if self.faithful:
                full = full.half().float()
            self._posemb_cache[key] = full
        return self._posemb_cache[key]

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding + CLS + position embedding, then ``pre_layrnorm``: [B, 1+n, D]."""
        vision = self.model.vision_model
        emb = vision.embeddings
        b, _, h, w = pixel_values.shape
        p = self.patch_size
        patches = emb.patch_embedding(pixel_values.to(self.device, torch.float32))
        patches = patches.flatten(2).transpose(1, 2)
        cls_token = emb.class_embedding.expand(b, 1, -1)
        x = torch.cat([cls_token.to(patches.dtype), patches], dim=1)
        x = x + self.position_embedding(h // p, w // p).to(x.dtype)
        return vision.pre_layrnorm(x)

    @staticmethod
    def block(
        layer: Any, x: torch.Tensor, ln1: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One encoder block; ``ln1`` replaces ``layer_norm1(x)`` (the Grad-CAM activation).

        Returns (output tokens, attention weights [B, heads, T, T]).
        """
        h = layer.layer_norm1(x) if ln1 is None else ln1
        attn_out, weights = layer.self_attn(hidden_states=h, attention_mask=None)
        if torch.is_grad_enabled():
            x = x + attn_out
            return x + layer.mlp(layer.layer_norm2(x)), weights
        # the same arithmetic without the temporaries (addition commutes exactly)
        x = _add_into(attn_out, x)
        return _add_into(_mlp_no_grad(layer.mlp, layer.layer_norm2(x)), x), weights

    @staticmethod
    def block_no_weights(layer: Any, x: torch.Tensor) -> torch.Tensor:
        """One encoder block without gradient, not keeping its attention weights."""
        h = layer.layer_norm1(x)
        x = _add_into(_attention_no_grad(layer.self_attn, h, h), x)
        return _add_into(_mlp_no_grad(layer.mlp, layer.layer_norm2(x)), x)

    def dense_pass(
        self, pixel_values: torch.Tensor, *, cam_layer: int = -1, affinity_layers: int = 8
    ) -> DenseState:
        """Run the image tower without gradient for one CAM input.

        Keeps the tokens entering block ``cam_layer`` and the mean over the last
        ``affinity_layers`` blocks of the head-averaged patch-to-patch attention.
        """
        n_layers = self.num_layers
        if not -n_layers <= cam_layer < n_layers:
            raise ConfigError(f"cam_layer {cam_layer} is out of range for {n_layers} blocks")
        cam_index = cam_layer % n_layers
        first_attn = n_layers - min(affinity_layers, n_layers)
        h, w = pixel_values.shape[-2:]
        grid = (h // self.patch_size, w // self.patch_size)
        tokens = None
        attn_sum: torch.Tensor | None = None
        with torch.no_grad(), self.autocast():
            x = self.embed(pixel_values)
            for index, layer in enumerate(self.vision_layers):
                if index == cam_index:
                    tokens = x
                if index == n_layers - 1:
                    # the last block contributes only its attention map
                    _, weights = layer.self_attn(
                        hidden_states=layer.layer_norm1(x), attention_mask=None
                    )
                else:
                    x, weights = self.block(layer, x)
                if index >= first_attn:
                    head_mean = weights.float().mean(dim=1)[0]
                    attn_sum = head_mean if attn_sum is None else attn_sum + head_mean
        assert tokens is not None and attn_sum is not None
        affinity = (attn_sum / (n_layers - first_attn))[1:, 1:]
        return DenseState(
            tokens=tokens.float(),
            affinity=affinity,
            grid_hw=grid,
            input_hw=(int(h), int(w)),
            cam_layer=cam_index,
        )

    def cam_head(
        self,
        tokens: torch.Tensor,
        text_features: torch.Tensor,
        calibration: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Softmax over texts of logit_scale·cos(mean patch token embedding, text): [B, M].

        ``tokens`` are the image tower's output tokens [B, 1+n, D]; ``post_layernorm`` is
        applied to every token, then the patch tokens are averaged (CLS excluded).
        ``calibration`` [M, 2] maps each column's cosine c to a·c + b (exemplar queries).
        """
        x = self.model.vision_model.post_layernorm(tokens)
        x = self.model.visual_projection(x[:, 1:].mean(dim=1))
        x = _normalise(x.float())
        if calibration is None:
            logits = self._logit_scale.to(x.device) * x @ text_features.to(x.device).t()
        else:
            from cliprnn.exemplars import calibrated_logits

            scale = self._logit_scale.to(x.device)
            logits = calibrated_logits(x, text_features, scale, calibration)
        return logits.softmax(dim=-1)

    # ------------------------------------------------------------------ preprocessing
    def cam_input(self, image: np.ndarray, multiple: int = 16) -> torch.Tensor:
        """[1, 3, H', W']: PIL bicubic resize to sides rounded up to ``multiple``, normalised."""
        h, w = image.shape[:2]
        new_h, new_w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        if (new_w, new_h) != (w, h):
            pil = pil.resize((new_w, new_h), Image.BICUBIC)
        return _pil_to_tensor(pil).unsqueeze(0).to(self.device)

    def classifier_input(self, images: Sequence[np.ndarray], crop: str = "center") -> torch.Tensor:
        """[N, 3, S, S]: OpenAI CLIP preprocessing (short side -> S bicubic, S×S center crop).

        ``crop="pad"`` first pads each image to a square with the CLIP mean colour.
        """
        if crop not in ("center", "pad"):
            raise ConfigError(f"classifier_crop must be 'center' or 'pad', got {crop!r}")
        size = self.image_size
        out = []
        for image in images:
            pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
            if crop == "pad":
                pil = _pad_square(pil)
            w, h = pil.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = size, int(size * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
            if (new_w, new_h) != (w, h):
                pil = pil.resize((new_w, new_h), Image.BICUBIC)
            top = round((new_h - size) / 2.0)
            left = round((new_w - size) / 2.0)
            pil = pil.crop((left, top, left + size, top + size))
            out.append(_pil_to_tensor(pil))
        return torch.stack(out).to(self.device)

    def image_embeddings(self, pixel_values: torch.Tensor, *, truncated: bool) -> torch.Tensor:
        """L2-normalised image embeddings [N, d] from the CLS token.

        ``truncated=True`` skips the last block (the reference classifier's tower).
        """
        stop = self.num_layers - 1 if truncated else self.num_layers
        vision = self.model.vision_model
        with torch.inference_mode(), self.autocast():
            x = self.embed(pixel_values)
            for layer in self.vision_layers[: max(0, stop - 1)]:
                x = self.block_no_weights(layer, x)
            cls_token = self.cls_block(self.vision_layers[stop - 1], x) if stop else x[:, 0]
            cls_token = vision.post_layernorm(cls_token)
            feats = self.model.visual_projection(cls_token)
        return _normalise(feats.float()).clone()

    def patch_mean_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised [N, d]: the full tower's mean patch token, as ``cam_head`` reads it."""
        with torch.inference_mode(), self.autocast():
            x = self.embed(pixel_values)
            for layer in self.vision_layers:
                x = self.block_no_weights(layer, x)
            x = self.model.vision_model.post_layernorm(x)
            feats = self.model.visual_projection(x[:, 1:].mean(dim=1))
        return _normalise(feats.float()).clone()

    @staticmethod
    def cls_block(layer: Any, x: torch.Tensor) -> torch.Tensor:
        """One encoder block's output for the CLS token only ([B, D]); keys see every token."""
        h = layer.layer_norm1(x)
        y = _add_into(_attention_no_grad(layer.self_attn, h, h[:, :1])[:, 0], x[:, 0])
        return _add_into(_mlp_no_grad(layer.mlp, layer.layer_norm2(y)), y)


@contextlib.contextmanager
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _attention_no_grad(attn: Any, h: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Self-attention output (after ``out_proj``) at the ``queries`` tokens over all of ``h``.

    ``h`` [B, T, D] are the normalised tokens; ``queries`` [B, Q, D] are some of them.
    """
    b, t, _ = h.shape
    n = queries.shape[1]
    q = attn.q_proj(queries).view(b, n, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
    weights = torch.matmul(q, k.transpose(-1, -2)).mul_(attn.scale)
    weights = weights.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    mixed = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, -1)
    return attn.out_proj(mixed)


def _add_into(out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + out``, reusing ``out``'s memory when that keeps the result's dtype."""
    if out.dtype == torch.promote_types(out.dtype, residual.dtype):
        return out.add_(residual)
    return residual + out


def _mlp_no_grad(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` computed in place where its activation is CLIP's quick GELU."""
    if type(mlp.activation_fn).__name__ != "QuickGELUActivation":
        return mlp(x)
    hidden = mlp.fc1(x)
    gate = torch.sigmoid_(hidden * 1.702)
    return mlp.fc2(gate.mul_(hidden))


def _pad_square(pil: Image.Image) -> Image.Image:
    w, h = pil.size
    side = max(w, h)
    if w == h:
        return pil
    fill = tuple(round(m * 255) for m in CLIP_MEAN)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(pil.convert("RGB"), ((side - w) // 2, (side - h) // 2))
    return canvas


def model_problem(name_or_path: str | Path, role: str = "proposal") -> str | None:
    """Why the CLIP ``name_or_path`` cannot be loaded here without touching its weights (not a
    CLIP folder, or offline and not cached), or None when it can be (or will download)."""
    try:
        ClipBackend._locate(str(name_or_path), role)
    except ModelLoadError as e:
        return str(e)
    return None
