"""Decisions at 3 % cracks, cross-validated, for a segmenter with other image scores.

A segmenter's image score is its most probable pixel (``masks.segment_image_score``). This
script asks whether a read-out of more of the map ranks and decides better at ``--prior``: the
mean of the ``k`` most probable pixels (k = 4 ... 1,024), the predicted crack area at 0.5 and
the sum of the probabilities (both over the map's pixels). It takes the folds of
``benchmarks/prior_cv.py --out DIR --config default_segment``, runs each fold's checkpoint on
its validation tiles and held-out tiles (one view, ``Predictor.probability_maps``), reads each
score's threshold at ``--prior`` from its validation values with ``threshold_at_prior`` (as
``--prior`` does with the stored scores) and draws the view as ``prior_cv.py`` does: every
``no_crack`` tile, 3 % cracks drawn ``--draws`` times. The row ``max`` is the checkpoint's own
score without its ``min_area`` rule (on the default segmenter's folds it gives ``prior_cv.py``'s
figure back). The scores are cached in ``DIR/image_scores.npz``.

Run:
    .venv/bin/python benchmarks/prior_cv_scores.py --cv DIR [--prior 0.03] [--draws 200]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _common import start_clock
from prior_cv import (
    cv_parser,
    decided_rows,
    fold_splits,
    held_out_pairs,
    print_decided,
    trained_folds,
)

TOP_K = (1, 4, 16, 64, 256, 1024)
SCORES = [f"top {k}" if k > 1 else "max" for k in TOP_K] + ["area at 0.5", "sum"]


def map_scores(prob: np.ndarray) -> list[float]:
    """:data:`SCORES` of one probability map."""
    ranked = np.sort(prob.ravel())[::-1]
    return [float(ranked[:k].mean()) for k in TOP_K] + [
        float((prob >= 0.5).mean()),
        float(prob.mean()),
    ]


def fold_scores(fold: Path, batch: int) -> dict[str, np.ndarray]:
    """The fold's validation and held-out tiles: :data:`SCORES` (N, S), truth, paths."""
    from fracturekit.io import read_image
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(fold / "run" / "model.pt")
    parts = fold_splits(fold)
    out: dict[str, np.ndarray] = {}
    for part in ("val", "test"):
        rows = parts[part]
        values = []
        for i in range(0, len(rows), batch):
            images = [read_image(r["path"]) for r in rows[i : i + batch]]
            values += [map_scores(p) for p in predictor.probability_maps(images)]
        out[part] = np.array(values)
        out[f"{part}_crack"] = np.array([r["label"] == "crack" for r in rows])
        out[f"{part}_paths"] = np.array([r["path"] for r in rows])
    return out


def main() -> None:
    parser = cv_parser(__doc__, "prior_cv.py --out DIR (segmenter)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from rich.console import Console

    folds = trained_folds(args.cv)
    clock = start_clock()
    cache = args.cv / "image_scores.npz"
    if cache.is_file():
        saved = np.load(cache)
        per_fold = [{k.split("__", 1)[1]: saved[k] for k in saved if k.startswith(f"{f.name}__")}
                    for f in folds]  # fmt: skip
    else:
        per_fold = [fold_scores(f, args.batch_size) for f in folds]
        flat = {f"{f.name}__{k}": v for f, d in zip(folds, per_fold, strict=True) for k, v in d.items()}  # fmt: skip
        np.savez(cache, **flat)
    rows: dict[str, list[dict]] = {name: [] for name in SCORES}
    for fold, d in zip(folds, per_fold, strict=True):
        test = held_out_pairs(d["test_paths"], d["test_crack"])
        for j, name in enumerate(SCORES):
            v, t = d["val"][:, j], d["test"][:, j]
            rows[name] += decided_rows(fold.name, d["val_crack"], v, test, t, args.prior)

    title = (
        f"{len(folds)} folds, one view; every no_crack tile + {args.prior:.0%} cracks, "
        f"{args.draws} draws; each score's threshold from its validation values"
    )
    out = args.cv / "summary_scores.json"
    print_decided(
        Console(width=140), rows, args, title=title, first="image score", out=out, clock=clock
    )


if __name__ == "__main__":
    main()
