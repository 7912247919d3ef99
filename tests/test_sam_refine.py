"""SAM mask matching (numbers by hand) and SamRefiner with a tiny SAM saved to disk."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from cliprnn.config import CaRConfig
from cliprnn.errors import ModelLoadError
from cliprnn.sam_refine import SamRefiner, match_masks


def _row(*spans: tuple[int, int], w: int = 10) -> np.ndarray:
    """A 1×w mask with columns lo..hi (inclusive) of each span set."""
    m = np.zeros((1, w), bool)
    for lo, hi in spans:
        m[0, lo : hi + 1] = True
    return m


def _match(car: list[np.ndarray], sam: list[np.ndarray], **kw: float) -> np.ndarray:
    args = {"iom_threshold": 0.7, "iou_threshold": 0.7, "min_pred_threshold": 0.05, **kw}
    sam_arr = np.stack(sam) if sam else np.zeros((0, 1, 10), bool)
    return match_masks(np.stack(car), sam_arr, **args)


def test_union_of_matching_sam_masks_replaces() -> None:
    m0 = _row((0, 3))
    s0 = _row((0, 4))  # a = 4/5, b = 1 -> IoM 1, kept
    s1 = _row((3, 9))  # a = 1/7, b = 1/4 -> IoM 0.25, not kept
    s2 = _row((0, 1))  # a = 1, b = 1/2 -> IoM 1, kept
    out = _match([m0], [s0, s1, s2])
    # U = cols 0..4; IoU(U, m0) = 4/5 = 0.8 > 0.7
    np.testing.assert_array_equal(out[0], _row((0, 4)))


def test_low_iou_union_keeps_the_car_mask() -> None:
    m1 = _row((6, 9))
    s1 = _row((3, 9))  # a = 4/7, b = 1 -> kept; IoU(U, m1) = 4/7 = 0.571
    np.testing.assert_array_equal(_match([m1], [s1])[0], m1)
    np.testing.assert_array_equal(_match([m1], [s1], iou_threshold=0.5)[0], s1)


def test_min_pred_threshold_zeroes_small_overlap_share() -> None:
    m = _row((0, 7))
    sa = _row((0, 5))  # a = 1, b = 6/8 -> kept
    sc = _row((7, 7))  # a = 1, b = 1/8
    # min_pred 0.05: sc kept, U = {0..5, 7}, IoU = 7/8
    np.testing.assert_array_equal(_match([m], [sa, sc])[0], _row((0, 5), (7, 7)))
    # min_pred 0.2: sc's a is zeroed -> IoM 1/8, not kept; U = 0..5, IoU = 6/8 = 0.75
    np.testing.assert_array_equal(_match([m], [sa, sc], min_pred_threshold=0.2)[0], sa)


def test_single_best_when_none_passes() -> None:
    m = _row((0, 3))
    s = _row((2, 9))  # a = 2/8, b = 2/4 -> IoM 0.5 < 0.7; still the best
    far = _row((9, 9))  # IoM 0
    np.testing.assert_array_equal(_match([m], [far, s])[0], m)  # IoU 2/10 = 0.2
    np.testing.assert_array_equal(_match([m], [far, s], iou_threshold=0.1)[0], s)


def test_empty_car_mask_stays_empty_and_no_sam_masks() -> None:
    empty = _row()
    m = _row((0, 3))
    out = _match([empty, m], [_row((0, 9))], iou_threshold=0.0)
    assert not out[0].any()
    np.testing.assert_array_equal(out[1], _row((0, 9)))
    np.testing.assert_array_equal(_match([m], []), m[None])


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ"):
        match_masks(
            np.zeros((1, 4, 4), bool),
            np.zeros((1, 5, 5), bool),
            iom_threshold=0.7,
            iou_threshold=0.7,
            min_pred_threshold=0.05,
        )


# ---------------------------------------------------------------------------------------------
# Loading and running a tiny SAM


def tiny_sam(out_chans: int = 32) -> torch.nn.Module:
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=256,
            patch_size=16,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=out_chans,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=out_chans,
            image_embedding_size=(16, 16),
            input_image_size=(256, 256),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=1, embedding_dim=out_chans, mlp_dim=64, num_heads=2
            ),
            transformer_dim=out_chans,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


def _config(checkpoint: Path | str | None, **kw: object) -> CaRConfig:
    return CaRConfig(
        sam_checkpoint=None if checkpoint is None else str(checkpoint),
        sam_points_per_side=4,
        sam_pred_iou_thresh=0.0,
        sam_stability_score_thresh=0.0,
        **kw,
    )


def test_tiny_sam_runs_and_refines(tiny_checkpoint: Path) -> None:
    refiner = SamRefiner.from_config(_config(tiny_checkpoint), model_type=tiny_sam)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    sam = refiner.sam_masks(image)
    assert sam.dtype == bool and sam.ndim == 3 and sam.shape[1:] == (64, 48)
    assert len(sam) >= 1
    car = np.zeros((3, 64, 48), bool)
    car[0, 10:40, 5:30] = True
    # SAM's first mask with a tenth of its pixels removed: it lies inside that SAM mask
    # (IoM 1) and covers 90% of it (IoU 0.9 > 0.7), so it becomes the full SAM mask.
    car[2] = sam[0]
    ys, xs = np.nonzero(sam[0])
    car[2, ys[::10], xs[::10]] = False
    assert car[2].sum() < sam[0].sum()
    refined = refiner.refine(image, car)
    np.testing.assert_array_equal(refined[2], sam[0])
    assert refined.shape == car.shape and refined.dtype == bool
    assert not refined[1].any()
    anything = sam.any(axis=0)
    for k in (0, 2):
        # Either unchanged or a union of SAM masks.
        assert np.array_equal(refined[k], car[k]) or not (refined[k] & ~anything).any()
    expected = match_masks(car, sam, iom_threshold=0.7, iou_threshold=0.7, min_pred_threshold=0.05)
    np.testing.assert_array_equal(refined, expected)
    nothing = refiner.refine(image, np.zeros((2, 64, 48), bool))
    assert nothing.shape == (2, 64, 48) and not nothing.any()


def test_checkpoint_must_exist_and_be_a_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="sam_checkpoint"):
        SamRefiner.from_config(_config(None))
    with pytest.raises(ModelLoadError, match=r"not found.*missing\.pth"):
        SamRefiner.from_config(_config(tmp_path / "missing.pth"))
    with pytest.raises(ModelLoadError, match="not a file"):
        SamRefiner.from_config(_config(tmp_path))


def test_unsafe_or_corrupt_checkpoint_rejected(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ModelLoadError, match="weights_only"):
        SamRefiner(junk, tiny_sam)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": partial(print, "hello")}, pickled)  # needs full unpickling
    with pytest.raises(ModelLoadError, match="weights_only"):
        SamRefiner(pickled, tiny_sam)


def test_wrong_architecture_or_type(tiny_checkpoint: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not fit"):
        SamRefiner(tiny_checkpoint, partial(tiny_sam, out_chans=16))
    with pytest.raises(ModelLoadError, match="unknown SAM model_type 'vit_x'"):
        SamRefiner(tiny_checkpoint, "vit_x")


def test_wrapped_state_dict_accepted(tiny_checkpoint: Path, tmp_path: Path) -> None:
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": torch.load(tiny_checkpoint, weights_only=True)}, wrapped)
    refiner = SamRefiner(wrapped, tiny_sam, points_per_side=2)
    assert refiner.model.image_encoder.img_size == 256
