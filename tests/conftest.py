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


@pytest.fixture(scope="session", autouse=True)
def _cache_folder(tmp_path_factory):
    """The service's ONNX exports go to a cache of the test session (shared by its processes),
    never to the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("fracturekit-cache")
    old = os.environ.get("FRACTUREKIT_CACHE")
    os.environ["FRACTUREKIT_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("FRACTUREKIT_CACHE", None)
    else:
        os.environ["FRACTUREKIT_CACHE"] = old


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


# Backbones whose tests take seconds each on 2 cores: tests parametrised over the backbone table
# run these rows in the full tier only (`bash tools/test.sh`); the fast tier (`--fast`) keeps the
# light rows, which exercise the same code.
HEAVY_BACKBONES = frozenset(
    {
        "convnext_tiny",
        "densenet121",
        "efficientnet_b0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "resnet50",
        "vgg19",
    }
)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(v, str) and v in HEAVY_BACKBONES for v in params.values()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def make_seg_checkpoint(tmp_path_factory):
    """``make(bias=None, img_size=64, threshold=0.5, min_area=0) -> Path``: a small segmentation
    checkpoint (U-Net over EfficientNet-Lite0, random init). With ``bias`` the head's weights are
    zero and its bias is ``bias``: every pixel gets probability ``sigmoid(bias)``, so a test knows
    the mask (all crack for bias > logit(threshold), none below)."""
    import torch

    from fracturekit.models import build_segmenter, save_checkpoint

    made: dict[tuple, Path] = {}

    def make(
        *,
        bias: float | None = None,
        img_size: int = 64,
        threshold: float = 0.5,
        min_area: int = 0,
    ) -> Path:
        key = (bias, img_size, threshold, min_area)
        if key not in made:
            torch.manual_seed(0)
            model = build_segmenter("efficientnet_lite0", pretrained=False).eval()
            if bias is not None:
                head = model.net.segmentation_head[0]
                with torch.no_grad():
                    head.weight.zero_()
                    head.bias.fill_(bias)
            path = tmp_path_factory.mktemp("segckpt") / "model.pt"
            meta = {"img_size": img_size, "threshold": threshold, "min_area": min_area}
            save_checkpoint(path, model, meta)
            made[key] = path
        return made[key]

    return make
