"""Crack length and width profiles from binary crack masks.

INPUT is a binary mask (0 = background, 1 or 255 = crack), or an image together with its mask
(--mask; the image is the background of the plot). Every 8-connected crack is skeletonised
(short spurs pruned) and measured: length, and width along the skeleton by --method:
  edt         twice the distance from the skeleton to the crack's sub-pixel edge (default)
  orthogonal  run length of the mask across the local crack direction
A crack whose mask holds the pixel centres within w/2 of its centre line is w px wide (a
1-px line is 1 px wide). With --px-per-mm, widths are also given in mm with the AASHTO
severity of the crack's mean width: narrow < 1.6 mm, moderate 1.6-3.2 mm, wide > 3.2 mm.

An image alone needs --model CKPT. A segmentation checkpoint (`fracturekit train --task
segment`) draws the mask itself: pixels at its stored threshold, pieces under its min_area
dropped, at the image's size (its probability map stands in for the heat map below). With a
classifier, the crack mask is derived from the image, looking only
where the checkpoint's heat map points (cam >= 0.3 of its maximum, grown by 20 px): dark thin
lines found by the Sato ridge filter, widened to where the image is at least half as dark as
at their centre. It assumes cracks darker than their surroundings; dark look-alikes in that
region (joints, shadows, stains) count as cracks, and widths under ~1 px are unreliable: a
drawn mask is more reliable. With --model, every image also gets attention_<image>.png and a
row per crack in attention_width.csv: the heat map along the skeleton against the width
(Pearson and Spearman correlation).

Outputs in --out: widths.csv (one row per crack), profile_<image>.csv (width at every skeleton
point) and profile_<image>.png (skeleton coloured by width beside the width profile).

Examples:
  fracturekit width data/synth/masks/concrete_000001.png --out widths/
  fracturekit width photo.jpg --mask photo_mask.png --px-per-mm 4.2 --out widths/
  fracturekit width images/*.jpg --mask masks/ --method orthogonal --out widths/
  fracturekit width wall.jpg --model runs/concrete/model.pt --out widths/
"""

from __future__ import annotations

import argparse

from fracturekit.cli import CLIError
from fracturekit.cli._options import passed

METHOD_NAMES = ("edt", "orthogonal")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="binary mask(s), or image(s) with --mask"
    )
    parser.add_argument(
        "--mask",
        action="append",
        metavar="M",
        help="the crack mask of INPUT: once per INPUT (same order), or one folder holding "
        "<image stem>.png for every INPUT",
    )
    parser.add_argument(
        "--model",
        metavar="CKPT",
        help="a checkpoint: an image given without --mask gets a crack mask derived from it "
        "(dark-line filtering inside the checkpoint's heat-map region; see "
        "fracturekit.explain.derive_crack_mask for how and its limits), and every image gets "
        "attention_<image>.png and attention_width.csv (heat map vs width along the cracks)",
    )
    parser.add_argument(
        "--px-per-mm", type=float, metavar="X", help="scale; adds mm columns and severity"
    )
    parser.add_argument("--method", choices=METHOD_NAMES, default="edt", help="width method")
    parser.add_argument(
        "--min-area", type=int, default=10, help="ignore cracks smaller than this (px)"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def run(args: argparse.Namespace) -> int:
    from fracturekit.explain import measure_files

    if args.px_per_mm is not None and not args.px_per_mm > 0:
        raise CLIError(f"--px-per-mm must be positive, got {args.px_per_mm}")
    predictor = None
    if args.model:
        from fracturekit.predict import Predictor

        predictor = Predictor.from_checkpoint(args.model)
    written = measure_files(
        args.inputs,
        args.out,
        masks=args.mask,
        predictor=predictor,
        plot=not args.no_plot,
        **passed(args, "method", "px_per_mm", "min_area"),
    )
    report = written.report
    for name, cracks in report.measurements.items():
        if not cracks:
            print(f"{name}: no crack")
            continue
        widest = max(c.max_width_px for c in cracks)
        length = sum(c.length_px for c in cracks)
        print(
            f"{name}: {len(cracks)} crack(s), total length {length:.1f} px, "
            f"max width {widest:.2f} px"
        )
    print(f"wrote {report.widths_csv} and {len(report.profiles)} profile(s) to {args.out}")
    if predictor is not None:
        for name, r in written.attention.items():
            if r["pearson"] is not None:
                print(
                    f"{name}: heat map vs width along the cracks: Pearson {r['pearson']:.3f}, "
                    f"Spearman {r['spearman']:.3f} ({r['n']} points)"
                )
        print(f"wrote attention_width.csv and attention_<image>.png to {args.out}")
    return 0
