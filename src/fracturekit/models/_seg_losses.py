"""Pixel losses for thin structures: one row of ``SEG_LOSSES`` a loss.

Every loss takes pixel logits ``[N, 1, H, W]``, 0/1 targets of the same shape and an optional
per-sample weight ``[N]`` of 0 or 1: a sample weighted 0 leaves the loss entirely (an image of
a positive class without a mask file has no pixel truth), as if it were not in the batch.

Imbalance (a crack covers a few per cent of its image, often less) is met twice: Dice-type
terms score the overlap of the positive class and ignore how many background pixels there
are, and the BCE term takes a ``pos_weight`` (``pos_weight_for`` derives one from the
positive-pixel share). smp's Dice/Tversky terms pool over the whole batch (one score per
batch, not a mean of per-image scores): images without any crack then count through their
false positives instead of scoring an undefined 0/0; a batch with no positive pixel and no
prediction gives 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_SEG_LOSS = "bce_dice"


def soft_skeleton(prob: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """Differentiable skeleton of a probability map ``[N, 1, H, W]`` (Shit et al. 2021, alg. 1).

    Iterated soft erosion (min-pooling along rows and along columns) and soft opening
    (erosion then 3x3 max-pooling): what each opening removes is a skeleton piece. Structures up
    to about ``2 * iterations + 1`` px wide are reduced to their centre line.
    """

    def erode(x: torch.Tensor) -> torch.Tensor:
        across = -F.max_pool2d(-x, (3, 1), stride=1, padding=(1, 0))
        along = -F.max_pool2d(-x, (1, 3), stride=1, padding=(0, 1))
        return torch.minimum(across, along)

    def opened(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(erode(x), 3, stride=1, padding=1)

    skel = F.relu(prob - opened(prob))
    for _ in range(iterations):
        prob = erode(prob)
        delta = F.relu(prob - opened(prob))
        skel = skel + F.relu(delta - skel * delta)
    return skel


class ClDiceLoss(nn.Module):
    """Soft centreline Dice (clDice, Shit et al., CVPR 2021): topology of thin structures.

    ``1 - 2 * Tprec * Tsens / (Tprec + Tsens)`` with ``Tprec`` the share of the predicted
    skeleton inside the true mask and ``Tsens`` the share of the true skeleton inside the
    prediction; a gap in a predicted crack costs its whole missing centre line, whatever its
    width. Pooled over the batch like smp's Dice.
    """

    def __init__(self, iterations: int = 5, smooth: float = 1.0) -> None:
        super().__init__()
        self.iterations = int(iterations)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(logits)
        skel_pred = soft_skeleton(prob, self.iterations)
        skel_true = soft_skeleton(target, self.iterations)
        tprec = ((skel_pred * target).sum() + self.smooth) / (skel_pred.sum() + self.smooth)
        tsens = ((skel_true * prob).sum() + self.smooth) / (skel_true.sum() + self.smooth)
        return 1.0 - 2.0 * tprec * tsens / (tprec + tsens)


class ImageTermLoss(nn.Module):
    """BCE of an image-level logit against "the image holds a crack pixel".

    The image logit is the mean of the image's ``top_k`` highest pixel logits: a smooth stand-in
    for the most probable pixel, which is the segmenter's image score, so that the term ranks
    whole images as they are decided (a ``no_crack`` image whose brightest pixels look like a
    crack costs here even when its pixels are few). Mean over the images of the batch.
    """

    def __init__(self, top_k: int = 16) -> None:
        super().__init__()
        if int(top_k) < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.top_k = int(top_k)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = logits.flatten(1)
        k = min(self.top_k, flat.shape[1])
        image_logit = flat.topk(k, dim=1).values.mean(1)
        has_crack = (target.flatten(1).amax(1) > 0.5).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(image_logit, has_crack)


class SegLoss(nn.Module):
    """A weighted sum of pixel-loss terms with per-sample ignoring.

    Attributes:
        name: the ``SEG_LOSSES`` key.
        terms: the term modules, each ``(logits, target) -> scalar``.
        weights: one factor per term.
    """

    def __init__(self, name: str, terms: list[tuple[float, nn.Module]]) -> None:
        super().__init__()
        self.name = name
        self.terms = nn.ModuleList(term for _, term in terms)
        self.weights = [float(w) for w, _ in terms]

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss over the samples whose weight is 1 (all without ``weight``).

        Args:
            logits: ``[N, 1, H, W]`` pixel logits.
            target: ``[N, 1, H, W]`` (or ``[N, H, W]``) 0/1 masks.
            weight: ``[N]`` of 0 or 1; 0 leaves the sample out. With every sample out the loss
                is a zero that still backpropagates (no NaN).
        """
        if target.ndim == 3:
            target = target.unsqueeze(1)
        if logits.ndim != 4 or logits.shape[1] != 1 or target.shape != logits.shape:
            raise ValueError(
                f"loss needs logits [N, 1, H, W] and targets of the same shape, got "
                f"{tuple(logits.shape)} and {tuple(target.shape)}"
            )
        target = target.to(logits.dtype)
        if weight is not None:
            weight = torch.as_tensor(weight, device=logits.device).flatten()
            if weight.shape[0] != logits.shape[0] or not ((weight == 0) | (weight == 1)).all():
                raise ValueError(f"weight must be N = {logits.shape[0]} values of 0 or 1")
            keep = weight.bool()
            if not keep.any():
                return logits.sum() * 0.0
            logits, target = logits[keep], target[keep]
        total = logits.new_zeros(())
        for factor, term in zip(self.weights, self.terms, strict=True):
            total = total + factor * term(logits, target)
        return total


def _bce(pos_weight: float | None) -> nn.Module:
    pw = None if pos_weight is None else torch.tensor([float(pos_weight)])
    return nn.BCEWithLogitsLoss(pos_weight=pw)


def _dice() -> nn.Module:
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="binary", from_logits=True)


def _bce_dice(pos_weight: float | None = None) -> list[tuple[float, nn.Module]]:
    return [(1.0, _bce(pos_weight)), (1.0, _dice())]


def _focal_dice(gamma: float = 2.0, alpha: float | None = None) -> list[tuple[float, nn.Module]]:
    from segmentation_models_pytorch.losses import FocalLoss

    return [(1.0, FocalLoss(mode="binary", gamma=gamma, alpha=alpha)), (1.0, _dice())]


def _tversky(alpha: float = 0.3, beta: float = 0.7) -> list[tuple[float, nn.Module]]:
    from segmentation_models_pytorch.losses import TverskyLoss

    return [(1.0, TverskyLoss(mode="binary", from_logits=True, alpha=alpha, beta=beta))]


def _cldice(
    pos_weight: float | None = None, cl_weight: float = 0.3, iterations: int = 5
) -> list[tuple[float, nn.Module]]:
    # The paper's L = (1 - a) * Dice + a * clDice, plus the BCE term of the default loss.
    return [
        (1.0, _bce(pos_weight)),
        (1.0 - cl_weight, _dice()),
        (cl_weight, ClDiceLoss(iterations)),
    ]


def _bce_dice_image(
    pos_weight: float | None = None, image_weight: float = 0.5, top_k: int = 16
) -> list[tuple[float, nn.Module]]:
    return [*_bce_dice(pos_weight), (float(image_weight), ImageTermLoss(top_k))]


@dataclass(frozen=True)
class SegLossSpec:
    """One row of ``SEG_LOSSES``: the terms' factory (keyword options) and a line of help."""

    terms: Callable[..., list[tuple[float, nn.Module]]]
    description: str


SEG_LOSSES: dict[str, SegLossSpec] = {
    "bce_dice": SegLossSpec(
        _bce_dice, "BCE (pos_weight option) + Dice; the default: per-pixel and overlap terms"
    ),
    "focal_dice": SegLossSpec(
        _focal_dice, "focal (gamma 2, Lin et al. 2017) + Dice: hard pixels weigh more"
    ),
    "tversky": SegLossSpec(
        _tversky, "Tversky (alpha 0.3 on FP, beta 0.7 on FN): favours recall of thin cracks"
    ),
    "cldice": SegLossSpec(
        _cldice, "BCE + 0.7 Dice + 0.3 soft clDice (Shit et al. 2021): keeps centre lines whole"
    ),
    "bce_dice_image": SegLossSpec(
        _bce_dice_image,
        "BCE + Dice + 0.5 image term: BCE of the mean of each image's 16 highest pixel logits "
        "against 'holds a crack pixel' (ranks whole images as their image score does)",
    ),
}


def build_seg_loss(name: str = DEFAULT_SEG_LOSS, **options: float | None) -> SegLoss:
    """The ``SEG_LOSSES`` row ``name`` with its keyword options (e.g. ``pos_weight=5.0``).

    Raises:
        ValueError: unknown name or an option the row does not take.
    """
    if name not in SEG_LOSSES:
        raise ValueError(f"unknown segmentation loss {name!r}: use one of {', '.join(SEG_LOSSES)}")
    try:
        terms = SEG_LOSSES[name].terms(**options)
    except TypeError as exc:
        raise ValueError(f"segmentation loss {name!r}: {exc}") from None
    return SegLoss(name, terms)


def pos_weight_for(positive_fraction: float, cap: float = 50.0) -> float:
    """BCE ``pos_weight`` that balances positive and background pixels: ``(1 - f) / f``.

    At least 1 (positives are never weighted down) and capped (default 50) because a weight of several hundred, for masks of hair-line cracks,
    turns the BCE term into a detector of anything dark; ``f <= 0`` gives the cap.
    """
    f = float(positive_fraction)
    if f >= 1.0:
        return 1.0
    return cap if f <= 0 else min(cap, max(1.0, (1.0 - f) / f))
