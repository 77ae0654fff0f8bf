"""Shared fixtures. Tests stay on the CPU, offline and small (32-64 px images, tiny models)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_DATA = Path(
    os.environ.get(
        "FRACTUREKIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data sets next to the checkout; skip when absent (a user's machine)."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (set FRACTUREKIT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from torch's seed 0, so tiny random-init models are reproducible."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.manual_seed(0)
    yield
