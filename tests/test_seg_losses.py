"""Segmentation losses: known values on tiny tensors, gradients, per-sample ignoring."""

from __future__ import annotations

import math

import pytest
import torch

from fracturekit.models._seg_losses import (
    DEFAULT_SEG_LOSS,
    SEG_LOSSES,
    build_seg_loss,
    pos_weight_for,
    soft_skeleton,
)

LN2 = math.log(2.0)


def _half() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits 0 (p = 0.5) on a 2x2 image whose top row is crack."""
    return torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])


def _line_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 16x16 images with a 2-px crack line and noisy logits."""
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 7:9, 2:14] = 1.0
    logits = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    return logits, target


def test_default_and_table() -> None:
    assert DEFAULT_SEG_LOSS == "bce_dice"
    assert list(SEG_LOSSES) == ["bce_dice", "focal_dice", "tversky", "cldice", "bce_dice_image"]
    with pytest.raises(ValueError, match="unknown segmentation loss 'iou'"):
        build_seg_loss("iou")
    with pytest.raises(ValueError, match="'tversky'.*pos_weight"):
        build_seg_loss("tversky", pos_weight=2.0)


def test_known_values_at_half_probability() -> None:
    logits, target = _half()
    # BCE ln 2; Dice 1 - 2 * 1 / (2 + 2) = 0.5 (sum p = 2, sum t = 2, sum p t = 1).
    assert build_seg_loss()(logits, target).item() == pytest.approx(LN2 + 0.5)
    # pos_weight 3: (3 * 2 * ln 2 + 2 * ln 2) / 4.
    assert build_seg_loss(pos_weight=3.0)(logits, target).item() == pytest.approx(2 * LN2 + 0.5)
    # Focal: (1 - 0.5)^2 * ln 2 per pixel.
    assert build_seg_loss("focal_dice")(logits, target).item() == pytest.approx(0.25 * LN2 + 0.5)
    # Tversky: TP = FP = FN = 1, 1 - 1 / (1 + 0.3 + 0.7).
    assert build_seg_loss("tversky")(logits, target).item() == pytest.approx(0.5)


def test_image_term_scores_the_top_pixels_against_any_crack() -> None:
    # Two 4x4 images: the first holds one crack pixel, the second none.
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, 1, 2] = 1.0
    logits = torch.full((2, 1, 4, 4), -4.0)
    logits[0, 0, 1, 2] = 2.0  # the crack pixel
    logits[1, 0, 0, :2] = 3.0  # two crack-like pixels in the empty image
    term = build_seg_loss("bce_dice_image", top_k=2).terms[2]
    # image logits: mean of the top 2 = (2 - 4) / 2 = -1 (crack), (3 + 3) / 2 = 3 (no crack)
    want = (math.log1p(math.exp(1.0)) + math.log1p(math.exp(3.0))) / 2
    assert term(logits, target).item() == pytest.approx(want)
    # the empty image's false pixels cost it more than the same pixels cost the pixel BCE
    pixel = build_seg_loss("bce_dice_image").terms[0](logits, target).item()
    assert term(logits, target).item() > pixel
    with pytest.raises(ValueError, match="top_k"):
        build_seg_loss("bce_dice_image", top_k=0)


def test_perfect_prediction_is_near_zero() -> None:
    _, target = _line_batch()
    logits = (target * 2 - 1) * 30
    for name in SEG_LOSSES:
        assert build_seg_loss(name)(logits, target).item() == pytest.approx(0.0, abs=1e-4), name


def test_soft_skeleton_of_hard_masks() -> None:
    line = torch.zeros(1, 1, 9, 9)
    line[0, 0, 4, 1:8] = 1.0
    assert torch.equal(soft_skeleton(line), line)  # a 1-px line is its own skeleton
    band = torch.zeros(1, 1, 11, 15)
    band[0, 0, 3:8, 1:14] = 1.0  # 5 px wide
    skel = soft_skeleton(band)
    assert skel[0, 0, 5, 3:12].min() == 1.0  # the centre row survives
    assert skel[0, 0, 3].sum() == 0 and skel[0, 0, 7].sum() == 0  # the edges do not


def test_cldice_counts_a_missed_thin_crack_by_its_length() -> None:
    """Dice hardly sees a missed 1-px crack beside a found 8-px one; clDice loses half."""
    target = torch.zeros(1, 1, 24, 32)
    target[0, 0, 3:11, 4:28] = 1.0  # wide crack, 24 px long
    target[0, 0, 18, 4:28] = 1.0  # hair-line crack, as long
    found_wide_only = target.clone()
    found_wide_only[0, 0, 18] = 0.0
    logits = (found_wide_only * 2 - 1) * 30
    terms = build_seg_loss("cldice").terms
    dice, cl = terms[1](logits, target).item(), terms[2](logits, target).item()
    assert dice == pytest.approx(1 - 2 * 192 / (192 + 216), abs=1e-3)
    # Tprec = 1 (the predicted skeleton lies in the truth); Tsens = the wide crack's share of
    # the true skeleton (its centre line plus end pieces: more than half).
    skel = soft_skeleton(target)
    tsens = ((skel * (logits > 0)).sum() + 1) / (skel.sum() + 1)
    assert 0.5 < tsens < 0.75
    assert cl == pytest.approx(1 - 2 * tsens.item() / (1 + tsens.item()), abs=1e-4)
    assert cl > 3 * dice


@pytest.mark.parametrize("name", list(SEG_LOSSES))
def test_gradients_flow(name: str) -> None:
    logits, target = _line_batch()
    logits.requires_grad_(True)
    loss = build_seg_loss(name)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None
    assert logits.grad.abs().sum() > 0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", list(SEG_LOSSES))
def test_weight_zero_leaves_a_sample_out(name: str) -> None:
    logits, target = _line_batch()
    loss = build_seg_loss(name)
    alone = loss(logits[:1], target[:1])
    keep_first = torch.tensor([1.0, 0.0])
    assert loss(logits, target, keep_first).item() == pytest.approx(alone.item())
    # Whatever the left-out sample holds, the loss and the gradient do not see it.
    other = logits.clone()
    other[1] = 10.0
    other.requires_grad_(True)
    value = loss(other, torch.zeros_like(target), keep_first)
    assert value.item() != pytest.approx(alone.item())  # the first target changed
    value = loss(other, torch.cat([target[:1], torch.ones_like(target[1:])]), keep_first)
    assert value.item() == pytest.approx(alone.item())
    value.backward()
    assert other.grad[1].abs().sum() == 0
    # Everything left out: a zero that backpropagates, no NaN.
    empty = loss(logits.clone().requires_grad_(True), target, torch.zeros(2))
    assert empty.item() == 0.0 and empty.requires_grad


def test_shapes_and_weights_are_checked() -> None:
    logits, target = _line_batch()
    loss = build_seg_loss()
    torch.testing.assert_close(loss(logits, target[:, 0]), loss(logits, target))
    with pytest.raises(ValueError, match=r"logits \[N, 1, H, W\]"):
        loss(logits[:, 0], target)
    with pytest.raises(ValueError, match="weight must be N = 2 values of 0 or 1"):
        loss(logits, target, torch.tensor([0.5, 1.0]))


def test_pos_weight_for() -> None:
    assert pos_weight_for(0.1) == pytest.approx(9.0)
    assert pos_weight_for(0.001) == 50.0 and pos_weight_for(0.0) == 50.0
    assert pos_weight_for(0.8) == 1.0 and pos_weight_for(1.0) == 1.0
