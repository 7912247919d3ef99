"""One loaded CLIP model (Hugging Face ``CLIPModel``) and the image-tower passes CaR needs.

``ClipBackend`` inherits its text side (tokenizing, text embeddings and their caches) from
``cliprnn.text_encoder.TextEncoder``; finding and loading the model is ``cliprnn.clip_loading``.
``resolve_device`` and ``model_problem`` are importable from here too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cliprnn.clip_loading import VOCAB_SIZE as VOCAB_SIZE
from cliprnn.clip_loading import load_clip
from cliprnn.clip_loading import model_problem as model_problem
from cliprnn.clip_loading import resolve_device as resolve_device
from cliprnn.compact import align_weights, compact_parameter_count
from cliprnn.compact import compact_weights as _compact_weights
from cliprnn.errors import ConfigError
from cliprnn.similarity import calibrated_logits, normalise
from cliprnn.text_encoder import TextEncoder

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


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """ToTensor then CLIP mean/std normalisation: [3, H, W] float32."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    x = x.permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


class ClipBackend(TextEncoder):
    """A frozen CLIP model with its tokenizer, computing in fp32 (or autocast on CUDA).

    With ``compact_weights`` the weights that are exact in fp16 (or bf16) are held in 16 bits
    and read back as fp32 by each layer when it runs: half the memory, the same output. The
    text side (``encode_text``, ``encode_templates``, ``text_ensemble``, the text caches) is
    :class:`~cliprnn.text_encoder.TextEncoder`'s.
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
        super().__init__(
            model,
            tokenizer,
            device=device,
            dtype=dtype,
            cache_text=cache_text,
            group_templates=group_templates,
            text_cache_dir=text_cache_dir,
        )
        self.role = role
        self.name = name
        self.faithful = faithful
        vision = model.config.vision_config
        self.patch_size: int = int(vision.patch_size)
        self.image_size: int = int(vision.image_size)
        self.num_layers: int = int(vision.num_hidden_layers)
        self._logit_scale = model.logit_scale.detach().float().exp()
        self.logit_scale: float = float(self._logit_scale)
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
        name = str(name_or_path)
        model, tokenizer = load_clip(name, role)
        dev = resolve_device(device)
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

    # ------------------------------------------------------------------ helpers
    @property
    def vision_layers(self) -> Any:
        """The image tower's encoder blocks (``CLIPEncoderLayer`` list)."""
        return self.model.vision_model.encoder.layers

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
        x = normalise(x.float())
        if calibration is None:
            logits = self._logit_scale.to(x.device) * x @ text_features.to(x.device).t()
        else:
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
        return normalise(feats.float()).clone()

    def patch_mean_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised [N, d]: the full tower's mean patch token, as ``cam_head`` reads it."""
        with torch.inference_mode(), self.autocast():
            x = self.embed(pixel_values)
            for layer in self.vision_layers:
                x = self.block_no_weights(layer, x)
            x = self.model.vision_model.post_layernorm(x)
            feats = self.model.visual_projection(x[:, 1:].mean(dim=1))
        return normalise(feats.float()).clone()

    @staticmethod
    def cls_block(layer: Any, x: torch.Tensor) -> torch.Tensor:
        """One encoder block's output for the CLS token only ([B, D]); keys see every token."""
        h = layer.layer_norm1(x)
        y = _add_into(_attention_no_grad(layer.self_attn, h, h[:, :1])[:, 0], x[:, 0])
        return _add_into(_mlp_no_grad(layer.mlp, layer.layer_norm2(y)), y)


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
