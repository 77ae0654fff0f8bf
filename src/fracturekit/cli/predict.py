"""Classify images, folders (recursive) or CSV manifests (a `path` column) in batches.

Results stream to --out as CSV (columns path,label,p_<class>...,threshold,error), JSON (a list
of records) or Parquet (the CSV's columns), written under a temporary name and renamed when
complete; without --out a table is printed. An image that cannot be read becomes a row with its
error and the run goes on. With --ray the same rows come from a Ray Data pipeline: a local Ray
started for the run, or the cluster at ADDRESS (or RAY_ADDRESS).

A segmentation checkpoint (`fracturekit train --task segment`) decides per image from its
mask (positive when a piece of at least its min_area remains), adds a crack_fraction column (the
mask's share of the image) and, with --masks DIR, writes every mask as a PNG.

Exit codes: 0 every image classified; 1 some images could not be read (see the error column);
2 a usage error (missing checkpoint, bad manifest, --out exists without --overwrite).

With --prior P the decisions are made for images where the positive class makes up P of the
cases (0.03: a pavement survey with 3 % cracks), from the validation scores stored in the
checkpoint; multi-class models take CLASS=P,... and move their probabilities to those priors.
A segmentation checkpoint decides its images at P (on the most probable pixel, never below the
pixel threshold, which does not move) and writes an empty mask for an image decided negative.

Examples:
  fracturekit predict runs/demo/model.pt photos/ more.csv --out results.csv
  fracturekit predict runs/demo/model.pt survey/ --prior 0.03 --out survey.csv
  fracturekit predict runs/demo/model.pt photos/ --out results.parquet --ray
  fracturekit predict runs/seg/model.pt photos/ --masks masks/ --out results.csv
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Any

from fracturekit.cli._options import add_backend, add_batch_size, add_overwrite, passed

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
        "--out",
        metavar="FILE",
        help="write results to FILE.csv, FILE.json or FILE.parquet (needs pyarrow) instead of a "
        "table",
    )
    add_overwrite(parser, "an existing --out file")
    add_backend(
        parser,
        default="auto",
        help="auto (default: PyTorch for a .pt, and for a .onnx file OpenVINO when installed, "
        "else ONNX Runtime), torch, onnx (ONNX Runtime) or openvino (the openvino extra): the "
        "last two run the .onnx file written by `fracturekit export` (given as CKPT, or "
        "beside model.pt), without PyTorch",
    )
    add_batch_size(parser, 32)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="treat truncated images as unreadable instead of loading what they hold",
    )
    add_prior_argument(parser)
    parser.add_argument(
        "--masks",
        metavar="DIR",
        help="segmentation checkpoints: write each image's mask into DIR (0/255 PNG at the "
        "image's size, named by its path relative to the inputs' common folder) and its file "
        "into a 'mask' column",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on Ray Data (pip install 'fracturekit[ray]'; needs --out): a Ray cluster's "
        "ADDRESS, else RAY_ADDRESS, else a local Ray started for the run. Put it after the "
        "paths, or write --ray=ADDRESS",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fracturekit.predict import Predictor, predict_batch
    from fracturekit.progress import progress_bar

    prior = parse_prior_argument(args.prior)
    source = args.checkpoint
    if args.ray is not None:
        if not args.out:
            raise ValueError("--ray writes its rows to a file: give --out FILE.csv|.parquet")
        from fracturekit.ray_predict import predict_ray

        predict_batch = partial(predict_ray, address=args.ray or None, prior=prior)
    elif prior is not None:
        source = Predictor.from_checkpoint(args.checkpoint, args.backend, prior=prior)
    err = Console(stderr=True)
    if isinstance(source, Predictor) and source.prior_support is not None:
        err.print(_prior_line(source), markup=False)
    # The bar starts with the first report, once inputs and model are fine: errors print alone.
    with progress_bar("predicting", eta=True, transient=False, console=err) as progress:
        result = predict_batch(
            source,
            args.paths,
            progress=progress,
            **passed(args, "out", "backend", "batch_size", "overwrite", "strict", "masks"),
        )
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


def _prior_line(predictor: Any) -> str:
    """A binary prior's threshold and how firmly the checkpoint's validation split sets it, in
    the words ``evaluate``'s report and ``train --prior`` use."""
    from fracturekit.report import decision_text

    return decision_text(  # a prior's support exists for binary models alone
        {
            "positive": predictor.classes[predictor.positive_index],
            "threshold": predictor.image_threshold,
            "prior": predictor.prior,
            "prior_support": predictor.prior_support,
        }
    )


def _print_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    table.add_column("path", overflow="fold")
    table.add_column("label")
    for c in result.classes:
        table.add_column(f"p_{c}", justify="right")
    segment = "crack_fraction" in result.columns
    if segment:
        table.add_column("crack_fraction", justify="right")
    table.add_column("error", overflow="fold")
    for pred in result.predictions:
        cells = [
            "" if pred.probabilities.get(c) is None else f"{pred.probabilities[c]:.4f}"
            for c in result.classes
        ]
        if segment:
            cells.append("" if pred.crack_fraction is None else f"{pred.crack_fraction:.4f}")
        table.add_row(pred.path, pred.label or "", *cells, pred.error or "")
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        console.width = 200  # piped output: keep long paths on one line
    console.print(table)
