"""Classify images, folders (recursive) or CSV manifests (a `path` column) in batches.

Results stream to --out as CSV (columns path,label,p_<class>...,threshold,error) or JSON (a list
of records), written under a temporary name and renamed when complete; without --out a table is
printed. An image that cannot be read becomes a row with its error and the run goes on.

Exit codes: 0 every image classified; 1 some images could not be read (see the error column);
2 a usage error (missing checkpoint, bad manifest, --out exists without --overwrite).

With --prior P the decisions are made for images where the positive class makes up P of the
cases (0.03: a pavement survey with 3 % cracks), from the validation scores stored in the
checkpoint; multi-class models take CLASS=P,... and move their probabilities to those priors.

Example:
  fracturekit predict runs/demo/model.pt photos/ more.csv --out results.csv
  fracturekit predict runs/demo/model.pt survey/ --prior 0.03 --out survey.csv
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

PRIOR_HELP = (
    "decide for this prevalence: P, the positive class's share of the images (binary, e.g. "
    "0.03), or CLASS=P,... (multi-class; classes left out share the rest). The threshold rule "
    "is applied to the checkpoint's validation scores re-weighted to it (default: the "
    "checkpoint's train --prior, else its stored threshold)"
)


def add_prior_argument(parser: argparse.ArgumentParser) -> None:
    """``--prior P | CLASS=P,...`` (shared by predict, evaluate and serve)."""
    parser.add_argument("--prior", metavar="P", help=PRIOR_HELP)


def parse_prior_argument(text: str | None) -> Any:
    """The value of ``--prior`` as ``Predictor.with_prior`` takes it (None when not given)."""
    from fracturekit.calibration import parse_prior

    return None if text is None else parse_prior(text)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="model.pt (or model.onnx)")
    parser.add_argument(
        "paths",
        metavar="PATHS",
        nargs="+",
        help="image files, folders (searched recursively) or CSV manifests with a 'path' column",
    )
    parser.add_argument(
        "--out", metavar="FILE", help="write results to FILE.csv or FILE.json instead of a table"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="torch (default) or onnx: the .onnx file written by `fracturekit export` (given "
        "as CKPT, or beside model.pt)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="treat truncated images as unreadable instead of loading what they hold",
    )
    add_prior_argument(parser)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from fracturekit.predict import Predictor, predict_batch

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be at least 1")
    prior = parse_prior_argument(args.prior)
    source = args.checkpoint
    if prior is not None:
        source = Predictor.from_checkpoint(args.checkpoint, args.backend, prior=prior)
    err = Console(stderr=True)
    bar = Progress(
        TextColumn("predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task = bar.add_task("predict", total=None)

    def progress(done: int, total: int) -> None:
        if done == 0:
            bar.start()  # only once inputs and model are fine: errors print without a bar
        bar.update(task, completed=done, total=total)

    try:
        result = predict_batch(
            source,
            args.paths,
            out=args.out,
            backend=args.backend,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            strict=args.strict,
            progress=progress,
        )
    finally:
        bar.stop()
    if result.out is None:
        _print_table(result)
    else:
        err.print(f"wrote {result.n} row(s) to {result.out}")
    if result.failed:
        err.print(
            f"[yellow]{result.failed} of {result.n} image(s) could not be read; "
            "see the error column[/yellow]"
        )
        return 1
    return 0


def _print_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    table.add_column("path", overflow="fold")
    table.add_column("label")
    for c in result.classes:
        table.add_column(f"p_{c}", justify="right")
    table.add_column("error", overflow="fold")
    for pred in result.predictions:
        probs = [
            "" if pred.probabilities.get(c) is None else f"{pred.probabilities[c]:.4f}"
            for c in result.classes
        ]
        table.add_row(pred.path, pred.label or "", *probs, pred.error or "")
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        console.width = 200  # piped output: keep long paths on one line
    console.print(table)
