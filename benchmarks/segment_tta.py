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


def view_outputs(
    predictor, rows: list[dict], views: list[int], batch: int, *, single: bool = False
) -> dict[int, dict[str, object]]:
    """The outputs ``SegmentTask.calibrate`` takes, for each count in ``views``: the probability
    maps at ``img_size`` (bytes, as training keeps them) and each image's most probable pixel,
    the pixel logits averaged over the first that many views (``models.VIEW_OPS``, each turned
    back), all counts from one pass over the views. ``single``: for each ``k`` in ``views``,
    view ``k`` alone (the image flipped and turned as ``VIEW_OPS[k - 1]``, 1 = as it is)."""
    import torch

    from fracturekit.io import read_image
    from fracturekit.models._views import INVERSE_VIEWS, VIEW_OPS, check_views

    model = predictor.model
    for v in [max(views)] if single else views:  # every batch is img_size square
        check_views((predictor.img_size, predictor.img_size), v)
    probs: dict[int, list] = {v: [] for v in views}
    tops: dict[int, list] = {v: [] for v in views}
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            x = predictor.stack([predictor.preprocess(read_image(r["path"])) for r in part])
            total = None
            for k in range(max(views)):
                view = VIEW_OPS[k](x).contiguous(memory_format=torch.channels_last)
                out = VIEW_OPS[INVERSE_VIEWS[k]](model(view).float())
                total = out if total is None else total + out
                if k + 1 in views:
                    mean = out if single else total / (k + 1)
                    probs[k + 1].append(torch.round(torch.sigmoid(mean[:, 0]) * 255).byte())
                    tops[k + 1].append(torch.sigmoid(mean.amax(dim=(1, 2, 3)).double()))
    return {v: {"probs": torch.cat(probs[v]), "top": torch.cat(tops[v])} for v in views}


def validation_truth(rows: list[dict], size: tuple[int, int]) -> dict:
    """The truth ``SegmentTask.calibrate`` takes: each row's mask at ``size`` (empty without a
    mask file), unit weights, and whether its label is ``crack``."""
    import torch

    from fracturekit.io import read_mask

    masks = [read_mask(r["mask"], size=size) if r["mask"] else np.zeros(size, bool) for r in rows]
    return {
        "masks": torch.from_numpy(np.stack(masks)),
        "weight": torch.ones(len(rows)),
        "image": torch.tensor([r["label"] == "crack" for r in rows]),
    }


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
    val_outputs = view_outputs(predictor, val, args.views, args.batch_size)
    truth = validation_truth(val, (predictor.img_size, predictor.img_size))
    for views in args.views:
        predictor.meta["tta"] = views
        _, threshold, fitted = SegmentTask().calibrate(
            cfg, dict(val_outputs[views]), truth, predictor.classes, predictor.positive, print
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
