"""Test-time augmentation of a CRACK500 segmenter: the same checkpoint with 1, 2, 4 or 8 views.

Training with ``--set tta=N`` compares its epochs on one view, then fits the pixel threshold and
``min_area`` on the best epoch's validation maps averaged over N flipped or turned views
(``SegmentTask.final_outputs``). This script does that last step on an existing run of
``crack500_segment.py --out DIR`` for each N, with the training code's own calibration
(``SegmentTask.calibrate``), and scores the held-out tiles once per N with ``score_segmenter``:
each row is what ``crack500_segment.py --out DIR --set tta=N`` gives (same seed, same epochs),
without training again. One view must give the run's stored threshold and ``min_area`` back
(checked).

Run:
    .venv/bin/python benchmarks/segment_tta.py --run DIR [--views 1 4 8]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from crack500_segment import score_segmenter, test_rows


def validation_outputs(predictor, rows: list[dict], batch: int) -> tuple[dict, dict]:
    """The validation outputs ``SegmentTask.calibrate`` takes, from ``predictor``'s maps at
    ``img_size`` (as training scores them)."""
    import torch

    from fracturekit.io import read_image, read_mask

    size = (predictor.img_size, predictor.img_size)
    probs, masks = [], []
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        tensors = predictor.stack([predictor.preprocess(read_image(r["path"])) for r in part])
        probs += predictor.predict_proba_maps(tensors)
        masks += [
            read_mask(r["mask"], size=size) if r["mask"] else np.zeros(size, bool) for r in part
        ]
    stacked = torch.from_numpy(np.stack(probs))
    outputs = {
        "probs": torch.round(stacked * 255).to(torch.uint8),
        "top": stacked.flatten(1).amax(1).double(),
    }
    truth = {
        "masks": torch.from_numpy(np.stack(masks)),
        "weight": torch.ones(len(rows)),
        "image": torch.tensor([r["label"] == "crack" for r in rows]),
    }
    return outputs, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="crack500_segment.py --out DIR")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from fracturekit.config import TrainConfig
    from fracturekit.predict import Predictor
    from fracturekit.train._segment_task import SegmentTask

    ckpt = args.run / "run" / "model.pt"
    predictor = Predictor.from_checkpoint(ckpt)
    if predictor.tta != 1:
        raise SystemExit(f"{ckpt}: trained with tta={predictor.tta}; give a one-view run")
    cfg = TrainConfig.from_dict(predictor.meta["config"])
    manifest = {r["path"]: r for r in csv.DictReader((args.run / "manifest.csv").open())}
    with (args.run / "run" / "splits.csv").open(newline="") as fh:
        val = [manifest[r["path"]] for r in csv.DictReader(fh) if r["split"] == "val"]
    test = test_rows(args.run / "manifest.csv")
    stored = (predictor.threshold, predictor.min_area)

    table = Table(title=f"{len(test)} held-out tiles; threshold and min_area fitted on {len(val)}")
    columns = ("views", "threshold / min_area", "pixel F1", "mIoU", "pixel_f1_tol2",
               "image F1", "image ROC AUC", "crack found", "width MAE", "test seconds")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for views in args.views:
        predictor.meta["tta"] = views
        outputs, truth = validation_outputs(predictor, val, args.batch_size)
        _, threshold, fitted = SegmentTask().calibrate(
            cfg, outputs, truth, predictor.classes, predictor.positive, print
        )
        min_area = fitted["min_area"]
        if views == 1 and (threshold, min_area) != stored:
            raise SystemExit(
                f"one view gave threshold {threshold} / min_area {min_area}, the run stores "
                f"{stored[0]} / {stored[1]}: this script no longer calibrates as training does"
            )
        t0 = time.perf_counter()
        s = score_segmenter(predictor.probability_maps, test, threshold, min_area)
        seg = s["segmentation"]
        table.add_row(
            str(views),
            f"{threshold:.2f} / {min_area}",
            f"{seg['pixel_f1']:.3f}",
            f"{seg['miou']:.3f}",
            f"{seg['pixel_f1_tol2']:.3f}",
            f"{s['image_f1']:.3f}",
            f"{s['image_roc_auc_max_probability']:.3f}",
            f"{s['width_found_share']:.1%}",
            f"{s['width_mean_mae_px']:.2f} px",
            f"{time.perf_counter() - t0:.0f}",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
