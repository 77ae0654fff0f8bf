"""Summarise a data set before training on it: counts per class and split, image sizes and
modes, unreadable and truncated files, exact duplicates and duplicates shared across splits.

DATA is a class-folder tree (ROOT/<class>/*), a split tree (ROOT/train|val|test/<class>/*), a
CSV manifest (path,label[,group][,split]) or a labelling-tool CSV export with image URLs.
Every image and mask is decoded once. With --out DIR it also writes DIR/summary.json,
DIR/samples.png (sample images per class) and DIR/histograms.png (pixel intensities per class).

Exit codes:
  0  no errors (warnings such as truncated files or duplicates within a split may be printed)
  1  errors found: unreadable files (truncated ones too with --strict), or leakage: an
     identical image, or a group, in more than one split
  2  the data set could not be read at all (no recognisable layout, bad manifest)

Examples:
  fracturekit inspect ../shared/data/fracatlas --out runs/inspect-fracatlas
  fracturekit inspect data/crack500_patches/patches.csv --image-column patch \\
      --group-column source_image --val-fraction 0.2
"""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    from fracturekit.cli._load_options import add_load_flags
    from fracturekit.inspection import INSPECT_DEFAULTS

    parser.add_argument("data", metavar="DATA", help="data set folder or CSV manifest")
    parser.add_argument(
        "--out", metavar="DIR", help="write summary.json, samples.png and histograms.png here"
    )
    parser.add_argument(
        "--samples-per-class",
        type=int,
        default=8,
        metavar="N",
        help="images per class in samples.png (default 8)",
    )
    add_load_flags(parser, INSPECT_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from fracturekit.cli._load_options import load_options
    from fracturekit.inspection import INSPECT_DEFAULTS, inspect_dataset, print_report

    report = inspect_dataset(
        args.data,
        args.out,
        load_options(args, INSPECT_DEFAULTS),
        samples_per_class=args.samples_per_class,
    )
    print_report(report)
    return report.exit_code
