"""Class imbalance: counts, loss weights, a balanced sampler, undersampling."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from fracturekit.data._records import Sample


def class_counts(samples: Iterable[Sample]) -> dict[int, int]:
    """``{label: count}``, sorted by label (only labels present)."""
    counts = Counter(s.label for s in samples)
    return dict(sorted(counts.items()))


def class_weights(samples: Iterable[Sample], num_classes: int):
    """Inverse-frequency loss weights ``N / (K * n_c)`` (a float32 tensor of ``num_classes``):
    a balanced data set gets all ones, and the weights average to one per sample. A class with
    no sample gets weight 0."""
    import torch

    counts = class_counts(samples)
    total = sum(counts.values())
    present = sum(1 for c in range(num_classes) if counts.get(c))
    weights = [total / (present * counts[c]) if counts.get(c) else 0.0 for c in range(num_classes)]
    return torch.tensor(weights, dtype=torch.float32)


def make_sampler(samples: Sequence[Sample], seed: int = 0):
    """A ``WeightedRandomSampler`` drawing every class equally often (with replacement),
    ``len(samples)`` draws an epoch, seeded."""
    import torch
    from torch.utils.data import WeightedRandomSampler

    counts = class_counts(samples)
    weights = torch.tensor([1.0 / counts[s.label] for s in samples], dtype=torch.double)
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(
        weights, num_samples=len(samples), replacement=True, generator=generator
    )


def undersample(samples: Sequence[Sample], ratio: float, seed: int = 0) -> list[Sample]:
    """Keep every sample of the smallest class and at most ``ratio`` times as many of each other
    class (a seeded random choice), in the original order (seed 5's balancing)."""
    if ratio < 1:
        raise ValueError(f"ratio={ratio}: must be >= 1")
    counts = class_counts(samples)
    if not counts:
        return []
    cap = int(ratio * min(counts.values()))
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for label in sorted(counts):
        idx = [i for i, s in enumerate(samples) if s.label == label]
        if len(idx) > cap:
            idx = [idx[j] for j in sorted(rng.choice(len(idx), size=cap, replace=False))]
        keep.update(idx)
    return [s for i, s in enumerate(samples) if i in keep]
