"""The optimiser (parameter groups) and the learning-rate schedule of a run."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fracturekit.config import TrainConfig


def param_groups(
    model: nn.Module, weight_decay: float, lr: float, trunk_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Trainable parameters in groups: head first, then the backbone at ``lr * trunk_lr_scale``.

    Biases and normalisation weights get no weight decay. Empty groups are left out.
    """
    backbone = getattr(model, "backbone", None)
    in_trunk = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (trunk, decay): [] for trunk in (False, True) for decay in (True, False)
    }
    for p in model.parameters():
        if p.requires_grad:
            buckets[(id(p) in in_trunk, p.ndim > 1)].append(p)
    groups = []
    for (trunk, decay), params in buckets.items():
        if params:
            groups.append(
                {
                    "params": params,
                    "weight_decay": weight_decay if decay else 0.0,
                    "lr": lr * (trunk_lr_scale if trunk else 1.0),
                }
            )
    return groups


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable parameters (:func:`param_groups`).

    Raises:
        TrainError: every parameter is frozen.
    """
    from fracturekit.train._loop import TrainError

    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.trunk_lr_scale)
    if not groups:
        raise TrainError("nothing to train: every parameter is frozen")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def schedule_factor(kind: str, epochs: int) -> Callable[[int], float]:
    """Learning-rate multiplier for epoch ``e`` (0-based)."""
    if kind == "cosine":
        return lambda e: 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / epochs))
    if kind == "step":
        step = max(1, epochs // 3)
        return lambda e: 0.1 ** (e // step)
    return lambda e: 1.0
