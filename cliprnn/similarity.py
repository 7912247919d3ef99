"""Comparing CLIP embeddings: L2 normalisation and (calibrated) cosine logits.

The model layer (``clip_backend``, ``text_encoder``) and the query layer (``exemplars``,
``classifier``) both use these; they sit below both, so imports between the two point one way.
Torch is not imported here: the functions only call tensor methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def normalise(x: torch.Tensor) -> torch.Tensor:
    """``x`` divided by its L2 norm along the last dimension."""
    return x / x.norm(dim=-1, keepdim=True)


def calibrated_logits(
    features: torch.Tensor,
    columns: torch.Tensor,
    logit_scale: float | torch.Tensor,
    calibration: torch.Tensor | None = None,
) -> torch.Tensor:
    """``logit_scale · (a_j · cos + b_j)`` of features [N, d] against columns [M, d].

    ``calibration`` [M, 2] holds (a_j, b_j) per column, (1, 0) for text columns; None means
    every column is text.
    """
    cos = features @ columns.to(features.device).t()
    if calibration is not None:
        calibration = calibration.to(cos.device, cos.dtype)
        cos = cos * calibration[:, 0] + calibration[:, 1]
    return logit_scale * cos
