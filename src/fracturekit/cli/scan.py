"""Scan a large image (a wall or road photo, a borehole image log, a whole X-ray) tile by tile.

Overlapping tiles of --tile px (default: the model's input size) every --stride px (default:
half a tile) are classified in batches; their crack probabilities are averaged into a map with
one cell per stride. Writes into --out: overlay.png (the map and the crack regions over a
thumbnail), probability.png and probability.npy (the map), regions.json (the regions at the
checkpoint's threshold as polygons in image pixels, with area and maximum probability) and
tiles.csv (every tile's probability).

Tiled or striped TIFF, BMP and PGM/PPM files are streamed (a 20,000 x 20,000 image scans in
well under 2 GiB); JPEG, PNG and other formats are decoded whole, up to 250 megapixels unless
--max-pixels says otherwise (convert larger ones to a tiled TIFF).

Example:
  fracturekit scan runs/pavement/model.pt road.tif --out scans/road
"""

from __future__ import annotations

import argparse

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
        )
    console = Console()
    console.print(
        f"{result.path}: {result.width}x{result.height} px, {result.n_tiles} tiles of "
        f"{result.tile} px (stride {result.stride}), {result.positive_tiles} at or above the "
        f"threshold {result.threshold:.3f}; {len(result.regions)} {result.positive} region(s); "
        f"{result.seconds:.1f} s",
        markup=False,
    )
    for name, path in result.files.items():
        console.print(f"  {name}: {path}", markup=False)
    return 0
