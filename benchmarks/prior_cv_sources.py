"""Decisions at 3 % cracks, cross-validated, with the threshold read from more tiles.

At 3 % the ``--prior`` threshold rests on the one or two highest of about 160 validation
``no_crack`` tiles. The training split holds four times as many, but the network has learnt
them, so their scores run lower. This script asks whether reading the threshold from them
decides the held-out tiles better, or only lower:

- ``validation``: the stored validation scores, as ``--prior`` reads them (gives
  ``prior_cv.py``'s figure back);
- ``validation + training``: the validation and the training tiles together;
- ``training``: the training tiles alone.

It takes the folds of ``benchmarks/prior_cv.py --out DIR`` (a classifier's or a segmenter's),
runs each fold's checkpoint on its training, validation and held-out tiles (the image score
``predict`` gives: one view, no prior), reads each source's threshold with
``threshold_at_prior`` and draws the view as ``prior_cv.py`` does: every ``no_crack`` tile, 3 %
cracks drawn ``--draws`` times. The scores are cached in ``DIR/fold<k>/split_scores.npz``. The
upper 1 % of each split's ``no_crack`` scores is printed per fold.

Run:
    .venv/bin/python benchmarks/prior_cv_sources.py --cv DIR [--prior 0.03] [--draws 200]
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

PARTS = ("train", "val", "test")
SOURCES = {
    "validation": ("val",),
    "validation + training": ("val", "train"),
    "training": ("train",),
}


def split_scores(fold: Path, batch: int) -> dict[str, np.ndarray]:
    """The fold's tiles by split (``train``, ``val`` from the run's ``splits.csv``; ``test``,
    the held-out photos): scores, truth (``<part>_y``, True: crack) and paths."""
    cache = fold / "split_scores.npz"
    if cache.is_file():
        return dict(np.load(cache))
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(fold / "run" / "model.pt").with_prior(None)
    parts = fold_splits(fold)
    out: dict[str, np.ndarray] = {}
    for part in PARTS:
        rows = parts[part]
        preds = list(predictor.predict_paths([r["path"] for r in rows], batch))
        bad = [p.path for p in preds if p.error]
        if bad:
            raise SystemExit(f"unreadable tiles: {bad[:3]}")
        out[part] = np.array([p.probabilities["crack"] for p in preds])
        out[f"{part}_y"] = np.array([r["label"] == "crack" for r in rows])
        out[f"{part}_paths"] = np.array([r["path"] for r in rows])
    np.savez(cache, **out)
    return out


def main() -> None:
    parser = cv_parser(__doc__, "prior_cv.py --out DIR")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    folds = trained_folds(args.cv)
    clock = start_clock()
    con = Console(width=140)
    per_fold = Table(title="upper 1% of the no_crack scores, and each source's threshold")
    for col in ("fold", "training", "validation", "held out", *SOURCES):
        per_fold.add_column(col, justify="right")
    rows: dict[str, list[dict]] = {name: [] for name in SOURCES}
    for fold in folds:
        d = split_scores(fold, args.batch_size)
        test = held_out_pairs(d["test_paths"], d["test_y"])
        q99 = [f"{np.quantile(d[p][~d[f'{p}_y']], 0.99):.3f}" for p in PARTS]
        thresholds = []
        for name, parts in SOURCES.items():
            y = np.concatenate([d[f"{p}_y"] for p in parts])
            s = np.concatenate([d[p] for p in parts])
            decided = decided_rows(fold.name, y, s, test, d["test"], args.prior)
            thresholds.append(f"{decided[0]['prior_threshold']:.4f}")
            rows[name] += decided
        per_fold.add_row(fold.name, *q99, *thresholds)
    con.print(per_fold)

    title = (
        f"{len(folds)} folds; every no_crack tile + {args.prior:.0%} cracks, {args.draws} "
        "draws; the threshold read from each source's tiles"
    )
    out = args.cv / "summary_sources.json"
    print_decided(con, rows, args, title=title, first="threshold from", out=out, clock=clock)


if __name__ == "__main__":
    main()
