"""Scan a large image (a wall or road photo, a borehole image log, a whole X-ray) tile by tile.

A classification checkpoint: overlapping tiles of --tile px (default: the model's input size)
every --stride px (default: half a tile) are classified in batches; their crack probabilities
are averaged into a map with one cell per stride. Writes into --out: overlay.png (the map and
the crack regions over a thumbnail), probability.png and probability.npy (the map), regions.json
(the regions at the checkpoint's threshold as polygons in image pixels, with area and maximum
probability) and tiles.csv (every tile's probability).

A segmentation checkpoint (trained with --task segment): windows of --tile px (default: the
model's input size, so the image is seen at its own resolution) every --stride px (default:
half a window) are segmented and their pixel probabilities blended with a tapered weight (no
seams), thresholded at the checkpoint's threshold, and pieces under its min_area dropped.
Writes into --out: mask.png (8-bit, 0/255, exactly the image's size), overlay.png (the mask in
red over a thumbnail), probability.png and probability.npy (the pixel probability reduced to
the thumbnail, at most 2048 px, by block maxima), regions.json (totals and the 1000 largest
pieces as polygons in image pixels, with box, area and probabilities) and widths.csv (length
and widths of each listed piece; in mm too with --px-per-mm). Pieces too large to crop whole
are measured on a reduced mask (their "scale" column says by how much).

Tiled or striped TIFF, BMP and PGM/PPM files are streamed (a 20,000 x 20,000 image scans with
a classifier in well under 2 GiB; a segmenter holds a band of about a window's rows); JPEG,
PNG and other formats are decoded whole, up to 250 megapixels unless --max-pixels says
otherwise (convert larger ones to a tiled TIFF).

Examples:
  fracturekit scan runs/pavement/model.pt road.tif --out scans/road
  fracturekit scan runs/crack_seg/model.pt wall.tif --out scans/wall --px-per-mm 3.2
"""

from __future__ import annotations

import argparse
from typing import Any

from fracturekit.cli._options import add_backend, add_batch_size, add_overwrite


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="model.pt (or model.onnx)")
    parser.add_argument("image", metavar="IMAGE", help="the image to scan")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--tile", type=int, metavar="PX", help="tile size in image pixels (default: model input)"
    )
    parser.add_argument(
        "--stride", type=int, metavar="PX", help="step between tiles (default: tile / 2)"
    )
    add_batch_size(parser, 16, "tiles")
    add_backend(parser)
    parser.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="largest image accepted (default: 4e9 for streamed formats, 2.5e8 for others)",
    )
    parser.add_argument(
        "--px-per-mm",
        type=float,
        metavar="X",
        help="segmentation checkpoints: image scale; adds mm columns to widths.csv",
    )
    add_overwrite(parser)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fracturekit.predict import Predictor
    from fracturekit.progress import progress_bar
    from fracturekit.scan import scan_image

    predictor = Predictor.from_checkpoint(args.checkpoint, backend=args.backend)
    with progress_bar("scanning") as bar:
        result = scan_image(
            predictor,
            args.image,
            tile=args.tile,
            stride=args.stride,
            batch_size=args.batch_size,
            out=args.out,
            max_pixels=args.max_pixels,
            overwrite=args.overwrite,
            progress=bar,
            px_per_mm=args.px_per_mm,
        )
    console = Console()
    console.print(_summary_line(result), markup=False)
    for name, path in result.files.items():
        console.print(f"  {name}: {path}", markup=False)
    return 0


def _summary_line(result: Any) -> str:
    head = (
        f"{result.path}: {result.width}x{result.height} px, {result.n_tiles} tiles of "
        f"{result.tile} px (stride {result.stride}), "
    )
    if getattr(result, "task", "classify") == "segment":
        widths = result.widths
        mean = widths["mean_width_px"]
        return head + (
            f"{result.crack_pixels} {result.positive} px ({result.crack_fraction:.3%}) at the "
            f"threshold {result.threshold:.3f} in {result.pieces} piece(s); "
            f"{widths['cracks']} measured: length {widths['length_px']:.0f} px, mean width "
            f"{'-' if mean is None else f'{mean:.2f}'} px; {result.seconds:.1f} s"
        )
    return head + (
        f"{result.positive_tiles} at or above the threshold {result.threshold:.3f}; "
        f"{len(result.regions)} {result.positive} region(s); {result.seconds:.1f} s"
    )
