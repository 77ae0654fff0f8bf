"""FracAtlas, segmentation: where the fracture is on held-out radiographs.

The split is the one of ``fracatlas.py`` (stratified 80/20 by label, fixed seed; validation
carved from the training 80%), so a classifier trained by ``fracatlas.py`` with the same seed saw
none of these test images. The manifest gains a ``mask`` column (``masks/<stem>.png`` for
fractured images, empty for not-fractured ones: empty masks). The test images are scored once by
``crack500_segment.score_segmenter``: the ``segmentation`` keys pooled over all test pixels at
the checkpoint's threshold, the image-level decision from the mask (F1), the image ROC AUC of
the image score (the map's maximum probability), and the pointing game (the share of fractured
images whose most probable pixel lies in the fracture's mask dilated by 8 px).

``--classifier CKPT`` (a ``fracatlas.py`` run on the same seed) also scores the classifier's
fracture probability on the same images and the mean of the two scores (the "both" of the
issue's target).

Targets (issue "Segmentation"): pointing game >= 0.5 (heat maps: 0.08); image ROC AUC >= 0.92
from the best of classifier, segmentation or both (the classifier: 0.90).

Run:
    .venv/bin/python benchmarks/fracatlas_segment.py --out DIR [--config fracatlas_segment]
        [--set epochs=8 ...] [--limit N] [--classifier RUN/model.pt] [--skip-train]

``--skip-train`` scores ``DIR/run/model.pt`` again without training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _common import SHARED_DATA

POSITIVE = "fractured"


def write_manifest(root: Path, out: Path, *, seed: int, test_fraction: float, limit: int | None):
    """``manifest.csv`` (path,label,split,mask): ``fracatlas.write_manifest`` + masks."""
    from crack500_segment import add_masks
    from fracatlas import write_manifest as classify_manifest

    path, n_train, n_test = classify_manifest(
        root, out, seed=seed, test_fraction=test_fraction, limit=limit
    )
    add_masks(path, root, POSITIVE)
    return path, n_train, n_test


def classifier_scores(
    checkpoint: Path, rows: list[dict], batch: int = 32, views: int | None = None
) -> np.ndarray:
    """The classifier's probability of ``fractured`` for each row, with ``views`` test-time
    views (``tta``) when given, else the checkpoint's own."""
    from fracturekit.io import read_image
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint)
    if views is not None:
        predictor.meta["tta"] = views
    out = []
    for i in range(0, len(rows), batch):
        images = [read_image(r["path"]) for r in rows[i : i + batch]]
        out += [p.probabilities[POSITIVE] for p in predictor.predict_images(images)]
    return np.array(out)


def combined(rows: list[dict], seg_scores: list[float], checkpoint: Path) -> dict:
    """Image ROC AUC of the classifier, the segmenter's maximum probability and their mean."""
    from sklearn.metrics import roc_auc_score

    truth = np.array([r["label"] == POSITIVE for r in rows])
    cls = classifier_scores(checkpoint, rows)
    seg = np.asarray(seg_scores)
    return {
        "classifier": str(checkpoint),
        "roc_auc_classifier": float(roc_auc_score(truth, cls)),
        "roc_auc_segmenter": float(roc_auc_score(truth, seg)),
        "roc_auc_mean_of_both": float(roc_auc_score(truth, (cls + seg) / 2)),
    }


def main(argv: list[str] | None = None) -> None:
    from crack500_segment import parser, run

    cli = parser(
        __doc__.splitlines()[0],
        SHARED_DATA / "fracatlas",
        "fracatlas_segment",
        "keep N images (reduced run)",
    )
    cli.add_argument("--classifier", type=Path, help="a fracatlas.py model.pt, same seed")
    args = cli.parse_args(argv)

    def with_classifier(rows: list[dict], scores: list[float]) -> dict:
        return {"image_roc_auc": combined(rows, scores, args.classifier)}

    extra = with_classifier if args.classifier else None
    run(args, write_manifest, extra=extra, positive=POSITIVE, widths=False)


if __name__ == "__main__":
    main()
