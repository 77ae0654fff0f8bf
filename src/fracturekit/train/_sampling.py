"""Which samples each epoch and each process sees, in which order and batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from fracturekit.train._dist import Dist


def epoch_order(
    n: int,
    *,
    seed: int,
    epoch: int,
    weights: torch.Tensor | None,
    world: int = 1,
    rank: int = 0,
) -> torch.Tensor:
    """This epoch's sample order for this rank: a permutation (or class-balanced draws with
    replacement when ``weights`` are given), padded to a multiple of ``world`` and dealt out
    like ``DistributedSampler`` so every rank runs the same number of batches."""
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    if weights is not None:
        order = torch.multinomial(weights, n, replacement=True, generator=g)
    else:
        order = torch.randperm(n, generator=g)
    if world > 1:
        pad = (-n) % world
        if pad:
            order = torch.cat([order, order[:pad]])
        order = order[rank::world]
    return order


def split_batches(order: torch.Tensor, batch_size: int, limit: int | None) -> list[torch.Tensor]:
    """``order`` cut into batches of ``batch_size`` indices (at most ``limit`` batches)."""
    chunks = list(torch.split(order, batch_size))
    # A last batch of one sample breaks BatchNorm in training mode; it is dropped (the sample
    # comes back in another epoch's order).
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks.pop()
    if limit is not None:
        chunks = chunks[:limit]
    return chunks


def cached_view_choice(n: int, views: int, *, seed: int, epoch: int, rank: int) -> torch.Tensor:
    """Which cached view (flip) each of this epoch's ``n`` draws shows.

    The draw has its own generator, seeded from (seed, epoch, rank) alone: it leaves the global
    random stream (dropout) untouched, a resumed run redraws the same views for an epoch, and
    every rank and epoch gets its own choice (31 and 7 only keep the seeds of nearby
    seeds/epochs/ranks apart).
    """
    g = torch.Generator().manual_seed(seed * 31 + epoch * 7 + rank)
    return torch.randint(0, views, (n,), generator=g)


def cached_batches(
    cache: Any, chunks: list[torch.Tensor], views: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(activations, labels) of each batch of ``chunks``; ``views`` holds one view per index,
    consumed in order."""
    offset = 0
    for idx in chunks:
        yield cache.batch(idx, views[offset : offset + len(idx)]), cache.labels[idx]
        offset += len(idx)


def shard_indices(n: int, dist: Dist, pad: bool) -> list[int]:
    """Indices of this rank's part of ``range(n)``: padded to equal sizes (training) or not
    (validation, gathered back afterwards)."""
    idx = list(range(n))
    if dist.world == 1:
        return idx
    if pad and n % dist.world:
        idx += idx[: (-n) % dist.world]
    return idx[dist.rank :: dist.world]


def gathered_order(n: int, world: int) -> torch.Tensor:
    """Sample index of each row of validation outputs gathered rank after rank (unpadded
    shards of :func:`shard_indices`)."""
    return torch.cat([torch.arange(rank, n, world) for rank in range(world)])
