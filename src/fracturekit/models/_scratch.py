"""Small networks trained from scratch (``lenet``, ``simple_cnn``).

They expose the same surface the family adapters use on timm models: ``stages`` (trunk blocks),
``forward_features``, ``forward_head(x, pre_logits=True)`` (pooling to a feature vector),
``num_features`` and ``forward`` (pooled features). Both accept 1 or 3 input channels and any
input size, because pooling is adaptive.
"""

from __future__ import annotations

import torch
from torch import nn


class _ScratchNet(nn.Module):
    stages: nn.ModuleList
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class LeNet(_ScratchNet):
    """LeNet-5 layout: conv(6, 5x5)-pool-conv(16, 5x5)-pool, then dense 120-84.

    The classic network flattens a 16x5x5 map; an adaptive average pool to 5x5 keeps that
    shape for any input size (227 px in the concrete-crack configuration). The dense 120 and 84
    layers belong to the pooling part (the ``neck``), so the head maps 84 features to classes.
    """

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(in_chans, 6, 5), nn.ReLU(), nn.MaxPool2d(2)),
                nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)),
            ]
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(5),
            nn.Flatten(1),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )
        self.num_features = 84


class SimpleCNN(_ScratchNet):
    """Four Conv3x3-BatchNorm-ReLU-MaxPool blocks (32-64-128-256 channels), global average pool.

    Dropout and the dense layers live in the fracture head (``hidden``/``dropout``).
    """

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        blocks, prev = [], in_chans
        for w in widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(prev, w, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(),
                    nn.MaxPool2d(2, ceil_mode=True),  # ceil: tiny inputs never shrink to 0 px
                )
            )
            prev = w
        self.stages = nn.ModuleList(blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.num_features = prev


SCRATCH_NETS: dict[str, type[_ScratchNet]] = {"lenet": LeNet, "simple_cnn": SimpleCNN}
