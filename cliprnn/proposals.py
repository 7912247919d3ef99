"""Mask proposals: Grad-CAM on the CLIP image tower refined by CLIP-ES class-aware affinity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from cliprnn.clip_backend import ClipBackend, DenseState
from cliprnn.config import CaRConfig
from cliprnn.timing import timed

EPS = 1e-15


@dataclass
class ImageState:
    """Per-image state reused by every step's proposals."""

    image_hw: tuple[int, int]
    pixel_values: torch.Tensor  # [1, 3, H', W'] CAM input
    dense: DenseState | None = None  # None when the dense pass is recomputed per step
    affinity2: torch.Tensor | None = None  # [n, n] squared Sinkhorn affinity


def min_max(x: np.ndarray) -> np.ndarray:
    """``x - min`` divided by ``EPS + max`` of the shifted values (the reference's scaling)."""
    x = x - np.min(x)
    return x / (EPS + np.max(x))


def sinkhorn_affinity(attn: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """Column- then row-normalise ``rounds`` times, symmetrise (D+Dᵀ)/2, then square once."""
    d = attn
    for _ in range(rounds):
        d = d / d.sum(dim=0, keepdim=True)
        d = d / d.sum(dim=1, keepdim=True)
    d = (d + d.t()) / 2
    return d @ d


def scoremap2bbox(
    cam: np.ndarray, threshold: float, *, faithful: bool = True
) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) around every region of ``cam`` above ``threshold``·max.

    The map is quantised to uint8 and kept where ``> int(threshold * max)``; when nothing
    survives the threshold is lowered by 0.1 until something does. Faithful boxes clip x1/y1
    to ``width - 1``/``height - 1`` (so the last row and column are never covered); otherwise
    they are the full bounding rectangles. A map with no positive cell gives [(0, 0, 0, 0)].
    """
    height, width = cam.shape
    scores = (cam * 255).astype(np.uint8)
    top = int(scores.max())
    contours: Sequence[Any] = ()
    lam = float(threshold)
    while top > 0:
        _, binary = cv2.threshold(scores, int(lam * top), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) or lam <= 0:
            break
        lam -= 0.1
    if not len(contours):
        return [(0, 0, 0, 0)]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        x1, y1 = x + w, y + h
        if faithful:
            x1, y1 = min(x1, width - 1), min(y1, height - 1)
        boxes.append((int(x), int(y), int(x1), int(y1)))
    return boxes


def boxes_to_mask(boxes: Sequence[Sequence[int]], h: int, w: int) -> np.ndarray:
    """uint8 [h, w]: 1 inside ``[y0:y1, x0:x1]`` of any box."""
    mask = np.zeros((h, w), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 1
    return mask


def refine(
    cams: np.ndarray, affinity2: torch.Tensor, box_masks: np.ndarray, out_hw: tuple[int, int]
) -> np.ndarray:
    """Propagate each CAM through the affinity (in-box sources only): float32 [N, H, W].

    Each refined map is min-max normalised at grid resolution, then resized bilinearly.
    """
    n_maps, h, w = cams.shape
    if n_maps == 0:
        return np.zeros((0, *out_hw), dtype=np.float32)
    aff = affinity2.float()
    sources = (cams * box_masks).reshape(n_maps, h * w, 1).astype(np.float32)
    sources_dev = torch.from_numpy(sources).to(aff.device)
    # one matrix-vector product per map (the reference's summation order), one transfer back
    refined = torch.stack([aff @ sources_dev[j] for j in range(n_maps)]).cpu().numpy()
    grids = np.stack([min_max(refined[j].reshape(h, w)) for j in range(n_maps)])
    return resize_maps(grids, out_hw)


def resize_maps(maps: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Grid-resolution maps resized bilinearly to ``out_hw``: float32 [N, H, W]."""
    out_h, out_w = out_hw
    out = np.zeros((len(maps), out_h, out_w), dtype=np.float32)
    for j, grid in enumerate(maps):
        out[j] = cv2.resize(grid.astype(np.float32), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return out


def _cam_from_gradients(activation: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ReLU(Σ_c w_c · A_c), min-max normalised twice: [N, h, w] float32.

    ``activation`` is [D, h, w]; ``weights`` [N, D] are the gradients' means over the patches.
    """
    cams = (weights[:, :, None, None] * activation[None]).sum(axis=1)
    cams = np.maximum(cams, 0)
    return np.stack([min_max(min_max(c)) for c in cams]).astype(np.float32)


def gradcam(
    backend: ClipBackend,
    dense: DenseState,
    text_features: torch.Tensor,
    targets: Sequence[int],
    *,
    batched: bool = True,
    calibration: torch.Tensor | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM maps of the softmax probabilities ``targets`` at block ``layer_norm1``.

    Returns (CAMs [len(targets), h, w] float32, the CAM head's softmax [M] over the texts).
    Batched mode runs the forward pass once for all targets, then one backward pass per target
    through the retained graph (bit-identical to the reference, which also repeats the
    forward pass per target: ``batched=False``). ``calibration``: see ``ClipBackend.cam_head``.
    """
    layers = backend.vision_layers
    cam_block = layers[dense.cam_layer]
    later = layers[dense.cam_layer + 1 :]
    x = dense.tokens
    with torch.no_grad():
        ln1 = cam_block.layer_norm1(x)

    def probabilities(act: torch.Tensor) -> torch.Tensor:
        with backend.autocast():
            y, _ = backend.block(cam_block, x, ln1=act)
            for layer in later:
                y, _ = backend.block(layer, y)
            return backend.cam_head(y, text_features, calibration)

    targets = list(targets)
    with torch.enable_grad():
        if batched:
            # one forward shared by every target; each backward is then exactly the reference's
            act = ln1.clone().requires_grad_(True)
            probs = probabilities(act)
            grads = (
                torch.cat(
                    [
                        torch.autograd.grad(probs[0, t], act, retain_graph=i < len(targets) - 1)[0]
                        for i, t in enumerate(targets)
                    ]
                )
                if targets
                else act.new_zeros((0, *act.shape[1:]))
            )
            head = probs[0].detach()
        else:
            per_target = []
            head = None
            for t in targets:
                act = ln1.clone().requires_grad_(True)
                probs = probabilities(act)
                per_target.append(torch.autograd.grad(probs[0, t], act)[0])
                head = probs[0].detach()
            grads = torch.cat(per_target)
    gh, gw = dense.grid_hw
    dim = ln1.shape[-1]
    activation = ln1[0, 1:].float().reshape(gh, gw, dim).permute(2, 0, 1).cpu().numpy()
    weights = grads[:, 1:].float().mean(dim=1).cpu().numpy()  # reduced where it was computed
    assert head is not None
    return _cam_from_gradients(activation, weights), head


class ProposalGenerator:
    """Soft masks, one per live query, from Grad-CAM + CLIP-ES affinity refinement."""

    def __init__(self, backend: ClipBackend, config: CaRConfig) -> None:
        self.backend = backend
        self.config = config

    def _dense(self, pixel_values: torch.Tensor) -> tuple[DenseState, torch.Tensor]:
        dense = self.backend.dense_pass(
            pixel_values,
            cam_layer=self.config.cam_layer,
            affinity_layers=self.config.affinity_layers,
        )
        return dense, sinkhorn_affinity(dense.affinity, self.config.sinkhorn_rounds)

    def prepare(self, image: np.ndarray) -> ImageState:
        """CAM input, dense pass and squared affinity for one RGB uint8 image."""
        pixel_values = self.backend.cam_input(image, self.config.cam_input_multiple)
        state = ImageState(image_hw=(int(image.shape[0]), int(image.shape[1])),
                           pixel_values=pixel_values)  # fmt: skip
        if self.config.reuse_dense_pass:
            state.dense, state.affinity2 = self._dense(pixel_values)
        return state

    def propose(
        self,
        state: ImageState,
        cam_texts: list[str],
        background: list[str],
        *,
        trace: bool = False,
        exemplars: Mapping[int, torch.Tensor] | None = None,
        calibration: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Refined soft masks float32 [N, H, W] in [0, 1] for the N ``cam_texts``.

        ``cam_texts`` are embedded as given, except the rows ``exemplars`` gives an embedding
        (exemplar queries), whose columns ``calibration`` [N, 2] maps (``ClipBackend.cam_head``);
        ``background`` words are embedded with the config's ``background_template``. With
        ``trace`` the extras hold the intermediates; ``extras["timings"]`` always holds the
        seconds spent per stage ("dense" when the dense pass is not reused, "text", "cam",
        "affinity").
        """
        cfg = self.config
        backend = self.backend
        timings: dict[str, float] = {}
        if state.dense is None or state.affinity2 is None:
            with timed(timings, "dense"):
                dense, affinity2 = self._dense(state.pixel_values)
        else:
            dense, affinity2 = state.dense, state.affinity2
        n = len(cam_texts)
        if n == 0:
            return np.zeros((0, *state.image_hw), dtype=np.float32), {"timings": timings}
        with timed(timings, "text"):

            def embed(texts: list[str]) -> torch.Tensor:
                fg = backend.encode_text(texts)
                # the reference averages over a single template, then renormalises
                return fg / fg.norm(dim=-1, keepdim=True)

            if exemplars:
                from cliprnn.exemplars import query_columns

                fg = query_columns(n, exemplars, lambda rows: embed([cam_texts[j] for j in rows]))
            else:
                fg = embed(cam_texts)
            bg = (
                backend.text_ensemble(background, [cfg.background_template])
                if background
                else fg[:0]
            )
            texts = torch.cat([fg, bg])
            full_calibration = None
            if calibration is not None:  # background words are text columns
                text_rows = calibration.new_tensor([[1.0, 0.0]]).repeat(len(bg), 1)
                full_calibration = torch.cat([calibration, text_rows])
        with timed(timings, "cam"):
            cams, head = gradcam(
                backend, dense, texts, range(n), batched=cfg.batched_cam,
                calibration=full_calibration,
            )  # fmt: skip
            fallback = ~(cams > 0).reshape(n, -1).any(axis=1)
            if fallback.any() and len(bg):
                idx = np.flatnonzero(fallback)
                redo, _ = gradcam(
                    backend, dense, fg, idx.tolist(), batched=cfg.batched_cam,
                    calibration=calibration,
                )  # fmt: skip
                cams[idx] = redo
        with timed(timings, "affinity"):
            gh, gw = dense.grid_hw
            boxes = [scoremap2bbox(c, cfg.clipes_threshold, faithful=cfg.faithful) for c in cams]
            box_mask = np.stack([boxes_to_mask(b, gh, gw) for b in boxes])
            if cfg.refine_affinity:
                proposals = refine(cams, affinity2, box_mask, state.image_hw)
            else:  # the paper's plain Grad-CAM ablation: raw CAMs, resized
                proposals = resize_maps(cams, state.image_hw)
        extras: dict[str, Any] = {}
        if trace:
            extras = {
                "gradcam_raw": cams,
                "boxes": [[list(b) for b in bs] for bs in boxes],
                "box_mask": box_mask,
                "cam_probs": head.cpu().numpy().astype(np.float32),
                "fg_only_fallback": fallback,
                "cam_fg_text_features": fg.cpu().numpy().astype(np.float32),
                "cam_texts": list(cam_texts),
            }
        extras["timings"] = timings
        return proposals, extras
