"""The miniature CLIPs' training losses: caption InfoNCE and a vocabulary-wide cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPModel

#: Image embeddings trained by default; the classifier model needs only the CLS ones.
HEADS: tuple[str, ...] = ("cls", "penultimate", "patch_mean")


def image_embeddings(
    model: CLIPModel,
    pixels: torch.Tensor,
    heads: tuple[str, ...] = ("cls", "penultimate", "patch_mean"),
) -> dict[str, torch.Tensor]:
    """Normalised image embeddings the loss trains (cls, penultimate cls, patch mean)."""
    vm = model.vision_model
    out = vm(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
    last, pen = out.hidden_states[-1], out.hidden_states[-2]
    ln, proj = vm.post_layernorm, model.visual_projection
    embs = {
        "cls": proj(ln(last[:, 0])),
        "penultimate": proj(ln(pen[:, 0])),
        "patch_mean": proj(ln(last[:, 1:]).mean(dim=1)),
    }
    return {k: F.normalize(v.float(), dim=-1) for k, v in embs.items() if k in heads}


def text_embeddings(model: CLIPModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model.text_model(input_ids=ids, attention_mask=mask)
    return F.normalize(model.text_projection(out.pooler_output).float(), dim=-1)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the cross-entropy between softmax(``logits``) and ``targets``."""
    return torch.sum(-targets * F.log_softmax(logits, 1), 1).mean()


def contrastive_loss(
    img: torch.Tensor, txt: torch.Tensor, keys: list[str], scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with an equal key is a positive."""
    same = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.float32)
    same = same.to(img.device)
    target = same / same.sum(dim=1, keepdim=True)
    logits = scale * img @ txt.t()
    return 0.5 * (soft_cross_entropy(logits, target) + soft_cross_entropy(logits.t(), target))


def bank_loss(img: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor, scale) -> torch.Tensor:
    """Cross-entropy of each image against the whole vocabulary's texts (CaR's softmax).

    ``targets`` [B, V] spreads each image's probability mass evenly over the labels it shows,
    so the other (often confusable) classes are the negatives, as the live queries are in CaR.
    """
    return soft_cross_entropy(scale * img @ bank.t(), targets)
