"""Class-activation heat maps: where the network sees the crack or fracture.

A segmentation checkpoint (`--task segment`) shows its pixel probability map instead: for every
image <stem>_prob.png (the image beside the map's overlay and the mask at the stored threshold)
and <stem>_prob.npy (float32 probabilities at the image's size).

For a classifier, writes into --out for every image: <stem>_cam.png (the image beside its heat-map overlay, a
colour bar, and the predicted class and probability in the title), <stem>_overlay.png (the
overlay at full size) and <stem>_cam.npy (the float32 heat map in [0, 1] at the image's size).
--feature-grids (or --layers) also saves what chosen intermediate layers respond to, as grids of
their most structured feature maps (<stem>_layer_<name>.png); `--feature-grids help` lists the
names. They do not change the heat map, whose layer is --cam-layer.

Folders are searched recursively; hidden folders and `masks/` folders (a data set's crack masks)
are skipped, and a CSV manifest gives its `path` column, as for `fracturekit predict`.

The heat map explains the positive class of a binary model (the evidence for a crack, whatever
the decision) and the predicted class of a multi-class model, unless --target names a class. By
default it is HiResCAM at two fused layers of stride 16 and 32 (14x14 and 7x7 at 224 px), which
points at thin cracks far better than the classic Grad-CAM of the last stage (--method gradcam
--cam-layer cam): see benchmarks/localisation.py.

Exit codes: 0 every image explained; 1 some images could not be read; 2 a usage error.

Examples:
  fracturekit explain runs/concrete/model.pt photos/ --out cams
  fracturekit explain model.pt xray.dcm --out cams --method layercam --feature-grids block2,block4
"""

from __future__ import annotations

import argparse

from fracturekit.cli._options import add_batch_size, add_overwrite
from fracturekit.explain import CAM_METHODS, EXPLAIN_LAYER, EXPLAIN_METHOD


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (model.pt)")
    parser.add_argument(
        "images", metavar="IMAGES", nargs="+", help="image files or folders (searched recursively)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--method",
        choices=list(CAM_METHODS),
        default=EXPLAIN_METHOD,
        help=f"CAM method (default {EXPLAIN_METHOD}: it localised cracks best in our benchmark)",
    )
    parser.add_argument(
        "--target",
        metavar="CLASS",
        help="class to explain, by name or index (default: the positive class of a binary "
        "model, else the predicted class)",
    )
    parser.add_argument(
        "--feature-grids",
        "--layers",
        dest="feature_grids",
        metavar="NAME,...",
        help="also save feature-map grids of these layers (block0, block1, ..., cam, or dotted "
        "module names; 'help' lists them); the heat map's layer is --cam-layer",
    )
    parser.add_argument(
        "--cam-layer",
        metavar="NAME",
        default=EXPLAIN_LAYER,
        help=f"layer(s) the heat map is computed at, comma-separated (default {EXPLAIN_LAYER}: "
        "the last stride-16 block and the next one, fused; cam: the last stage alone; "
        "blockN; or dotted module names)",
    )
    add_batch_size(parser, 8)
    add_overwrite(parser)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fracturekit.explain import explain_images, layer_choices
    from fracturekit.predict import Predictor, expand_inputs
    from fracturekit.progress import progress_bar

    predictor = Predictor.from_checkpoint(args.checkpoint)
    if predictor.task == "segment":
        return _explain_segmenter(predictor, args)
    grids = [n.strip() for n in (args.feature_grids or "").split(",") if n.strip()]
    if grids == ["help"]:
        names = ", ".join(layer_choices(predictor.model))
        print(f"layers of {predictor.meta.get('backbone')}: {names} (or dotted module names)")
        return 0
    err = Console(stderr=True)
    with progress_bar("explaining", console=err) as bar:
        results = explain_images(
            predictor,
            expand_inputs(args.images),  # missing or bad files are reported per image
            args.out,
            method=args.method,
            target=args.target,
            feature_grids=grids,
            cam_layer=[n.strip() for n in args.cam_layer.split(",") if n.strip()] or None,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            progress=bar,
        )
    table = Table()
    for name in ("image", "predicted", "p", "heat map for", "figure"):
        table.add_column(name, overflow="fold")
    failed = 0
    for r in results:
        if r.error is not None:
            failed += 1
            table.add_row(r.path, "[red]error[/red]", "", "", r.error)
        else:
            table.add_row(r.path, r.label, f"{r.confidence:.3f}", r.target, str(r.figure))
    Console().print(table)
    if failed:
        err.print(f"[yellow]{failed} of {len(results)} image(s) could not be read[/yellow]")
        return 1
    return 0


def _explain_segmenter(predictor, args: argparse.Namespace) -> int:
    from fracturekit.evaluate import write_probability_maps
    from fracturekit.predict import expand_inputs

    written, failed = write_probability_maps(
        predictor, expand_inputs(args.images), args.out, overwrite=args.overwrite
    )
    for path in written:
        print(f"wrote {path}")
    for path, error in failed:
        print(f"{path}: {error}")
    return 1 if failed else 0
