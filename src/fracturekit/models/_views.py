"""The eight symmetries of a square image batch: cached training views and test-time averaging.

A crack or a fracture line is still one when the picture is mirrored or turned by 90 degrees, so
the dihedral group of the square serves twice: training on cached activations stores fixed
flipped copies of each image (``TrainConfig.cache_views``), and prediction can average the
logits of flipped copies (``TrainConfig.tta``, stored in the checkpoint as ``tta``). Flips commute
with resizing and normalisation, so flipping the preprocessed tensor equals preprocessing the
flipped image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fracturekit.config import CACHE_VIEWS, INVERSE_VIEWS

# Order matters: 2 views take the first two, 4 the first four, 8 all.
VIEW_OPS: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = (
    lambda x: x,
    lambda x: x.flip(-1),  # horizontal mirror
    lambda x: x.flip(-2),  # vertical mirror
    lambda x: x.flip(-2, -1),  # 180-degree turn
    lambda x: x.transpose(-2, -1),  # transpose (mirror about the main diagonal)
    lambda x: x.transpose(-2, -1).flip(-1),  # 90-degree turn
    lambda x: x.transpose(-2, -1).flip(-2),  # 270-degree turn
    lambda x: x.transpose(-2, -1).flip(-2, -1),  # anti-transpose
)


def check_views(shape: tuple[int, ...], views: int) -> None:
    """Refuse a view count not in ``config.CACHE_VIEWS``, or 90-degree turns of a non-square
    batch (``shape``: the batch's shape)."""
    if views not in CACHE_VIEWS:
        raise ValueError(f"views must be one of {', '.join(map(str, CACHE_VIEWS))}, got {views}")
    if views > 4 and shape[-1] != shape[-2]:
        raise ValueError(
            f"{views} views turn the image by 90 degrees: the input must be square, got "
            f"{shape[-2]}x{shape[-1]}"
        )


def view_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, views: int
) -> torch.Tensor:
    """The mean of ``forward(op(batch))`` over the first ``views`` of :data:`VIEW_OPS`.

    Logits (not probabilities) are averaged, so temperature scaling and the decision threshold,
    fitted on validation logits averaged the same way, apply unchanged.

    Args:
        forward: maps an N x C x H x W batch to N x K logits.
        batch: the preprocessed batch.
        views: one of ``config.CACHE_VIEWS`` (1 is ``forward(batch)`` itself); more than 4 needs
            square inputs.

    Raises:
        ValueError: ``views`` is not one of them, or a transposing view meets a non-square batch.
    """
    check_views(tuple(batch.shape), views)
    total = forward(batch)
    for op in VIEW_OPS[1:views]:
        total = total + forward(op(batch))
    return total / views


def view_maps(
    forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, views: int
) -> torch.Tensor:
    """Pixel logits averaged over the first ``views`` of :data:`VIEW_OPS`, each brought back to
    the input's orientation (``INVERSE_VIEWS``) before it is added: a segmenter's test-time
    augmentation.

    Args:
        forward: maps an N x C x H x W batch to N x K x H x W pixel logits.
        batch, views: as :func:`view_logits`.
    """
    check_views(tuple(batch.shape), views)
    total = forward(batch)
    for k in range(1, views):
        total = total + VIEW_OPS[INVERSE_VIEWS[k]](forward(VIEW_OPS[k](batch)))
    return total / views
