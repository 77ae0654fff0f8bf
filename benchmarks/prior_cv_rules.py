"""Decisions at 3 % cracks, cross-validated, under other rules for reading the threshold.

``threshold_at_prior`` reads the F1-best threshold at ``--prior`` from a checkpoint's stored
validation scores, re-weighted to that prevalence (raw counts). At 3 % the threshold rests on
the two or three highest of about 160 validation ``no_crack`` tiles, so it moves with each of
them. This script asks whether another rule, fed the same stored scores, decides the held-out
tiles better:

- ``raw counts``: the default rule (gives ``prior_cv.py``'s figure back);
- ``kernel-smoothed``: ``threshold_at_prior(..., smooth=True)``;
- ``bagged, tiles`` / ``bagged, photos``: the median of the raw rule's thresholds over
  ``--boot`` bootstrap copies of the validation split, drawn tile by tile within each class, or
  photo by photo (tiles of one photo are correlated, so the photo is the unit that varies);
- ``pessimistic counts``: true positives at a lower and false positives at an upper one-sided
  84 % beta bound (about one standard error) before the re-weighting, so that a threshold
  resting on few validation negatives is trusted less.

It takes the folds of ``benchmarks/prior_cv.py --out DIR`` (a classifier's or a segmenter's; no
model runs: the held-out scores are the folds' ``scores.csv``, the validation scores those the
checkpoints store) and draws the view as ``prior_cv.py`` does: every ``no_crack`` tile, 3 %
cracks drawn ``--draws`` times.

Run:
    .venv/bin/python benchmarks/prior_cv_rules.py --cv DIR [--cv DIR ...] [--prior 0.03]
        [--draws 200] [--boot 200]
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _common import start_clock
from prior_cv import (
    best_prior_line,
    cv_parser,
    prior_cells,
    prior_columns,
    rows_at,
    score_summary,
    stored_validation,
    validation_paths,
)

# y (True: crack), validation scores, photo of each tile, prior, rng, bootstrap copies -> threshold
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray, float, np.random.Generator, int], float]
BOUND = 0.84  # one-sided beta bound of the pessimistic counts: about one standard error


def _raw(y: np.ndarray, v: np.ndarray, prior: float, smooth: bool = False) -> float:
    from fracturekit.calibration import threshold_at_prior

    return threshold_at_prior(y.astype(int), np.stack([1 - v, v], 1), 1, prior, smooth=smooth)


def _smoothed(y, v, groups, prior, rng, boot) -> float:
    return _raw(y, v, prior, smooth=True)


def _bagged_tiles(y, v, groups, prior, rng, boot) -> float:
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    out = []
    for _ in range(boot):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        out.append(_raw(y[idx], v[idx], prior))
    return float(np.median(out))


def _bagged_photos(y, v, groups, prior, rng, boot) -> float:
    photos = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in photos}
    out = []
    while len(out) < boot:
        idx = np.concatenate([members[g] for g in rng.choice(photos, photos.size)])
        if 0 < y[idx].sum() < idx.size:  # both classes drawn
            out.append(_raw(y[idx], v[idx], prior))
    return float(np.median(out))


def _pessimistic(y, v, groups, prior, rng, boot) -> float:
    from scipy.stats import beta

    from fracturekit.calibration import _best_threshold, _counts_at_each_score

    scores, tp, fp, fn, tn = _counts_at_each_score(y, v)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tpr = beta.ppf(1 - BOUND, tp + 1, n_pos - tp + 1)
    fpr = beta.ppf(BOUND, fp + 1, n_neg - fp + 1)
    return _best_threshold(
        scores, prior * tpr, (1 - prior) * fpr, prior * (1 - tpr), (1 - prior) * (1 - fpr),
        metric="f1", target_recall=None,
    )  # fmt: skip


RULES: dict[str, Rule] = {
    "raw counts (default)": lambda y, v, g, prior, rng, boot: _raw(y, v, prior),
    "kernel-smoothed": _smoothed,
    "bagged, tiles": _bagged_tiles,
    "bagged, photos": _bagged_photos,
    "pessimistic counts": _pessimistic,
}


def fold_validation(fold: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fold checkpoint's stored validation truth (True: crack) and crack scores
    (``prior_cv.stored_validation``), and each validation tile's source photo."""
    run = fold / "run"
    y, v = stored_validation(run)
    paths = validation_paths(run)
    if len(paths) != y.size:
        raise SystemExit(f"{run}: {y.size} stored validation scores, {len(paths)} in splits.csv")
    with (fold / "manifest.csv").open(newline="") as fh:
        group = {r["path"]: r["group"] for r in csv.DictReader(fh)}
    return y, v, np.array([group[p] for p in paths])


def main() -> None:
    parser = cv_parser(__doc__, None)
    parser.add_argument("--cv", type=Path, action="append", required=True,
                        help="prior_cv.py --out DIR (repeat for several sets of folds)")  # fmt: skip
    parser.add_argument("--boot", type=int, default=200, help="bootstrap copies a fold")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    clock = start_clock()
    con = Console(width=150)
    report: dict = {}
    for cv in args.cv:
        if not (cv / "scores.csv").is_file():
            raise SystemExit(f"{cv}: no scores.csv (run prior_cv.py --out {cv} first)")
        with (cv / "scores.csv").open(newline="") as fh:
            held_out = list(csv.DictReader(fh))
        rows: dict[str, list[dict]] = {name: [] for name in RULES}
        thresholds: dict[str, list[float]] = {name: [] for name in RULES}
        for fold in sorted({r["fold"] for r in held_out}):
            y, v, groups = fold_validation(cv / fold)
            test = [r for r in held_out if r["fold"] == fold]
            tiles = [(r["path"], r["label"]) for r in test]
            scores = [float(r["p_crack"]) for r in test]
            for i, (name, rule) in enumerate(RULES.items()):
                t = rule(y, v, groups, args.prior, np.random.default_rng([args.seed, i]), args.boot)
                thresholds[name].append(t)
                rows[name] += rows_at(fold, tiles, scores, t)
        table = Table(title=f"{cv}: {len(thresholds['raw counts (default)'])} folds, every "
                      f"no_crack tile + {args.prior:.0%} cracks, {args.draws} draws")  # fmt: skip
        for col in ("threshold rule", *prior_columns(args.prior), "thresholds of the folds"):
            table.add_column(col, justify="right")
        summary: dict = {}
        for name in RULES:
            sv = summary[name] = score_summary(rows[name], args.prior, args.draws, args.seed)
            sv["thresholds"] = thresholds[name]
            table.add_row(name, *prior_cells(sv), " ".join(f"{t:.3f}" for t in thresholds[name]))
        con.print(table)
        con.print(best_prior_line(summary, args.prior))
        report[str(cv)] = summary
    report["machine"] = clock.line()
    out = args.cv[0] / "rules.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    con.print(f"written {out}")


if __name__ == "__main__":
    main()
