"""FracAtlas, image ROC AUC with test-time views: classifier, segmenter and the mean of both.

Takes the two checkpoints of ``fracatlas.py --out C`` and ``fracatlas_segment.py --out S`` (same
seed, so the same held-out radiographs) and scores the held-out images of ``S/manifest.csv``
with 1, 2, 4 or 8 flipped and turned views (``--views``; the ``tta`` setting: the classifier's
logits, the segmenter's pixel logits averaged over the views, each turned back). The image
scores are the ones of ``fracatlas_segment.py --classifier``: the classifier's probability of
``fractured``, the segmenter's most probable pixel (at the checkpoint's input size), and their
mean. Neither needs a threshold, so nothing is refitted: each row is what the two checkpoints
give with ``--tta N``. 95% intervals: 2,000 bootstrap resamples of the images, stratified.

Target (issue "Segmentation"): image ROC AUC >= 0.92 from the best of classifier,
segmentation or both.

Run:
    .venv/bin/python benchmarks/fracatlas_views.py --classifier C/run/model.pt \
        --segmenter S/run/model.pt [--views 1 2 4 8]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from _common import start_clock, target_line
from fracatlas_segment import POSITIVE, classifier_scores
from segment_tta import view_outputs


def bootstrap_auc(truth: np.ndarray, score: np.ndarray, n: int = 2000) -> tuple[float, float]:
    """A stratified bootstrap 95% interval of the ROC AUC."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(truth), np.flatnonzero(~truth)
    values = []
    for _ in range(n):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        values.append(roc_auc_score(truth[idx], score[idx]))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--segmenter", type=Path, required=True)
    parser.add_argument(
        "--manifest", type=Path, help="default: the segmenter run's ../manifest.csv"
    )
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table
    from sklearn.metrics import roc_auc_score

    from fracturekit.predict import Predictor

    clock = start_clock()
    views = sorted(set(args.views))
    manifest = args.manifest or args.segmenter.parent.parent / "manifest.csv"
    with manifest.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    truth = np.array([r["label"] == POSITIVE for r in rows])
    t0 = time.perf_counter()
    segmenter = Predictor.from_checkpoint(args.segmenter)
    seg = {v: o["top"].numpy() for v, o in view_outputs(segmenter, rows, views, 4).items()}
    seg_seconds = time.perf_counter() - t0
    table = Table(
        title=f"FracAtlas, {len(rows)} held-out radiographs ({int(truth.sum())} fractured): "
        "image ROC AUC (95% CI)"
    )
    for col in ("views", "classifier", "segmenter (most probable pixel)", "mean of both"):
        table.add_column(col, justify="right")
    figures: dict = {"images": len(rows), "fractured": int(truth.sum()), "views": {}}
    for v in views:
        cls = classifier_scores(args.classifier, rows, args.batch_size, views=v)
        cells = []
        entry = {}
        for name, score in (
            ("classifier", cls),
            ("segmenter", seg[v]),
            ("mean", (cls + seg[v]) / 2),
        ):
            auc = float(roc_auc_score(truth, score))
            lo, hi = bootstrap_auc(truth, score)
            entry[name] = {"roc_auc": auc, "ci95": [lo, hi]}
            cells.append(f"{auc:.3f} ({lo:.3f}-{hi:.3f})")
        figures["views"][str(v)] = entry
        table.add_row(str(v), *cells)
    Console(width=140).print(table)
    figures["segmenter_seconds_all_views"] = seg_seconds
    figures["machine"] = clock.line()
    print(json.dumps(figures, indent=1))
    print(clock.line())
    best = max(e[k]["roc_auc"] for e in figures["views"].values() for k in e)
    print(target_line("image ROC AUC >= 0.92 (best of classifier, segmenter, both)", best >= 0.92))


if __name__ == "__main__":
    main()
