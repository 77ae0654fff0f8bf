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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fracturekit.cli import CLIError

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


def _read_mask_values(path: Path) -> np.ndarray:
    """A mask file's raw pixel values (the binary check happens in the library)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("1", "L", "P", "I", "I;16", "F"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: cannot read the mask ({exc})") from None


def _pairs(args: argparse.Namespace) -> list[tuple[Path, Path | None]]:
    """(input, mask or None) for every INPUT."""
    inputs = [Path(p) for p in args.inputs]
    masks = [Path(m) for m in args.mask or []]
    if not masks:
        return [(p, None) for p in inputs]
    if len(masks) == 1 and masks[0].is_dir():
        return [(p, masks[0] / f"{p.stem}.png") for p in inputs]
    if len(masks) != len(inputs):
        raise CLIError(
            f"got {len(inputs)} INPUT(s) but {len(masks)} --mask: give one --mask per INPUT, "
            "or one folder of masks named <image stem>.png"
        )
    return list(zip(inputs, masks, strict=True))


def _items(
    args: argparse.Namespace, predictor=None, cams: dict | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, mask, image) per INPUT: the masks ``measure_images`` measures.

    With ``predictor`` (``--model``), an image without a mask yields the mask derived from it,
    and every image's heat map goes into ``cams`` (for the attention-width figure).
    """
    from fracturekit.width import as_binary_mask

    names: dict[str, int] = {}
    for source, mask_path in _pairs(args):
        stem = source.stem
        names[stem] = names.get(stem, 0) + 1
        name = stem if names[stem] == 1 else f"{stem}_{names[stem]}"
        if mask_path is None and predictor is not None and predictor.task == "segment":
            from fracturekit.io import read_image

            # A segmenter draws the mask itself: its threshold and min_area, at the image's size.
            image = read_image(source)
            prob = predictor.probability_maps([image])[0]
            cams[name] = prob
            yield name, predictor.masks_from_maps([prob])[0], np.asarray(image)
            continue
        if mask_path is None and predictor is not None:
            from fracturekit.explain import crack_mask_from_image
            from fracturekit.io import read_image

            image = read_image(source)
            derived = crack_mask_from_image(predictor, image)
            cams[name] = derived.cam
            yield name, derived.mask, np.asarray(image)
            continue
        if mask_path is None:
            values = _read_mask_values(source)
            try:
                mask = as_binary_mask(values, str(source))
            except ValueError as exc:
                raise CLIError(
                    f"{exc}. To measure an image, give --mask M (its crack mask) or --model CKPT"
                ) from None
            yield name, mask, None
            continue
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no such file")
        mask = as_binary_mask(_read_mask_values(mask_path), str(mask_path))
        from fracturekit.io import read_image, read_mask

        image = read_image(source)
        orientation = int(image.info.get("orientation", 1))
        if orientation != 1:
            # Masks are stored in the image's stored pixel frame: turn them with the image.
            mask = read_mask(mask_path, orientation=orientation)
        if (image.height, image.width) != mask.shape:
            raise ValueError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} px but {source} is "
                f"{image.width}x{image.height} px"
            )
        if predictor is not None and predictor.task == "segment":
            cams[name] = predictor.probability_maps([image])[0]
        elif predictor is not None:
            from fracturekit.explain import image_cam

            cams[name] = image_cam(predictor, image)
        yield name, mask, np.asarray(image)


def run(args: argparse.Namespace) -> int:
    from fracturekit.width import measure_images

    if args.px_per_mm is not None and not args.px_per_mm > 0:
        raise CLIError(f"--px-per-mm must be positive, got {args.px_per_mm}")
    predictor, cams = None, {}
    if args.model:
        from fracturekit.predict import Predictor

        predictor = Predictor.from_checkpoint(args.model)
    report = measure_images(
        _items(args, predictor, cams),
        args.out,
        method=args.method,
        px_per_mm=args.px_per_mm,
        min_area=args.min_area,
        plot=not args.no_plot,
    )
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
    if cams:
        from fracturekit.explain import write_attention_width

        for name, r in write_attention_width(report.measurements, cams, args.out).items():
            if r["pearson"] is not None:
                print(
                    f"{name}: heat map vs width along the cracks: Pearson {r['pearson']:.3f}, "
                    f"Spearman {r['spearman']:.3f} ({r['n']} points)"
                )
        print(f"wrote attention_width.csv and attention_<image>.png to {args.out}")
    return 0
