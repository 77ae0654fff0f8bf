"""Decisions at 3 % cracks, cross-validated, for a classifier and a segmenter together.

Takes two sets of folds of ``benchmarks/prior_cv.py`` made with the same ``--folds`` and
``--seed`` (so the same tiles in every fold's training, validation and test parts, checked): the
default classifier's (``--classifier DIR``) and the default segmenter's (``--segmenter DIR``,
``--config default_segment``). Each tile's score is a mean of the two checkpoints' scores for it
(the classifier's crack probability, the segmenter's image score: its most probable pixel),
arithmetic and geometric; each fold's ``--prior`` threshold is read, as ``threshold_at_prior``
reads it for one checkpoint, from the same mean of the two checkpoints' stored validation
scores. No model runs: the held-out scores are the folds' ``scores.csv``. The view and its draws
are ``prior_cv.py``'s: every ``no_crack`` tile, 3 % cracks drawn ``--draws`` times.

Run:
    .venv/bin/python benchmarks/prior_cv_pair.py --classifier DIR --segmenter DIR
        [--prior 0.03] [--draws 200] [--seed 0]
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from _common import start_clock
from prior_cv import (
    best_prior_line,
    cv_parser,
    decided_rows,
    prior_cells,
    prior_columns,
    score_summary,
)

MEANS = {
    "classifier alone": lambda c, s: c,
    "segmenter alone": lambda c, s: s,
    "arithmetic mean": lambda c, s: (c + s) / 2,
    "geometric mean": lambda c, s: np.sqrt(c * s),
}


def stored_validation(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """A checkpoint's stored validation truth (True: crack) and its crack scores, in the order
    of its ``splits.csv`` validation rows."""
    from fracturekit.calibration import default_positive, validation_scores
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(run / "model.pt")
    labels, proba = validation_scores(predictor.meta, str(run / "model.pt"))
    pos = predictor.classes.index(predictor.positive or default_positive(predictor.classes))
    return np.asarray(labels) == pos, np.asarray(proba)[:, pos]


def validation_paths(run: Path) -> list[str]:
    with (run / "splits.csv").open(newline="") as fh:
        return [r["path"] for r in csv.DictReader(fh) if r["split"] == "val"]


def main() -> None:
    parser = cv_parser(__doc__, None)
    parser.add_argument("--classifier", type=Path, required=True, help="prior_cv.py --out DIR")
    parser.add_argument("--segmenter", type=Path, required=True, help="the same, default_segment")
    parser.add_argument("--out", type=Path, help="summary JSON (default: SEGMENTER/pair.json)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    clock = start_clock()
    scores = {}
    for name, cv in (("classifier", args.classifier), ("segmenter", args.segmenter)):
        if not (cv / "scores.csv").is_file():
            raise SystemExit(f"{cv}: no scores.csv (run prior_cv.py --out {cv} first)")
        with (cv / "scores.csv").open(newline="") as fh:
            scores[name] = {r["path"]: r for r in csv.DictReader(fh)}
    if scores["classifier"].keys() != scores["segmenter"].keys():
        raise SystemExit("the two sets of folds hold different tiles")
    folds = sorted({r["fold"] for r in scores["classifier"].values()})
    rows: dict[str, list[dict]] = {name: [] for name in MEANS}
    for fold in folds:
        runs = [cv / fold / "run" for cv in (args.classifier, args.segmenter)]
        if validation_paths(runs[0]) != validation_paths(runs[1]):
            raise SystemExit(f"{fold}: the two runs validate on different tiles")
        (y_c, v_c), (y_s, v_s) = (stored_validation(run) for run in runs)
        if not np.array_equal(y_c, y_s):
            raise SystemExit(f"{fold}: the stored validation labels differ")
        test = [p for p, r in scores["classifier"].items() if r["fold"] == fold]
        if any(scores["segmenter"][p]["fold"] != fold for p in test):
            raise SystemExit(f"{fold}: the two runs hold out different tiles")
        t_c = np.array([float(scores["classifier"][p]["p_crack"]) for p in test])
        t_s = np.array([float(scores["segmenter"][p]["p_crack"]) for p in test])
        tiles = [(p, scores["classifier"][p]["label"]) for p in test]
        for name, mean in MEANS.items():
            v, t = mean(v_c, v_s), mean(t_c, t_s)
            rows[name] += decided_rows(fold, y_c, v, tiles, t, args.prior)

    con = Console(width=140)
    table = Table(
        title=f"{len(folds)} folds; every no_crack tile + {args.prior:.0%} cracks, "
        f"{args.draws} draws; thresholds from the stored validation scores"
    )
    for col in ("image score", *prior_columns(args.prior), "prior thresholds"):
        table.add_column(col, justify="right")
    summary: dict = {}
    for name in MEANS:
        thresholds = list(dict.fromkeys(r["prior_threshold"] for r in rows[name]))
        sv = summary[name] = score_summary(rows[name], args.prior, args.draws, args.seed)
        sv["thresholds"] = thresholds
        table.add_row(name, *prior_cells(sv), " ".join(f"{t:.3f}" for t in thresholds))
    con.print(table)
    summary["machine"] = clock.line()
    out = args.out or args.segmenter / "pair.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    con.print(f"written {out}")
    con.print(best_prior_line({n: summary[n] for n in MEANS}, args.prior))


if __name__ == "__main__":
    main()
