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

from fracturekit.config import LAYOUTS


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", help="data set folder or CSV manifest")
    parser.add_argument(
        "--out", metavar="DIR", help="write summary.json, samples.png and histograms.png here"
    )
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="auto", help="force a layout (default: detect)"
    )
    parser.add_argument("--val", metavar="PATH", help="a separate validation data set")
    parser.add_argument("--test", metavar="PATH", help="a separate test data set")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="carve a validation split of this share, as training would (default 0: report the "
        "data's own splits only)",
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.0, metavar="F", help="likewise for a test split"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of carved splits and samples")
    parser.add_argument("--image-column", metavar="NAME", help="CSV column of image paths/URLs")
    parser.add_argument("--label-column", metavar="NAME", help="CSV column of labels")
    parser.add_argument(
        "--label-key",
        metavar="KEY",
        help="dotted key path to the class name in a JSON label column, e.g. labels.0",
    )
    parser.add_argument(
        "--group-column",
        metavar="NAME",
        help="CSV column of groups (patient, source photo): carved splits keep groups whole",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="count truncated files as unreadable (default: load them and warn)",
    )
    parser.add_argument("--cache-dir", metavar="DIR", help="download cache for URL manifests")
    parser.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="refuse images over N pixels (default 100000000 or $FRACTUREKIT_MAX_PIXELS)",
    )
    parser.add_argument(
        "--samples-per-class",
        type=int,
        default=8,
        metavar="N",
        help="images per class in samples.png (default 8)",
    )


def run(args: argparse.Namespace) -> int:
    from fracturekit.inspection import inspect_dataset, print_report

    report = inspect_dataset(
        args.data,
        args.out,
        layout=args.layout,
        val=args.val,
        test=args.test,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        image_column=args.image_column,
        label_column=args.label_column,
        label_key=args.label_key,
        group_column=args.group_column,
        strict=args.strict,
        cache_dir=args.cache_dir,
        max_pixels=args.max_pixels,
        samples_per_class=args.samples_per_class,
    )
    print_report(report)
    return report.exit_code
