"""Cached frozen-prefix activations: run the frozen part of the network once, train the rest.

When the first ``start`` trunk blocks are frozen and the training images are not augmented,
``model.forward_until(x, start)`` gives the same tensor at every epoch, so computing it once
(and training ``forward_from`` on it) is exact and turns minutes per epoch into seconds. When the
pooling part is frozen too (``--freeze all-but-head``), the cache holds the pooled feature
vectors and an epoch costs one pass through the head.

``views`` > 1 also caches fixed flipped copies of every image (the dihedral group of the square:
mirrors, 180- and 90-degree turns, transposes), so cached training still sees some augmentation:
each epoch picks one view per image at random (``fracturekit.models.VIEW_OPS``; validation
caches as many views as the checkpoint averages at prediction, ``tta``).

The cache lives in memory, or in a memory-mapped file beside the run when it would take more
than a quarter of the machine's RAM.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fracturekit.models import VIEW_OPS


def ram_bytes() -> int:
    """Physical memory of the machine (8 GiB when it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


@dataclass
class FeatureCache:
    """Cached activations ``data[view, sample, ...]`` (float32) and their labels.

    Attributes:
        data: ``[views, n, ...]`` tensor; memory-mapped when ``path`` is set.
        labels: ``[n]`` int64 class indices.
        seconds: time taken to compute it.
        path: backing file of a memory-mapped cache (deleted by :meth:`close`).
    """

    data: torch.Tensor
    labels: torch.Tensor
    seconds: float = 0.0
    path: Path | None = None

    @property
    def views(self) -> int:
        return int(self.data.shape[0])

    def __len__(self) -> int:
        return int(self.data.shape[1])

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def batch(self, index: torch.Tensor, view: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``index`` (of view ``view[i]`` each; view 0 when None) as a fresh tensor."""
        if view is None:
            return self.data[0, index]
        return self.data[view, index]

    def close(self) -> None:
        """Release the memory map and delete its file."""
        if self.path is not None:
            self.data = torch.empty(0)
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None


def _allocate(shape: tuple[int, ...], spill_dir: Path | None) -> tuple[torch.Tensor, Path | None]:
    nbytes = int(np.prod(shape)) * 4
    if spill_dir is None or nbytes <= ram_bytes() // 4:
        return torch.empty(shape, dtype=torch.float32), None
    spill_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="feature-cache-", suffix=".f32", dir=spill_dir)
    os.close(fd)
    array = np.memmap(name, dtype=np.float32, mode="w+", shape=shape)
    return torch.from_numpy(array), Path(name)


def build_cache(
    model: Any,
    loader: Any,
    n: int,
    *,
    start: int,
    pooled: bool,
    views: int = 1,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    spill_dir: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> FeatureCache:
    """Run the frozen prefix over every image of ``loader`` once (per view).

    Args:
        model: a ``FractureNet`` (its prefix ``blocks()[:start]`` frozen).
        loader: yields ``(x, y)`` batches of preprocessed, un-augmented images, in order.
        n: number of images the loader yields.
        start: the first trainable block; the cache holds ``forward_until(x, start)``.
        pooled: cache the pooled feature vectors instead (pooling frozen too).
        views: how many of :data:`VIEW_OPS` to cache per image.
        device: where the prefix runs.
        channels_last: feed the prefix channels-last batches.
        autocast: context manager factory for mixed precision.
        spill_dir: folder for a memory-mapped cache when it would not fit in RAM comfortably.
        on_batch: called with the batch size after each batch (progress bars).
    """
    if not 1 <= views <= len(VIEW_OPS):
        raise ValueError(f"views must be in 1..{len(VIEW_OPS)}, got {views}")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    data: torch.Tensor | None = None
    path: Path | None = None
    labels = torch.empty(n, dtype=torch.int64)
    filled = 0
    try:
        with torch.no_grad():
            for x, y in loader:
                b = x.shape[0]
                x = x.to(device, non_blocking=True)
                if channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                for v in range(views):
                    xv = VIEW_OPS[v](x)
                    with autocast():
                        f = model.features(xv) if pooled else model.forward_until(xv, start)
                    f = f.float().cpu()
                    if data is None:
                        data, path = _allocate((views, n, *f.shape[1:]), spill_dir)
                    data[v, filled : filled + b] = f
                labels[filled : filled + b] = torch.as_tensor(y, dtype=torch.int64)
                filled += b
                if on_batch is not None:
                    on_batch(b)
    finally:
        model.train(was_training)
    if filled != n:
        raise RuntimeError(f"the loader gave {filled} images, expected {n}")
    if data is None:  # no sample at all
        data = torch.empty((views, 0))
    return FeatureCache(data, labels, time.perf_counter() - t0, path)


def cache_bytes_estimate(shape: Sequence[int], n: int, views: int) -> int:
    return int(np.prod(shape)) * n * views * 4
