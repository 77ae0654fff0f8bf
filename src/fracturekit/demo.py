"""``fracturekit demo``: the whole pipeline, offline, on generated data.

Generates a synthetic crack data set and a separate test set (different seed, so no image is
shared), fine-tunes the embedded ImageNet EfficientNet-Lite0 on it, evaluates the checkpoint on the
test set through the same inference path a user gets, adds a CAM gallery and writes the run's
self-contained ``report.html``. Deterministic for a given seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracturekit.config import TrainConfig
from fracturekit.contracts import MODEL_FILE
from fracturekit.evaluate import evaluate_run
from fracturekit.report import write_report
from fracturekit.synthetic import generate_dataset
from fracturekit.train import train

# The demo's training set-up: the embedded pretrained backbone, the last two stages fine-tuned on
# cached prefix features (no augmentation, so the frozen part runs once), validation-chosen
# threshold and temperature. Fast on two CPU cores and accurate on the synthetic surfaces.
DEMO_TRAIN: dict[str, Any] = {
    "backbone": "efficientnet_lite0",
    "pretrained": True,
    "freeze": "train-last",
    "train_last": 2,
    "augment": "none",
    "cache_features": True,
    "epochs": 12,
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 1e-3,
    "schedule": "cosine",
    "early_stop": 4,
    "val_fraction": 0.2,
}


@dataclass
class DemoResult:
    """Where the demo wrote its files and what it measured."""

    out: Path
    checkpoint: Path
    report: Path
    metrics: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    out: str | Path = "fracturekit-demo",
    *,
    n_train: int = 600,
    n_test: int = 300,
    size: int = 224,
    img_size: int = 192,
    kind: str = "concrete",
    seed: int = 0,
    epochs: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Generate data, train, evaluate and report; return where everything went.

    Args:
        out: the demo folder (``data/``, ``test/``, ``run/`` go inside). Refused when it already
            holds a demo run, unless ``overwrite``.
        n_train: synthetic images for training and validation (split 80/20).
        n_test: synthetic images in the separate test set.
        size: side of the generated images in pixels.
        img_size: the network's input size.
        kind: surface texture: concrete, asphalt, rock or xray.
        seed: seeds the data, the split and the training.
        epochs: override the demo's epoch count (for quick checks).
        overwrite: replace an earlier demo in ``out``.
        progress: show progress bars.
    """
    out = Path(out)
    run_dir = out / "run"
    if (run_dir / MODEL_FILE).exists() and not overwrite:
        raise FileExistsError(
            f"{out}: already holds a demo run; pass --overwrite to replace it or choose another --out"
        )
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    data = generate_dataset(out / "data", n_train, size, seed, kind=kind, overwrite=overwrite)
    test = generate_dataset(
        out / "test", n_test, size, seed + 10_000, kind=kind, overwrite=overwrite
    )
    seconds["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    values = dict(DEMO_TRAIN, data=str(data), img_size=img_size, seed=seed)
    if epochs is not None:
        values["epochs"] = epochs
    cfg = TrainConfig.from_dict(values, source="demo").validate()
    result = train(cfg, run_dir, overwrite=overwrite, progress=progress)
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = evaluate_run(result.run_dir, test)
    seconds["evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _cam_gallery(result.checkpoint, test, run_dir)
    report = write_report(run_dir)
    seconds["report"] = time.perf_counter() - t0
    return DemoResult(out, Path(result.checkpoint), report, metrics, seconds)


def _cam_gallery(checkpoint: Path, test: Path, run_dir: Path) -> None:
    """Heat maps for the report: true positives, false positives and false negatives."""
    from fracturekit.data import load_dataset
    from fracturekit.explain import write_cam_gallery
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint)
    samples = load_dataset(test, val_fraction=0.0).all_samples()
    write_cam_gallery(
        predictor,
        [s.path for s in samples],
        [s.class_name for s in samples],
        run_dir / "cams",
        n_per_group=4,
    )
