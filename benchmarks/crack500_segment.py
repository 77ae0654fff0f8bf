"""CRACK500 patches, segmentation: train the default segmenter, score held-out photos' tiles.

The split is the one of ``crack500.py`` (stratified by class, grouped by source photo, fixed
seed; validation carved from the training 80% by photo again); the manifest gains a ``mask``
column (``masks/<patch>.png`` for crack tiles, empty for ``no_crack`` tiles: empty masks).
The test tiles are scored once by :func:`score_segmenter` (shared with ``plain_segment.py``):
the ``segmentation`` keys pooled over all test pixels at the checkpoint's threshold, the
image-level decision from the mask (F1) and ROC AUC of the image score (max probability), and
the width-from-photo check: on every crack tile, ``fracturekit.width`` measures the predicted
mask and the drawn mask; the share of tiles where a crack is found and the MAE of the mean
width per tile.

Targets (issue "Segmentation"): ``pixel_f1_tol2`` >= 0.85, ``miou`` >= 0.80, image F1 >= 0.95,
a crack found on >= 95% of crack tiles with mean width within 2 px (MAE), training >= 2x the
plain loop's 5.8 img/s and under 20 minutes.

Run:
    .venv/bin/python benchmarks/crack500_segment.py --out DIR [--config default_segment]
        [--set epochs=5 ...] [--limit-photos N] [--skip-train]

``--skip-train`` scores ``DIR/run/model.pt`` again without training.

Measured: the README's table "Segmentation on CRACK500" (the default set-up, 688 s of training
on the 2-core Intel Xeon VM; pixel F1 0.726, mIoU 0.772, ``pixel_f1_tol2`` 0.801, image F1
0.941, a crack found on 94.5% of crack tiles, width MAE 5.6 px).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from _common import SHARED_DATA

# The plain reference's figures (benchmarks/plain_segment.py, idle 2-core machine).
PLAIN = {"img_per_s": 5.8, "seconds": 1106}


def add_masks(manifest: Path, root: Path, positive: str) -> None:
    """Give ``manifest`` a ``mask`` column: ``root/masks/<stem>.png`` for ``positive`` images
    that have one, else empty (an empty mask)."""
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        mask = root / "masks" / (Path(row["path"]).stem + ".png")
        row["mask"] = str(mask) if row["label"] == positive and mask.is_file() else ""
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0].keys()])
        writer.writeheader()
        writer.writerows(rows)


def write_manifest(root: Path, out: Path, *, seed: int, test_fraction: float, limit: int | None):
    """``manifest.csv`` (path,label,group,split,mask): ``crack500.write_manifest`` + masks."""
    from crack500 import write_manifest as classify_manifest

    path, n_train, n_test = classify_manifest(
        root, out, seed=seed, test_fraction=test_fraction, limit=limit
    )
    add_masks(path, root, "crack")
    return path, n_train, n_test


def test_rows(manifest: Path) -> list[dict]:
    with manifest.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == "test"]


def _mean_width(mask: np.ndarray) -> float | None:
    """Mean width (px) along the centre lines ``fracturekit.width`` finds in a mask (every
    skeleton point of every crack counts once: a length-weighted mean; None: no crack)."""
    from fracturekit.width import measure_mask

    cracks = measure_mask(mask)
    widths = [c.widths_px for c in cracks if len(c.widths_px)]
    return float(np.mean(np.concatenate(widths))) if widths else None


def score_segmenter(
    predict_maps,
    rows: list[dict],
    threshold: float,
    min_area: float,
    batch: int = 32,
    *,
    positive: str = "crack",
    widths: bool = True,
    keep_scores: bool = False,
) -> dict:
    """Score a segmenter on the manifest's test rows.

    Args:
        predict_maps: ``list of PIL images -> list of (H, W) probability maps``.
        rows: test rows (path, label, mask).
        threshold: pixel threshold; ``min_area``: pixels a predicted piece needs.
        positive: the label of images that hold cracks (or fractures).
        widths: also run the width-from-photo check (cracks; not fractures).
        keep_scores: also return ``image_scores`` (max probability per row).
    """
    from sklearn.metrics import f1_score, roc_auc_score

    from fracturekit.io import read_image, read_mask
    from fracturekit.masks import drop_small_pieces
    from fracturekit.seg_metrics import pointing_game, segmentation_metrics

    maps, masks = [], []
    for i in range(0, len(rows), batch):
        images = [read_image(r["path"]) for r in rows[i : i + batch]]
        maps += predict_maps(images)
        masks += [
            read_mask(r["mask"], size=im.size) if r["mask"] else np.zeros(im.size[::-1], bool)
            for r, im in zip(rows[i : i + batch], images, strict=True)
        ]
    preds = [drop_small_pieces(p >= threshold, min_area) for p in maps]
    truth = np.array([r["label"] == positive for r in rows])
    decided = np.array([p.any() for p in preds])
    out = {
        "segmentation": segmentation_metrics(maps, masks, threshold),
        "image_f1": float(f1_score(truth, decided)),
        "image_roc_auc_max_probability": (
            float(roc_auc_score(truth, [p.max() for p in maps]))
            if 0 < truth.sum() < len(truth)
            else None
        ),
        "pointing_game": pointing_game(maps, masks),
    }
    if keep_scores:
        out["image_scores"] = [float(p.max()) for p in maps]
    if not widths:
        return out
    found, errors = 0, []
    cracks = [(p, m) for p, m, t in zip(preds, masks, truth, strict=True) if t and m.any()]
    for pred, mask in cracks:
        w_pred, w_true = _mean_width(pred), _mean_width(mask)
        if w_pred is not None:
            found += 1
            if w_true is not None:
                errors.append(abs(w_pred - w_true))
    out["width_found_share"] = found / max(len(cracks), 1)
    out["width_mean_mae_px"] = float(np.mean(errors)) if errors else None
    out["width_tiles"] = len(cracks)
    return out


def parser(description: str, data: Path, config: str, limit_help: str) -> argparse.ArgumentParser:
    """The flags of the segmentation benchmarks (this one and ``fracatlas_segment.py``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=data)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default=config)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--limit", "--limit-photos", dest="limit", type=int, help=limit_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run(args: argparse.Namespace, manifest_writer, *, extra=None, **score_options) -> dict:
    """Write the manifest, train (unless ``--skip-train``), score the test rows once and write
    ``figures.json``. ``extra(rows, image_scores) -> dict`` adds figures (``image_roc_auc``)."""
    from fracturekit.config import resolve_config
    from fracturekit.predict import Predictor
    from fracturekit.train import train

    args.out.mkdir(parents=True, exist_ok=True)
    manifest, n_train, n_test = manifest_writer(
        args.data, args.out, seed=args.seed, test_fraction=args.test_fraction, limit=args.limit
    )
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = resolve_config(
        {"data": str(manifest), "seed": args.seed, "val_fraction": 0.2, **overrides}, args.config
    )
    load = os.getloadavg()
    figures: dict = {"config": args.config, "overrides": overrides}
    if not args.skip_train:
        t0 = time.perf_counter()
        result = train(cfg, args.out / "run", progress=not args.no_progress, overwrite=True)
        figures.update(
            train_seconds=round(time.perf_counter() - t0, 1),
            epochs=len(result.history),
            best_epoch=result.metrics.get("best_epoch"),
            epoch_seconds=result.metrics.get("epoch_seconds"),
            validation=result.metrics.get("segmentation"),
        )
        figures["train_val_images"], figures["test_images"] = n_train, n_test
    predictor = Predictor.from_checkpoint(args.out / "run" / "model.pt")
    rows = test_rows(manifest)
    t0 = time.perf_counter()
    # min_area is stored at img_size; the images are scored at their own size (the same for
    # CRACK500 tiles, close to it for FracAtlas radiographs)
    scores = score_segmenter(
        predictor.probability_maps,
        rows,
        predictor.threshold,
        predictor.min_area,
        keep_scores=extra is not None,
        **score_options,
    )
    image_scores = scores.pop("image_scores", None)
    figures["test"] = scores
    figures["test_seconds"] = round(time.perf_counter() - t0, 1)
    if extra is not None:
        figures.update(extra(rows, image_scores))
    figures["threshold"], figures["min_area"] = predictor.threshold, predictor.min_area
    after = os.getloadavg()
    figures["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"before {load[0]:.2f}, after {after[0]:.2f}"
    )
    text = json.dumps(figures, indent=2)
    (args.out / "figures.json").write_text(text + "\n")
    print(text)
    return figures


def main(argv: list[str] | None = None) -> None:
    args = parser(
        __doc__.splitlines()[0],
        SHARED_DATA / "crack500_patches",
        "default_segment",
        "keep N source photos (reduced run)",
    ).parse_args(argv)
    run(args, write_manifest)


if __name__ == "__main__":
    main()
