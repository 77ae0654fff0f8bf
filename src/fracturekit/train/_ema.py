"""The moving average of a run's weights (``ema_epochs``): kept beside the trained weights,
used for validation, the best epoch and ``model.pt``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn


def build_ema(ema_epochs: float, model: nn.Module) -> Any:
    """A ``timm`` moving average of ``model``'s parameters and buffers, or None when
    ``ema_epochs`` is 0. The decay follows the epoch length (:func:`set_horizon`); until one
    horizon has passed, step k weighs every step so far alike (a plain running mean)."""
    if ema_epochs <= 0:
        return None
    from timm.utils import ModelEmaV3

    # warmup_gamma = warmup_power = 1: the decay at step k is (k - 1) / k, capped at .decay.
    return ModelEmaV3(model, decay=0.0, use_warmup=True, warmup_gamma=1.0, warmup_power=1.0)


def set_horizon(ema: Any, ema_epochs: float, steps_per_epoch: int) -> None:
    """Average over about ``ema_epochs`` epochs of ``steps_per_epoch`` optimiser steps."""
    if ema is not None:
        ema.decay = 1.0 - 1.0 / max(ema_epochs * max(steps_per_epoch, 1), 1.0)


@contextlib.contextmanager
def averaged_weights(ema: Any, model: nn.Module) -> Iterator[None]:
    """Within the block ``model`` holds the averaged weights; its own come back after it.
    Nothing happens without an average."""
    if ema is None:
        yield
        return
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.module.state_dict())
    try:
        yield
    finally:
        model.load_state_dict(own)


def ema_state(ema: Any, step: int) -> dict[str, Any] | None:
    """What ``last.pt`` keeps of the average to resume it."""
    if ema is None:
        return None
    return {"state_dict": ema.module.state_dict(), "step": step, "decay": float(ema.decay)}


def load_ema_state(ema: Any, state: dict[str, Any] | None) -> int:
    """Restore the average from :func:`ema_state`; the optimiser steps it has seen."""
    if ema is None or state is None:
        return 0
    ema.module.load_state_dict(state["state_dict"], strict=True)
    ema.decay = float(state["decay"])
    return int(state["step"])


def model_to_save(ema: Any, model: nn.Module) -> nn.Module:
    """The weights a best epoch is saved with: the average when there is one."""
    return model if ema is None else ema.module


__all__ = [
    "averaged_weights",
    "build_ema",
    "ema_state",
    "load_ema_state",
    "model_to_save",
    "set_horizon",
]
