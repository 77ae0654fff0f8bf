"""Crack widths of image files: the library path of ``fracturekit width``.

Each input is a binary mask, an image with its mask, or (given a predictor) an image alone,
whose mask the model supplies: a segmentation model draws it (its threshold and ``min_area``
at the image's size), a classifier's heat map guides ``crack_mask_from_image``. The masks go
to ``width.measure_images``; with a predictor, every image's heat map (a segmenter's
probability map) is also compared with the width along the cracks (``write_attention_width``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit.explain._predictor import PredictorLike
from fracturekit.explain.attention import write_attention_width
from fracturekit.explain.cams import image_cam
from fracturekit.explain.crack_mask import crack_mask_from_image
from fracturekit.io import read_image, read_mask
from fracturekit.width import WidthReport, as_binary_mask, measure_images


@dataclass
class WidthFiles:
    """What :func:`measure_files` wrote.

    Attributes:
        report: ``widths.csv``, the profiles and plots, the measurements by image name.
        attention: with a predictor, ``{name: {"pearson", "spearman", "n"}}`` of the heat map
            against the width along each image's cracks (``write_attention_width``: also
            ``attention_width.csv`` and ``attention_<name>.png``); empty without one.
    """

    report: WidthReport
    attention: dict[str, dict[str, Any]] = field(default_factory=dict)


def measure_files(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    masks: Sequence[str | Path] | None = None,
    predictor: PredictorLike | None = None,
    method: str = "edt",
    px_per_mm: float | None = None,
    min_area: int = 10,
    plot: bool = True,
) -> WidthFiles:
    """Measure the cracks of image or mask files and write the width outputs into ``out``.

    Args:
        inputs: binary mask files, or images (with ``masks``, or a ``predictor``).
        out: output folder (created).
        masks: the inputs' crack masks: one per input (same order), or one folder holding
            ``<input stem>.png`` for every input. None: an input is a mask itself, unless a
            ``predictor`` supplies its mask.
        predictor: a ``Predictor`` (PyTorch backend) for inputs without a mask, and for the
            heat map of every image.
        method, px_per_mm, min_area, plot: as ``width.measure_images``.

    Returns:
        The ``WidthFiles`` written.

    Raises:
        ValueError: masks that do not pair with the inputs, an unreadable or non-binary mask,
            an image given without mask or predictor, or a mask of another size than its image.
        FileNotFoundError: an input or mask file that does not exist.
    """
    cams: dict[str, np.ndarray] = {}
    report = measure_images(
        _items(_pairs(inputs, masks), predictor, cams),
        out,
        method=method,
        px_per_mm=px_per_mm,
        min_area=min_area,
        plot=plot,
    )
    if not cams:
        return WidthFiles(report)
    return WidthFiles(report, write_attention_width(report.measurements, cams, out))


def _pairs(
    inputs: Sequence[str | Path], masks: Sequence[str | Path] | None
) -> list[tuple[Path, Path | None]]:
    """(input, its mask or None) for every input."""
    paths = [Path(p) for p in inputs]
    mask_paths = [Path(m) for m in masks or []]
    if not mask_paths:
        return [(p, None) for p in paths]
    if len(mask_paths) == 1 and mask_paths[0].is_dir():
        return [(p, mask_paths[0] / f"{p.stem}.png") for p in paths]
    if len(mask_paths) != len(paths):
        raise ValueError(
            f"got {len(paths)} INPUT(s) but {len(mask_paths)} --mask: give one --mask per INPUT, "
            "or one folder of masks named <image stem>.png"
        )
    return list(zip(paths, mask_paths, strict=True))


def _read_mask_values(path: Path) -> np.ndarray:
    """A mask file's raw pixel values (``as_binary_mask`` checks that they are binary)."""
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


def _items(
    pairs: list[tuple[Path, Path | None]],
    predictor: PredictorLike | None,
    cams: dict[str, np.ndarray],
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, mask, image) per input, the masks ``measure_images`` measures; every image's heat
    map goes into ``cams`` when there is a predictor."""
    names: dict[str, int] = {}
    for source, mask_path in pairs:
        names[source.stem] = names.get(source.stem, 0) + 1
        n = names[source.stem]
        name = source.stem if n == 1 else f"{source.stem}_{n}"
        if mask_path is not None:
            mask, image = _given_mask(source, mask_path)
            if predictor is not None:
                cams[name] = _heat_map(predictor, image)
            yield name, mask, np.asarray(image)
        elif predictor is not None:
            image = read_image(source)
            mask, cams[name] = _model_mask(predictor, image)
            yield name, mask, np.asarray(image)
        else:
            yield name, _mask_input(source), None


def _mask_input(source: Path) -> np.ndarray:
    """An input given alone and without a model: a binary mask file."""
    values = _read_mask_values(source)
    try:
        return as_binary_mask(values, str(source))
    except ValueError as exc:
        raise ValueError(
            f"{exc}. To measure an image, give --mask M (its crack mask) or --model CKPT"
        ) from None


def _given_mask(source: Path, mask_path: Path) -> tuple[np.ndarray, Any]:
    """An image and its mask file, the mask turned with the image's EXIF orientation."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    mask = as_binary_mask(_read_mask_values(mask_path), str(mask_path))
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
    return mask, image


def _model_mask(predictor: PredictorLike, image: Any) -> tuple[np.ndarray, np.ndarray]:
    """The mask a model gives an image alone, and the heat map that goes with it."""
    if predictor.task == "segment":
        # A segmenter draws the mask itself: its threshold and min_area, at the image's size.
        prob = predictor.probability_maps([image])[0]
        return predictor.masks_from_maps([prob])[0], prob
    derived = crack_mask_from_image(predictor, image)
    return derived.mask, derived.cam


def _heat_map(predictor: PredictorLike, image: Any) -> np.ndarray:
    """The image's heat map: a segmenter's probability map, a classifier's CAM."""
    if predictor.task == "segment":
        return predictor.probability_maps([image])[0]
    return image_cam(predictor, image)
