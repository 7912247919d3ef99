"""Weights held in half precision when that loses nothing, computed with in fp32.

OpenAI released CLIP in fp16, so a checkpoint's fp32 weights are usually fp16 values. Storing
such a weight as fp16 halves its memory; reading it back as fp32 gives the very same numbers,
so every computation (and CaR's output) is unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

#: Layers whose parameters may be held compact: the bulk of a CLIP's weights.
COMPACT_LAYERS = (nn.Linear, nn.Conv2d, nn.Embedding, nn.LayerNorm)
_STORAGE_DTYPES = (torch.float16, torch.bfloat16)


class _Upcast(nn.Module):
    """Stores a tensor in a smaller dtype and hands it out as fp32."""

    def __init__(self, storage: torch.dtype) -> None:
        super().__init__()
        self.storage = storage

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float()

    def right_inverse(self, value: torch.Tensor) -> list[torch.Tensor]:
        # a one-element list: parametrize forbids a single returned tensor from changing dtype
        return [value.to(self.storage)]


def exact_storage_dtype(tensor: torch.Tensor) -> torch.dtype | None:
    """float16 or bfloat16 when every element of an fp32 ``tensor`` is exact in it; else None."""
    if tensor.dtype != torch.float32:
        return None
    for dtype in _STORAGE_DTYPES:
        if torch.equal(tensor.to(dtype).float(), tensor):
            return dtype
    return None


def compact_weights(model: nn.Module) -> int:
    """Hold every exactly representable fp32 parameter of ``model``'s layers in 16 bits.

    Returns the number of parameters (elements) now held in 16 bits. Reading such a weight
    (``layer.weight``) still gives fp32, equal to the original; parameters that are not exact
    in 16 bits stay fp32. Idempotent.
    """
    compacted = 0
    for module in list(model.modules()):
        if not isinstance(module, COMPACT_LAYERS):
            continue
        for name, param in list(module.named_parameters(recurse=False)):
            if parametrize.is_parametrized(module, name):
                continue
            storage = exact_storage_dtype(param.detach())
            if storage is None:
                continue
            parametrize.register_parametrization(module, name, _Upcast(storage))
            compacted += param.numel()
    return compacted


def align_weights(model: nn.Module, alignment: int = 64) -> int:
    """Copy every parameter and buffer of ``model`` not starting on an ``alignment``-byte boundary.

    Weights memory-mapped from a checkpoint file start wherever the file puts them, and CPU BLAS
    kernels round differently by alignment: without this the same weights could give outputs
    differing by 1e-4 depending on how they were loaded (or compacted). Returns the number of
    tensors copied.
    """
    copied = 0
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone()
                copied += 1
    return copied


def compact_parameter_count(model: nn.Module) -> int:
    """How many parameters (elements) of ``model`` are held in 16 bits by compact_weights."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if ".parametrizations." in f".{name}" and p.dtype in _STORAGE_DTYPES
    )


def upcast_once() -> contextlib.AbstractContextManager[Any]:
    """Within this context each compact weight is converted to fp32 once, then reused.

    For passes that read the same weights many times (one text at a time); elsewhere each
    layer converts its weight when called and frees it after.
    """
    return parametrize.cached()
