"""Splits: stratified by class, group-disjoint with groups, identical copies on one side."""

from __future__ import annotations

import warnings as _warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fracturekit.data._hashing import content_digest
from fracturekit.data._records import DatasetError, Sample


def _digest_or_path(sample: Sample) -> str:
    # A file that cannot be read has already been reported by the up-front check; it is unique.
    try:
        return content_digest(sample.path)
    except OSError:
        return f"path:{sample.path}"


def _stratified_take(samples: list[Sample], fraction: float, seed: int) -> tuple[list, list]:
    """Per class, a seeded ``round(n * fraction)`` of the samples (at least one from a class of
    two or more, never all of it)."""
    if fraction <= 0 or not samples:
        return samples, []
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_class[s.class_name].append(i)
    taken: set[int] = set()
    for name in sorted(by_class):
        idx = by_class[name]
        n = len(idx)
        k = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
        taken.update(idx[j] for j in rng.permutation(n)[:k])
    taken -= _straddling_copies(samples, taken)
    keep = [s for i, s in enumerate(samples) if i not in taken]
    return keep, [s for i, s in enumerate(samples) if i in taken]


def _straddling_copies(samples: list[Sample], taken: set[int]) -> set[int]:
    """Indices in ``taken`` whose file has an identical copy outside ``taken``.

    Real data sets hold byte-identical files under different names (FracAtlas has several); a
    random split that puts one copy in training and another in validation inflates validation
    scores. Such copies are kept on the training side, so validation never sees an image that
    training saw.
    """
    if not taken:
        return set()
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(_digest_or_path, samples))
    outside = {d for i, d in enumerate(digests) if i not in taken}
    return {i for i in taken if digests[i] in outside}


def _group_take(samples: list[Sample], fraction: float, seed: int) -> tuple[list, list]:
    """Whole groups, stratified by class: one fold of StratifiedGroupKFold(round(1/fraction))."""
    from sklearn.model_selection import StratifiedGroupKFold

    if fraction <= 0 or not samples:
        return samples, []
    groups = [s.group if s.group is not None else f"file:{s.path}" for s in samples]
    n_groups = len(set(groups))
    if n_groups < 2:
        raise DatasetError("cannot make a group-disjoint split: every sample is in one group")
    n_splits = min(max(2, round(1 / fraction)), n_groups)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with _warnings.catch_warnings():
        # "The least populated class in y has only N members": fine, groups decide anyway.
        _warnings.simplefilter("ignore", UserWarning)
        _, held = next(
            splitter.split(np.zeros(len(samples)), [s.class_name for s in samples], groups)
        )
    held_set = set(held.tolist())
    keep = [s for i, s in enumerate(samples) if i not in held_set]
    return keep, [s for i, s in enumerate(samples) if i in held_set]


def split_samples(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split off ``fraction`` of ``samples``: stratified by class, group-disjoint when any
    sample has a group; byte-identical copies of a file never straddle the two sides. Returns
    ``(rest, taken)``, both in input order."""
    if any(s.group is not None for s in samples):
        return _group_take(samples, fraction, seed)
    return _stratified_take(samples, fraction, seed)
