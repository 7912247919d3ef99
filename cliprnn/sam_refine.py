"""Optional SAM refinement: replace CaR masks by the union of matching SAM automatic masks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cliprnn.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    from cliprnn.config import CaRConfig


def match_masks(
    car_masks: np.ndarray,
    sam_masks: np.ndarray,
    *,
    iom_threshold: float,
    iou_threshold: float,
    min_pred_threshold: float,
) -> np.ndarray:
    """Refined masks bool [N, H, W]: each CaR mask replaced by its matching SAM masks' union.

    For a non-empty CaR mask m and a SAM mask s, a = |m∩s|/|s| and b = |m∩s|/|m|; a is
    zeroed when b < ``min_pred_threshold``, and IoM = max(a, b). The SAM masks with
    IoM > ``iom_threshold`` (or, if none, the single best one) are united into U, and U
    replaces m only if IoU(U, m) > ``iou_threshold``. Empty CaR masks stay empty.
    """
    car = np.asarray(car_masks, bool)
    out = car.copy()
    sam = np.asarray(sam_masks, bool)
    if len(car) == 0 or len(sam) == 0:
        return out
    if sam.shape[1:] != car.shape[1:]:
        raise ValueError(f"SAM masks {sam.shape[1:]} and CaR masks {car.shape[1:]} differ in size")
    m = car.reshape(len(car), -1).astype(np.float64)
    s = sam.reshape(len(sam), -1).astype(np.float64)
    inter = m @ s.T  # [N, M]
    m_area = m.sum(axis=1)
    s_area = s.sum(axis=1)
    for i in range(len(car)):
        if m_area[i] == 0:
            continue
        b = inter[i] / m_area[i]
        a = np.divide(inter[i], s_area, out=np.zeros_like(b), where=s_area > 0)
        a[b < min_pred_threshold] = 0.0
        iom = np.maximum(a, b)
        chosen = np.flatnonzero(iom > iom_threshold)
        if chosen.size == 0:
            chosen = np.array([int(np.argmax(iom))])
        union = sam[chosen].any(axis=0)
        both = np.logical_and(union, car[i]).sum()
        either = np.logical_or(union, car[i]).sum()
        if either > 0 and both / either > iou_threshold:
            out[i] = union
    return out


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure here means "cannot use this file"
        raise ModelLoadError(
            f"SAM checkpoint {path} could not be read as plain tensors "
            f"(torch.load with weights_only=True): {exc}"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"SAM checkpoint {path} does not hold a state dict of tensors")
    return obj


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """The checkpoint as an existing file path; ModelLoadError saying what is wrong otherwise."""
    if checkpoint is None or str(checkpoint).strip() == "":
        raise ModelLoadError("SAM refinement needs sam_checkpoint: the path of a SAM .pth file")
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"SAM checkpoint not found: {path}. Download a segment-anything checkpoint "
            "(e.g. sam_vit_h_4b8939.pth) and pass its local path as sam_checkpoint."
        )
    if not path.is_file():
        raise ModelLoadError(f"SAM checkpoint is not a file: {path}")
    return path


class SamRefiner:
    """SAM's automatic mask generator plus the IoM/IoU matching of ``match_masks``.

    ``model_type`` names a ``segment_anything.sam_model_registry`` architecture ("vit_h",
    "vit_l", "vit_b") or is a callable returning an untrained ``Sam`` of the checkpoint's
    architecture. The weights are read with ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        model_type: str | Callable[[], Any] = "vit_h",
        *,
        points_per_side: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
        iom_threshold: float = 0.7,
        iou_threshold: float = 0.7,
        min_pred_threshold: float = 0.05,
        device: str | torch.device = "cpu",
    ) -> None:
        path = resolve_checkpoint(checkpoint)
        try:
            from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        except ImportError as exc:
            raise ModelLoadError(
                f"SAM refinement needs the segment-anything package (and torchvision): {exc}"
            ) from exc
        if callable(model_type):
            build, name = model_type, getattr(model_type, "__name__", "custom")
        elif model_type in sam_model_registry:
            build, name = (lambda: sam_model_registry[model_type](checkpoint=None)), model_type
        else:
            raise ModelLoadError(
                f"unknown SAM model_type {model_type!r}; choose from {sorted(sam_model_registry)}"
            )
        state = _read_state_dict(path)
        if any("hf_token" in k or "hf_mlp" in k for k in state):
            raise ModelLoadError(
                f"{path} is an HQ-SAM checkpoint; cliprnn loads plain segment-anything "
                "checkpoints only (sam_vit_h/l/b)"
            )
        model = build()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"SAM checkpoint {path} does not fit model_type {name!r}: {str(exc)[:300]}"
            ) from exc
        self.model = model.to(device).eval()
        self.generator = SamAutomaticMaskGenerator(
            self.model,
            points_per_side=points_per_side,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=0,
            crop_n_points_downscale_factor=1,
        )
        self.iom_threshold = iom_threshold
        self.iou_threshold = iou_threshold
        self.min_pred_threshold = min_pred_threshold

    @classmethod
    def from_config(
        cls,
        config: CaRConfig,
        *,
        device: str | torch.device = "cpu",
        model_type: str | Callable[[], Any] | None = None,
    ) -> SamRefiner:
        """A refiner with the config's checkpoint, model type, AMG and matching settings."""
        return cls(
            config.sam_checkpoint,  # type: ignore[arg-type]  # None is rejected with a message
            config.sam_model_type if model_type is None else model_type,
            points_per_side=config.sam_points_per_side,
            pred_iou_thresh=config.sam_pred_iou_thresh,
            stability_score_thresh=config.sam_stability_score_thresh,
            box_nms_thresh=config.sam_box_nms_thresh,
            iom_threshold=config.sam_iom_threshold,
            iou_threshold=config.sam_iou_threshold,
            min_pred_threshold=config.sam_min_pred_threshold,
            device=device,
        )

    def sam_masks(self, image: np.ndarray) -> np.ndarray:
        """SAM's automatic masks for an RGB uint8 image, bool [M, H, W] (M may be 0)."""
        import torch

        with torch.no_grad():
            records = self.generator.generate(np.ascontiguousarray(image))
        if not records:
            return np.zeros((0, *image.shape[:2]), bool)
        return np.stack([np.asarray(r["segmentation"], bool) for r in records])

    def refine(self, image: np.ndarray, car_masks: np.ndarray) -> np.ndarray:
        """``car_masks`` bool [N, H, W] refined with SAM's masks of ``image`` (same shape)."""
        if len(car_masks) == 0 or not np.asarray(car_masks).any():
            return np.asarray(car_masks, bool).copy()
        return match_masks(
            car_masks,
            self.sam_masks(image),
            iom_threshold=self.iom_threshold,
            iou_threshold=self.iou_threshold,
            min_pred_threshold=self.min_pred_threshold,
        )
