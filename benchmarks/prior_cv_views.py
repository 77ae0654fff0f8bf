"""Decisions at 3 % cracks, cross-validated, for a segmenter with test-time views.

Takes the folds of ``benchmarks/prior_cv.py --out DIR --config default_segment`` (trained
already) and asks what each fold's checkpoint decides when it averages the pixel logits of 1,
4 or 8 flipped and turned views (``--views``; the ``tta`` setting). Training with
``--set tta=N`` compares its epochs on one view and then fits the pixel threshold, ``min_area``
and the stored validation image scores on the best epoch's validation maps averaged over N views
(``SegmentTask.final_outputs``); this script does that last step on each fold's run with the
training code's own functions (``SegmentTask.calibrate``, ``validation_record``), so each row
is what ``prior_cv.py --config default_segment --set tta=N`` gives, without training again.
One view must give every fold's stored threshold and ``min_area`` back (checked).

``--expand N`` adds a row that decides on one view as the checkpoint does, but takes the prior
threshold from N times as many validation scores: each validation tile's image score under each
of the first N flipped and turned views, pooled (at the stored pixel threshold and
``min_area``). At 3 % the threshold sits among the top few validation negatives; the turned
copies of those tiles sample that tail more finely (they are not independent draws).

The prior threshold comes from ``Predictor.with_prior`` on the refitted checkpoint description;
each held-out tile's image score is ``SegmentTask``'s (``image_scores``: the most probable
pixel, below the threshold when no piece reaches ``min_area``), checked against
``Predictor.predict_paths`` on a few tiles per fold. The view and its draws are
``prior_cv.py``'s: every ``no_crack`` tile, 3 % cracks drawn ``--draws`` times.

Run:
    .venv/bin/python benchmarks/prior_cv_views.py --cv DIR [--views 1 4 8] [--prior 0.03]
        [--expand 8]
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from _common import start_clock
from prior_cv import best_prior_line, cv_parser, f1_cell, score_summary, trained_folds
from segment_tta import validation_truth, view_outputs


def fold_rows(
    fold: Path, views: list[int], prior: float, batch: int, expand: int = 0
) -> dict[str, list[dict]]:
    """Refit each view count's calibration on the fold's validation tiles and score its
    held-out tiles; rows as ``prior_cv.py`` writes them, per view count (and, with ``expand``,
    for one view with the validation scores of ``expand`` single views: :func:`_expanded`)."""
    from fracturekit.config import TrainConfig
    from fracturekit.predict import Predictor
    from fracturekit.train._segment_task import SegmentTask, image_scores

    ckpt = fold / "run" / "model.pt"
    predictor = Predictor.from_checkpoint(ckpt)
    if predictor.task != "segment" or predictor.tta != 1:
        raise SystemExit(f"{ckpt}: give the folds of a one-view segmenter (default_segment)")
    cfg = TrainConfig.from_dict(predictor.meta["config"])
    with (fold / "manifest.csv").open(newline="") as fh:
        manifest = {r["path"]: r for r in csv.DictReader(fh)}
    with (fold / "run" / "splits.csv").open(newline="") as fh:
        val = [manifest[r["path"]] for r in csv.DictReader(fh) if r["split"] == "val"]
    test = [r for r in manifest.values() if r["split"] == "test"]
    truth = validation_truth(val, (predictor.img_size, predictor.img_size))
    stored = (predictor.threshold, predictor.min_area, predictor.meta["validation"]["labels"])
    stored_validation = predictor.meta["validation"]
    if stored[2] != [int(t) for t in truth["image"]]:
        raise SystemExit(f"{ckpt}: validation truth differs from the stored labels")
    val_out = view_outputs(predictor, val, views, batch)
    test_out = view_outputs(predictor, test, views, batch)
    rows: dict[str, list[dict]] = {}
    for v in views:
        outputs = dict(val_out[v])
        _, threshold, fitted = SegmentTask().calibrate(
            cfg, outputs, truth, predictor.classes, predictor.positive, lambda _: None
        )
        if v == 1 and (threshold, fitted["min_area"]) != stored[:2]:
            raise SystemExit(
                f"{ckpt}: one view gave threshold {threshold} / min_area {fitted['min_area']}, "
                f"the run stores {stored[0]} / {stored[1]}: no longer calibrating as training does"
            )
        predictor.meta.update(
            tta=v,
            threshold=threshold,
            min_area=fitted["min_area"],
            validation=SegmentTask().validation_record(outputs, truth, 1.0),
        )
        image_threshold = predictor.with_prior(None).image_threshold
        prior_threshold = predictor.with_prior(prior).image_threshold
        scores = image_scores(test_out[v], threshold, fitted["min_area"])
        check = list(predictor.with_prior(None).predict_paths([r["path"] for r in test[:4]], 4))
        for p, s in zip(check, scores[:4], strict=True):
            if abs(p.probabilities["crack"] - s) > 2e-3:
                raise SystemExit(f"{p.path}: predict gives {p.probabilities['crack']}, here {s}")
        rows[str(v)] = _rows(fold, test, scores, image_threshold, prior_threshold)
    if expand:
        predictor.meta.update(
            tta=1, threshold=stored[0], min_area=stored[1], validation=stored_validation
        )
        one = test_out[1] if 1 in views else view_outputs(predictor, test, [1], batch)[1]
        scores = image_scores(one, stored[0], stored[1])
        image_threshold = predictor.with_prior(None).image_threshold
        prior_threshold = _expanded(predictor, val, truth, expand, prior, batch)
        rows[expanded_name(expand)] = _rows(fold, test, scores, image_threshold, prior_threshold)
    return rows


def expanded_name(n: int) -> str:
    return f"1, validation x{n}"


def _rows(fold: Path, test: list[dict], scores, image_threshold: float, prior_threshold: float):
    return [
        {
            "path": r["path"],
            "fold": fold.name,
            "label": r["label"],
            "p_crack": float(s),
            "stored_threshold": image_threshold,
            "prior_threshold": prior_threshold,
        }
        for r, s in zip(test, scores, strict=True)
    ]


def _expanded(predictor, val: list[dict], truth: dict, n: int, prior: float, batch: int) -> float:
    """The one-view checkpoint's prior threshold from its validation image scores under each of
    the first ``n`` single views, pooled (labels repeated); the stored scores must come back for
    view 1 (checked)."""
    from fracturekit.train._segment_task import image_scores

    threshold, min_area = predictor.threshold, predictor.min_area
    single = view_outputs(predictor, val, list(range(1, n + 1)), batch, single=True)
    scores = [image_scores(single[k], threshold, min_area) for k in range(1, n + 1)]
    stored = np.array([p[1] for p in predictor.meta["validation"]["probabilities"]])
    if np.abs(scores[0] - stored).max() > 1e-6:
        raise SystemExit("view 1 does not give the stored validation scores back")
    labels = [int(t) for t in truth["image"]] * n
    pooled = np.concatenate(scores)
    predictor.meta["validation"] = {
        **predictor.meta["validation"],
        "labels": labels,
        "probabilities": [[1.0 - float(v), float(v)] for v in pooled],
    }
    return predictor.with_prior(prior).image_threshold


def main() -> None:
    parser = cv_parser(__doc__, "prior_cv.py --out DIR (segmenter)")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--expand", type=int, default=0, choices=(0, 2, 4, 8),
                        help="also: one view, prior threshold from N views' validation scores")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    views = sorted(set(args.views))
    folds = trained_folds(args.cv)
    clock = start_clock()
    names = [str(v) for v in views] + ([expanded_name(args.expand)] if args.expand else [])
    rows: dict[str, list[dict]] = {v: [] for v in names}
    thresholds: dict[str, list[tuple[float, float]]] = {v: [] for v in names}
    for fold in folds:
        for v, part in fold_rows(fold, views, args.prior, args.batch_size, args.expand).items():
            rows[v] += part
            thresholds[v].append((part[0]["stored_threshold"], part[0]["prior_threshold"]))
    seconds = time.perf_counter() - clock.start

    con = Console(width=150)
    any_rows = rows[names[0]]
    n_neg = sum(r["label"] != "crack" for r in any_rows)
    n_crack = max(1, round(args.prior / (1 - args.prior) * n_neg))
    table = Table(
        title=f"{len(folds)} folds, {n_neg} no_crack + {n_crack} crack tiles ({args.prior:.0%}), "
        f"{args.draws} draws; thresholds refitted on each fold's validation maps"
    )
    columns = ("views", "pooled ROC AUC", "stored: F1", f"--prior {args.prior:g}: F1 (5-95%)",
               "precision", "recall", "best in hindsight", "prior thresholds")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    summary: dict = {}
    for v in names:
        sv = summary[v] = score_summary(rows[v], args.prior, args.draws, args.seed)
        sv["thresholds"] = thresholds[v]
        table.add_row(
            v,
            f"{sv['roc_auc_pooled']:.3f}",
            f"{sv['stored']['f1_mean']:.3f}",
            f1_cell(sv["prior"]),
            f"{sv['prior']['precision_mean']:.3f}",
            f"{sv['prior']['recall_mean']:.3f}",
            f"{sv['best_in_hindsight_f1_mean']:.3f}",
            " ".join(f"{p:.3f}" for _, p in thresholds[v]),
        )
        csv_name = f"scores_views{v}.csv" if v.isdigit() else f"scores_views1_val{args.expand}.csv"
        with (args.cv / csv_name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, list(rows[v][0]))
            writer.writeheader()
            writer.writerows(rows[v])
    con.print(table)
    summary["seconds"] = seconds
    summary["machine"] = clock.line()
    (args.cv / "summary_views.json").write_text(json.dumps(summary, indent=2) + "\n")
    con.print(f"{seconds:.0f} s; written {args.cv / 'summary_views.json'}")
    con.print(best_prior_line({v: summary[v] for v in names}, args.prior, " views"))


if __name__ == "__main__":
    main()
