"""Generate a synthetic crack data set with exact masks and known widths.

Writes a class-folder tree: OUT/crack/, OUT/no_crack/ (RGB PNGs), OUT/masks/ (binary 0/255 PNGs
of the crack images), OUT/profiles/<stem>.csv (the true width along every crack's centre line),
OUT/cracks.csv (one row per crack: true length and width statistics), OUT/images.csv and
OUT/synth.json (the parameters). The same seed gives byte-identical files.

Surfaces (--kind): concrete, asphalt, rock, masonry, xray (bone X-rays), or mixed (a surface
drawn per image). Look-alike distractors (wires, cables, scratches, joints, paint, shadows,
stains; implants, casts and skin folds on X-rays) appear in both classes.

Example:
  fracturekit synth data/synth --n 1000 --size 224 --seed 0 --kind mixed
"""

from __future__ import annotations

import argparse
import time

from fracturekit.cli._options import add_overwrite
from fracturekit.contracts import SYNTH_KINDS


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder (new or empty)")
    parser.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    parser.add_argument("--size", type=int, default=224, help="image side in px (default 224)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--kind",
        choices=SYNTH_KINDS,
        default="concrete",
        help="surface to render (default concrete)",
    )
    parser.add_argument(
        "--crack-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="share of images with cracks, 0-1 (default 0.5)",
    )
    add_overwrite(parser, "a previous synth output in OUT (only files synth wrote are removed)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes to render with (default: up to 2); the output does not depend on it",
    )


def run(args: argparse.Namespace) -> int:
    from fracturekit.synthetic import generate_dataset

    start = time.perf_counter()
    out = generate_dataset(
        args.out,
        args.n,
        args.size,
        args.seed,
        kind=args.kind,
        crack_fraction=args.crack_fraction,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    n_crack = int(round(args.n * args.crack_fraction))
    print(
        f"wrote {args.n} {args.kind} images ({n_crack} crack, {args.n - n_crack} no_crack) of "
        f"{args.size} px to {out} in {time.perf_counter() - start:.1f} s"
    )
    return 0
