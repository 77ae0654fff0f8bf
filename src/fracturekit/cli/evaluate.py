"""`fracturekit evaluate CKPT DATA --out DIR`: measure a checkpoint on labelled images.

Runs the checkpoint through the same inference path as `fracturekit predict` (its stored
preprocessing, temperature and threshold), then writes DIR/metrics.json (with bootstrap 95%
intervals), classification_report.txt, predictions.csv, confusion_matrix.png, roc.png, pr.png,
reliability.png, mistakes.png and the self-contained DIR/report.html.

Examples:
  fracturekit evaluate runs/concrete/model.pt data/concrete_test --out runs/concrete/eval
  fracturekit evaluate model.pt survey.csv --out eval --prior 0.03

--prior P decides for images where the positive class makes up P of the cases: the threshold
is the one the checkpoint's rule picks on its stored validation scores re-weighted to P, and the
report gives precision and F1 re-weighted to P as well (useful on a balanced test set).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fracturekit.cli._options import add_batch_size, passed
from fracturekit.cli.predict import add_prior_argument, parse_prior_argument
from fracturekit.config import LAYOUTS


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (model.pt)")
    parser.add_argument("data", metavar="DATA", help="labelled images: folder(s) or CSV manifest")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--positive",
        metavar="CLASS",
        help="binary tasks: the positive class (default: the "
        "checkpoint's, else the class not named like no_/not_/normal/negative)",
    )
    add_prior_argument(parser)
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="binary tasks: decision threshold (default: the checkpoint's, or the one for "
        "--prior); with --prior, the prior then only re-weights precision and F1",
    )
    add_batch_size(parser, 32)
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help="data layout")
    parser.add_argument(
        "--split",
        choices=("auto", "test", "val", "train", "all"),
        default="auto",
        help="which images: auto (the test split when DATA defines one, else all), test, val, "
        "train or all",
    )
    parser.add_argument(
        "--n-boot",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the 95%% intervals (0: none; default 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--mistakes",
        type=int,
        default=16,
        metavar="N",
        help="images in the most-confident-mistakes gallery (default 16)",
    )


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}"


def _print_summary(metrics: dict[str, Any], report: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{metrics['n']} images, split {metrics.get('source', {}).get('split', '?')}"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    ci95 = metrics["ci95"]
    for key in (
        "f1",
        "roc_auc",
        "average_precision",
        "accuracy",
        "balanced_accuracy",
        "precision",
        "recall",
        "ece",
    ):
        ci = ci95.get(key)
        table.add_row(key, _fmt(metrics[key]), f"{ci[0]:.4f}–{ci[1]:.4f}" if ci else "")
    at_prior = metrics.get("at_prior")
    if at_prior:
        table.add_row(f"precision at prior {at_prior['prior']:g}", _fmt(at_prior["precision"]), "")
        table.add_row(f"f1 at prior {at_prior['prior']:g}", _fmt(at_prior["f1"]), "")
    from fracturekit.report import decision_text

    console = Console()
    decision = decision_text(metrics)
    if decision:
        console.print(decision, markup=False)
    console.print(table)
    for note in metrics["notes"]:
        console.print(f"note: {note}", style="yellow", markup=False)
    print(f"report: {report}")  # plain print: a long path must not be wrapped


def run(args: argparse.Namespace) -> int:
    from fracturekit.evaluate import evaluate_checkpoint
    from fracturekit.report import write_report

    metrics = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.out,
        prior=parse_prior_argument(args.prior),
        **passed(args, "batch_size", "positive", "threshold", "split", "layout"),
        **passed(args, "n_boot", "seed", "mistakes"),
    )
    # The report gathers what the evaluation just wrote (and the training run's curves).
    report = write_report(args.out)
    _print_summary(metrics, report)
    return 0
