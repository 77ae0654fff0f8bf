"""Decisions at 3 % cracks, cross-validated, for several checkpoints together.

Takes sets of folds of ``benchmarks/prior_cv.py`` made with the same ``--folds`` and ``--seed``
(so the same tiles in every fold's training, validation and test parts, checked): the default
classifier's (``--classifier DIR``) and the default segmenter's (``--segmenter DIR``,
``--config default_segment``; repeat it for segmenters trained with other settings: the
training seed also draws the validation split, so folds of another ``--set seed=N`` are
refused unless trained with ``--set split_seed=0``, the first set's split). Each tile's score
is a mean of the checkpoints' scores for it (the classifier's crack probability, a segmenter's
image score: its most probable pixel), arithmetic and geometric, over all of them and, with a
classifier and two or more segmenters, over the segmenters alone; each fold's ``--prior``
threshold is read, as ``threshold_at_prior`` reads it for one checkpoint, from the same mean of
the checkpoints' stored validation scores. No model runs: the held-out scores are the folds'
``scores.csv``. The view and its draws are ``prior_cv.py``'s: every ``no_crack`` tile, 3 %
cracks drawn ``--draws`` times.

Run:
    .venv/bin/python benchmarks/prior_cv_pair.py [--classifier DIR] --segmenter DIR
        [--segmenter DIR ...] [--prior 0.03] [--draws 200] [--seed 0]
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
    stored_validation,
    validation_paths,
)


def combinations(models: list[str], with_classifier: bool) -> dict[str, tuple[str, list[str]]]:
    """Row name -> (mean kind, the models it averages): each model alone, the arithmetic and
    geometric means of all, and with a classifier and two or more segmenters the means of the
    segmenters alone."""
    rows: dict[str, tuple[str, list[str]]] = {f"{m} alone": ("arithmetic", [m]) for m in models}
    groups = {"all": models}
    if with_classifier and len(models) > 2:
        groups["the segmenters"] = models[1:]
    for kind in ("arithmetic", "geometric"):
        for what, members in groups.items():
            rows[f"{kind} mean of {what}" if len(models) > 2 else f"{kind} mean of both"] = (
                kind,
                members,
            )
    return rows


def mean_of(kind: str, columns: list[np.ndarray]) -> np.ndarray:
    """Arithmetic or geometric mean of equal-length score columns."""
    stack = np.stack(columns)
    return stack.mean(0) if kind == "arithmetic" else np.exp(np.log(stack).mean(0))


def main() -> None:
    parser = cv_parser(__doc__, None)
    parser.add_argument("--classifier", type=Path, help="prior_cv.py --out DIR")
    parser.add_argument("--segmenter", type=Path, action="append", required=True,
                        help="the same, default_segment (repeat: other settings, same split)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="summary JSON (default: SEGMENTER/pair.json)")
    args = parser.parse_args()
    if args.classifier is None and len(args.segmenter) < 2:
        parser.error("give a classifier and a segmenter, or two segmenters")

    from rich.console import Console
    from rich.table import Table

    clock = start_clock()
    cvs = {"classifier": args.classifier} if args.classifier else {}
    for i, cv in enumerate(args.segmenter):
        cvs["segmenter" if len(args.segmenter) == 1 else f"segmenter {i + 1}"] = cv
    models = list(cvs)
    scores = {}
    for name, cv in cvs.items():
        if not (cv / "scores.csv").is_file():
            raise SystemExit(f"{cv}: no scores.csv (run prior_cv.py --out {cv} first)")
        with (cv / "scores.csv").open(newline="") as fh:
            scores[name] = {r["path"]: r for r in csv.DictReader(fh)}
    first = scores[models[0]]
    if any(scores[m].keys() != first.keys() for m in models):
        raise SystemExit("the sets of folds hold different tiles")
    folds = sorted({r["fold"] for r in first.values()})
    combos = combinations(models, args.classifier is not None)
    rows: dict[str, list[dict]] = {name: [] for name in combos}
    for fold in folds:
        runs = [cv / fold / "run" for cv in cvs.values()]
        if any(validation_paths(run) != validation_paths(runs[0]) for run in runs):
            raise SystemExit(f"{fold}: the runs validate on different tiles")
        stored = [stored_validation(run) for run in runs]
        y = stored[0][0]
        if any(not np.array_equal(y, yy) for yy, _ in stored):
            raise SystemExit(f"{fold}: the stored validation labels differ")
        val = {m: v for m, (_, v) in zip(models, stored, strict=True)}
        test = [p for p, r in first.items() if r["fold"] == fold]
        if any(scores[m][p]["fold"] != fold for m in models for p in test):
            raise SystemExit(f"{fold}: the runs hold out different tiles")
        held = {m: np.array([float(scores[m][p]["p_crack"]) for p in test]) for m in models}
        tiles = [(p, first[p]["label"]) for p in test]
        for name, (kind, members) in combos.items():
            v = mean_of(kind, [val[m] for m in members])
            t = mean_of(kind, [held[m] for m in members])
            rows[name] += decided_rows(fold, y, v, tiles, t, args.prior)

    con = Console(width=140)
    table = Table(
        title=f"{len(folds)} folds; every no_crack tile + {args.prior:.0%} cracks, "
        f"{args.draws} draws; thresholds from the stored validation scores"
    )
    for col in ("image score", *prior_columns(args.prior), "prior thresholds"):
        table.add_column(col, justify="right")
    summary: dict = {"folds": {m: str(cv) for m, cv in cvs.items()}}
    for name in combos:
        thresholds = list(dict.fromkeys(r["prior_threshold"] for r in rows[name]))
        sv = summary[name] = score_summary(rows[name], args.prior, args.draws, args.seed)
        sv["thresholds"] = thresholds
        table.add_row(name, *prior_cells(sv), " ".join(f"{t:.3f}" for t in thresholds))
    con.print(table)
    summary["machine"] = clock.line()
    out = args.out or args.segmenter[0] / "pair.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    con.print(f"written {out}")
    con.print(best_prior_line({n: summary[n] for n in combos}, args.prior))


if __name__ == "__main__":
    main()
