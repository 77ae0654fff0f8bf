"""The trainable part of the model as one module, and its predictions on a feature cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fracturekit.train._cache import FeatureCache


class Runner(nn.Module):
    """The trainable part of the model as one module (what DDP wraps).

    ``forward(x, cached)``: on cached activations run ``blocks[start:]``, pooling and head (or
    only the head on cached pooled features); on images run the frozen prefix without autograd,
    then the rest.
    """

    def __init__(self, model: nn.Module, start: int, pooled: bool) -> None:
        super().__init__()
        self.model = model
        self.start = start
        self.pooled = pooled

    def forward(self, x: torch.Tensor, cached: bool) -> torch.Tensor:
        model = self.model
        if cached:
            if self.pooled:
                return model.head(x)
            return model.forward_from(x, self.start)
        if self.start > 0:
            with torch.no_grad():
                x = model.forward_until(x, self.start)
        return model.forward_from(x, self.start)


def trainable_start(model: Any) -> tuple[int, bool]:
    """First trunk block with a trainable parameter, and whether pooling is frozen too."""
    blocks = model.blocks()
    start = next(
        (i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())),
        len(blocks),
    )
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    pool_trainable = any(
        p.requires_grad for p in model.backbone.parameters() if id(p) not in in_blocks
    )
    return start, start == len(blocks) and not pool_trainable


def predict_cached(
    runner: Runner,
    cache: FeatureCache,
    *,
    batch_size: int,
    channels_last: bool,
    device: torch.device,
    autocast: Callable[[], Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every cached (validation) sample, in order, on the CPU, and their labels.

    With several cached views (``cfg.tta``), the mean of their logits, as
    ``fracturekit.models.view_logits`` gives at prediction.
    """
    runner.eval()
    outs = []
    with torch.inference_mode():
        for idx in torch.split(torch.arange(len(cache)), max(batch_size, 64)):
            total = None
            for v in range(cache.views):
                x = cache.batch(idx, torch.full_like(idx, v)).to(device)
                if channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    z = runner(x, True).float().cpu()
                total = z if total is None else total + z
            outs.append(total / cache.views)
    runner.train()
    logits = torch.cat(outs) if outs else torch.empty(0, 0)
    return logits, cache.labels.clone()
