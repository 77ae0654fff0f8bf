"""Scanning large images tile by tile: a stitched crack-probability map, an overlay, regions.

Wall and road photos, borehole image logs and whole X-rays are larger than a network's input.
``scan_image`` slides a window of ``tile`` px with step ``stride`` over the image, classifies the
tiles in batches through ``Predictor.predict_proba`` (the one inference path: the checkpoint's
own preprocessing, temperature and threshold), and averages the positive-class probabilities of
overlapping tiles into a map.

**Segmenters.** A segmentation checkpoint (``predictor.task == "segment"``) gives a probability
per pixel, so ``scan_image`` hands it to ``fracturekit.scan_segment.scan_segment_image``: the
window maps are blended with a tapered weight into a full-resolution mask written band by band
(``mask.png``, exactly the image's size), its pieces outlined (``regions.json``) and measured
(``widths.csv``), in memory bounded by about ``tile`` rows of the image's width; see that
module. The rest of this docstring describes the classifier scan; the streaming readers are the
same for both.

**The map** lives on a grid of ``stride``-px cells, not at full resolution (a 20,000 px image
scanned with stride 112 gives a 179 x 179 map): a cell holds the mean probability of every tile
that covers the cell's centre. Regions are the connected groups of cells at or above the
checkpoint's decision threshold, outlined as polygons in image pixel coordinates: the line where
the map, interpolated between cell centres, crosses the threshold
(``skimage.measure.find_contours``, simplified by ``approximate_polygon``); holes inside a region
are not outlined.

**Streaming.** Rows are read top to bottom in bands and dropped once no tile needs them, so
memory holds about ``tile`` rows of the image plus a thumbnail (at most 2048 px) for the overlay:

* TIFF (tiled or striped; uncompressed, Deflate, LZW, PackBits, anything ``tifffile`` decodes
  without extra codecs): read strip by strip or one row of tiles at a time; uncompressed
  contiguous files are memory-mapped. 8-bit, 16-bit, float, grayscale, RGB and RGBA.
* BMP (uncompressed 8-bit palette, 24- and 32-bit) and binary PGM/PPM (8 and 16 bit):
  memory-mapped.
* Everything else (JPEG, PNG, WebP, DICOM, compressed BMP, JPEG-compressed TIFF, TIFFs with an
  orientation tag): PIL or pydicom must decode the whole picture through ``fracturekit.io``;
  that is allowed up to ``DECODE_MAX_PIXELS`` (250 megapixels, about 750 MB of RGB) unless
  ``max_pixels`` says otherwise. Convert larger pictures to a tiled TIFF first (e.g.
  ``vips tiffsave in.jpg out.tif --tile --compression deflate``).

Pixel values follow ``fracturekit.io``'s rules: 16-bit and float data are stretched linearly
from the image's own minimum to its maximum (found in a first streaming pass), alpha is
composited onto black, grayscale is replicated for RGB models.

Outputs in ``out``: ``overlay.png`` (thumbnail with the map and the region outlines),
``probability.png`` (8-bit map, one pixel per cell), ``probability.npy`` (float32 map),
``regions.json`` (scan settings, the regions with polygon, area, maximum and mean probability)
and ``tiles.csv`` (every tile's box and probability).
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit._files import atomic_write, atomic_write_text
from fracturekit.io import (  # the readers; the limits are re-exported for callers of scan
    DECODE_MAX_PIXELS,  # noqa: F401
    SCAN_MAX_PIXELS,  # noqa: F401
    ImageReadError,  # noqa: F401
    RowSource,  # noqa: F401
    open_rows,
)
from fracturekit.render import colorize
from fracturekit.scan_segment import SegmentScanResult, scan_segment_image
from fracturekit.tiling import (  # tile_positions and the sizes stay importable from here
    MAP_PNG_PX,  # noqa: F401
    THUMBNAIL_PX,  # noqa: F401
    RowWindow,
    Thumbnail,
    output_files,
    scan_settings,
    tile_image,
    tile_positions,
    write_map,
)

OUTPUT_FILES = ("overlay.png", "probability.png", "probability.npy", "regions.json", "tiles.csv")


# --------------------------------------------------------------------------------------------
# the grid


def _cell_spans(length: int, tile: int, stride: int, starts: list[int]) -> list[tuple[int, int]]:
    """For each tile start, the cells ``[a, b)`` whose centres the tile covers."""
    n = math.ceil(length / stride)
    edges = np.arange(n) * stride
    centres = (edges + np.minimum(edges + stride, length)) / 2.0
    spans = []
    for s in starts:
        end = min(s + tile, length) if length > tile else length
        a = int(np.searchsorted(centres, s, side="left"))
        b = int(np.searchsorted(centres, end, side="left"))
        spans.append((a, max(b, a + 1)))
    return spans


# --------------------------------------------------------------------------------------------
# regions and pictures


def find_regions(
    prob: np.ndarray,
    threshold: float,
    cell: int,
    width: int,
    height: int,
    *,
    tolerance: float = 0.25,
) -> list[dict[str, Any]]:
    """Connected groups of cells with ``prob >= threshold`` as polygons in image pixels.

    Args:
        prob: ``(rows, cols)`` map; cell ``(i, j)`` covers pixels ``[i*cell, (i+1)*cell)`` x
            ``[j*cell, (j+1)*cell)`` (clipped to the image).
        threshold: the decision threshold.
        cell: cell size in px.
        width, height: the image size.
        tolerance: polygon simplification tolerance in cells.

    Returns:
        ``[{"id", "polygon": [[x, y], ...], "bbox": [x0, y0, x1, y1], "area_px",
        "max_probability", "mean_probability", "cells"}]`` sorted by decreasing maximum.
    """
    from skimage import measure

    above = np.asarray(prob) >= threshold
    labels = measure.label(above, connectivity=2)
    col0, row0 = np.arange(prob.shape[1]) * cell, np.arange(prob.shape[0]) * cell
    col_w = np.minimum(col0 + cell, width) - col0
    row_h = np.minimum(row0 + cell, height) - row0
    area = np.outer(row_h, col_w).astype(np.float64)
    regions = []
    for props in measure.regionprops(labels):
        inside = labels == props.label
        # The outline is the iso-line where this region's map, interpolated bilinearly between
        # cell centres, crosses the threshold (the map outside the region counts as 0).
        padded = np.pad(np.where(inside, prob, 0.0).astype(np.float64), 1)
        level = min(float(threshold), float(prob[inside].min()) - 1e-9)
        contours = measure.find_contours(padded, level)
        best = max(contours, key=lambda c: abs(_shoelace(c)))
        poly = measure.approximate_polygon(best, tolerance=tolerance)
        # Contour indices are padded cell indices; cell k's centre is at pixel (k + 0.5) * cell.
        ys = np.clip((poly[:, 0] - 1 + 0.5) * cell, 0, height)
        xs = np.clip((poly[:, 1] - 1 + 0.5) * cell, 0, width)
        r0, c0, r1, c1 = props.bbox
        values = prob[inside]
        regions.append(
            {
                "polygon": [
                    [round(float(x), 1), round(float(y), 1)] for x, y in zip(xs, ys, strict=True)
                ],
                "bbox": [
                    int(c0 * cell),
                    int(r0 * cell),
                    int(min(c1 * cell, width)),
                    int(min(r1 * cell, height)),
                ],
                "area_px": int(area[inside].sum()),
                "max_probability": round(float(values.max()), 6),
                "mean_probability": round(float(values.mean()), 6),
                "cells": int(inside.sum()),
            }
        )
    regions.sort(key=lambda r: -r["max_probability"])
    for i, region in enumerate(regions, 1):
        region["id"] = i
    return [{"id": r.pop("id"), **r} for r in regions]


def _shoelace(rc: np.ndarray) -> float:
    y, x = rc[:, 0], rc[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def upsample_map(prob: np.ndarray, cell: int, size: tuple[int, int], factor: int = 1) -> np.ndarray:
    """The cell map on a pixel grid, bilinear between cell centres.

    Args:
        prob: ``(rows, cols)`` map of ``cell``-px cells.
        cell: cell size in image pixels.
        size: ``(width, height)`` of the grid wanted: the image's size divided by ``factor``.
        factor: image pixels per output pixel (1: full resolution; the overlay's thumbnail
            uses its reduction factor).
    """
    f = factor
    from PIL import Image

    full = (max(1, round(prob.shape[1] * cell / f)), max(1, round(prob.shape[0] * cell / f)))
    up = Image.fromarray(prob.astype(np.float32), mode="F").resize(full, Image.Resampling.BILINEAR)
    arr = np.asarray(up)
    out = np.zeros((size[1], size[0]), np.float32)
    h, w = min(size[1], arr.shape[0]), min(size[0], arr.shape[1])
    out[:h, :w] = arr[:h, :w]
    return out


def _overlay_png(
    thumb: np.ndarray,
    prob: np.ndarray,
    cell: int,
    f: int,
    regions: list[dict[str, Any]],
    path: Path,
) -> Path:
    from PIL import Image, ImageDraw

    rgb = np.repeat(thumb, 3, axis=2) if thumb.shape[2] == 1 else thumb
    h, w = rgb.shape[:2]
    p = upsample_map(prob, cell, (w, h), f)
    heat = colorize(p, "jet").astype(np.float32)
    # Opacity grows with the probability, so low-probability ground shows the plain image.
    a = (0.65 * np.clip(p, 0, 1))[..., None]
    blend = (1 - a) * rgb.astype(np.float32) + a * heat
    image = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    line = max(1, round(max(w, h) / 600))
    for region in regions:
        pts = [(x / f, y / f) for x, y in region["polygon"]]
        if len(pts) >= 2:
            draw.line([*pts, pts[0]], fill=(255, 255, 255), width=line)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


# --------------------------------------------------------------------------------------------
# scanning


@dataclass
class ScanResult:
    """What ``scan_image`` found and wrote.

    Attributes:
        path: the image scanned; ``width``/``height`` its size.
        tile, stride: window and step in px; ``cell`` the map's cell size (= ``stride``).
        probability: ``(rows, cols)`` float32 stitched positive-class probability per cell.
        threshold: the checkpoint's decision threshold; ``positive`` the class mapped.
        regions: crack regions (see ``find_regions``).
        n_tiles: tiles classified; ``positive_tiles`` those at or above the threshold.
        tiles: ``(n_tiles, 5)`` array of ``x, y, w, h, probability`` per tile.
        files: output name -> path.
        streamed: how pixels were read (``tiff``, ``memmap``, ``decoded``).
        seconds: wall time of the scan.
    """

    path: Path
    width: int
    height: int
    tile: int
    stride: int
    cell: int
    probability: np.ndarray
    threshold: float
    positive: str
    regions: list[dict[str, Any]]
    n_tiles: int
    positive_tiles: int
    tiles: np.ndarray
    files: dict[str, Path] = field(default_factory=dict)
    streamed: str = ""
    seconds: float = 0.0


def _positive_column(predictor: Any) -> tuple[int, str]:
    classes = list(predictor.classes)
    index = predictor.positive_index
    if index is not None:
        return index, classes[index]
    raise ValueError(
        f"scan maps one class, but this {len(classes)}-class checkpoint names no positive class"
    )


def scan_image(
    predictor: Any,
    path: str | Path,
    *,
    tile: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    out: str | Path,
    max_pixels: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    px_per_mm: float | None = None,
) -> ScanResult | SegmentScanResult:
    """Scan a large image with overlapping tiles into a crack-probability map and regions.

    A segmentation checkpoint (``predictor.task == "segment"``) is scanned by
    ``fracturekit.scan_segment.scan_segment_image`` instead, with the same arguments: a
    full-resolution ``mask.png``, its pieces and their widths, returned as a
    ``SegmentScanResult``.

    Args:
        predictor: a ``fracturekit.predict.Predictor`` (either backend).
        path: the image (see the module docstring for what is streamed).
        tile: window size in image pixels (default: the model's input size); each tile is
            resized to the model's input by ``predictor.preprocess``.
        stride: step between windows (default ``tile // 2``); also the map's cell size.
        batch_size: tiles per forward pass.
        out: output folder (created).
        max_pixels: the largest image accepted (see ``open_rows``).
        overwrite: replace existing output files; otherwise an existing one is an error.
        progress: called with ``(tiles done, tiles in all)`` after each batch.
        px_per_mm: segmenters only: the image scale, for widths in mm.

    Returns:
        A ``ScanResult``; the files are listed in the module docstring.

    Raises:
        ImageReadError: the image cannot be read or is over the pixel limit.
        ValueError: bad tile/stride/batch size, a multi-class checkpoint without a positive
            class, or ``px_per_mm`` for a classifier.
        FileExistsError: an output file exists and ``overwrite`` is false.
    """
    options = {"tile": tile, "stride": stride, "batch_size": batch_size, "out": out}
    options.update(max_pixels=max_pixels, overwrite=overwrite, progress=progress)
    if predictor.task == "segment":
        return scan_segment_image(predictor, path, px_per_mm=px_per_mm, **options)
    if px_per_mm is not None:
        raise ValueError(
            "px_per_mm (--px-per-mm) scales the widths of a segmenter's mask; a classifier "
            "scan measures no widths"
        )
    return _scan_tiles(predictor, path, **options)


def _scan_tiles(
    predictor: Any,
    path: str | Path,
    *,
    tile: int | None,
    stride: int | None,
    batch_size: int,
    out: str | Path,
    max_pixels: int | None,
    overwrite: bool,
    progress: Callable[[int, int], None] | None,
) -> ScanResult:
    """``scan_image`` of a classifier: a probability per tile, averaged onto stride cells."""
    started = time.perf_counter()
    tile, stride, threshold = scan_settings(predictor, tile, stride, batch_size)
    column, positive = _positive_column(predictor)
    out = Path(out)
    files = output_files(out, OUTPUT_FILES, overwrite)

    source = open_rows(path, channels=predictor.in_chans, max_pixels=max_pixels)
    grid = _TileGrid(source.width, source.height, tile, stride)
    thumb = Thumbnail(source.width, source.height, source.channels)
    _classify_tiles(predictor, RowWindow(source, thumb.add), grid, column, batch_size, progress)
    prob = grid.probability()
    regions = find_regions(prob, threshold, stride, source.width, source.height)

    out.mkdir(parents=True, exist_ok=True)
    _overlay_png(thumb.image(), prob, stride, thumb.f, regions, files["overlay.png"])
    write_map(prob, files["probability.png"], files["probability.npy"])
    result = ScanResult(
        path=Path(path),
        width=source.width,
        height=source.height,
        tile=tile,
        stride=stride,
        cell=stride,
        probability=prob,
        threshold=threshold,
        positive=positive,
        regions=regions,
        n_tiles=grid.n_tiles,
        positive_tiles=int((grid.tiles[:, 4] >= threshold).sum()),
        tiles=grid.tiles,
        files=files,
        streamed=source.streamed,
        seconds=time.perf_counter() - started,
    )
    _write_summary(result)
    return result


class _TileGrid:
    """Where the tiles go, and the map their probabilities are averaged into (one cell per
    stride; a cell averages every tile that covers it)."""

    def __init__(self, width: int, height: int, tile: int, stride: int) -> None:
        self.width, self.height, self.tile = width, height, tile
        self.xs, self.ys = tile_positions(width, tile, stride), tile_positions(height, tile, stride)
        self.x_cells = _cell_spans(width, tile, stride, self.xs)
        self.y_cells = _cell_spans(height, tile, stride, self.ys)
        shape = (math.ceil(height / stride), math.ceil(width / stride))
        self.total = np.zeros(shape, np.float64)
        self.count = np.zeros(shape, np.int32)
        self.n_tiles = len(self.xs) * len(self.ys)
        self.tiles = np.zeros((self.n_tiles, 5), np.float64)  # x, y, w, h, probability

    def add(self, k: int, i: int, j: int, p: float) -> None:
        """Tile ``k`` (column ``i``, row ``j`` of the tile grid) has probability ``p``."""
        a, b = self.y_cells[j]
        c, d = self.x_cells[i]
        self.total[a:b, c:d] += p
        self.count[a:b, c:d] += 1
        self.tiles[k, 4] = p

    def probability(self) -> np.ndarray:
        return (self.total / np.maximum(self.count, 1)).astype(np.float32)


def _classify_tiles(
    predictor: Any,
    window: RowWindow,
    grid: _TileGrid,
    column: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Cut every tile from the rows as they stream past and classify them in batches."""

    pending: list[tuple[Any, int, int, int]] = []  # (tensor, tile index, x index, y index)
    done = 0

    def flush() -> None:
        nonlocal done
        if pending:
            proba = predictor.predict_proba(predictor.stack([t for t, _, _, _ in pending]))
            for (_, k, i, j), p in zip(pending, proba[:, column], strict=True):
                grid.add(k, i, j, float(p))
            done += len(pending)
            pending.clear()
            if progress is not None:
                progress(done, grid.n_tiles)

    k = 0
    tile, width, height = grid.tile, grid.width, grid.height
    for j, y in enumerate(grid.ys):
        rows = window.rows(y, min(y + tile, height))
        for i, x in enumerate(grid.xs):
            grid.tiles[k, :4] = (x, y, min(tile, width - x), min(tile, height - y))
            pending.append((predictor.preprocess(tile_image(rows, x, tile)), k, i, j))
            k += 1
            if len(pending) >= batch_size:
                flush()
    flush()
    window.drain()  # rows below the last tile still belong in the thumbnail


def _write_summary(result: ScanResult) -> None:
    """regions.json (the scan's settings, counts and regions) and tiles.csv."""
    prob = result.probability
    summary = {
        "image": str(result.path),
        "width": result.width,
        "height": result.height,
        "tile": result.tile,
        "stride": result.stride,
        "cell_px": result.stride,
        "map_shape": list(prob.shape),
        "positive": result.positive,
        "threshold": result.threshold,
        "n_tiles": result.n_tiles,
        "positive_tiles": result.positive_tiles,
        "max_probability": round(float(prob.max()), 6),
        "streamed": result.streamed,
        "seconds": round(result.seconds, 3),
        "regions": result.regions,
    }
    atomic_write_text(result.files["regions.json"], json.dumps(summary, indent=2) + "\n")
    atomic_write_text(result.files["tiles.csv"], _tiles_csv(result.tiles))


def _tiles_csv(tiles: np.ndarray) -> str:
    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["x", "y", "width", "height", "probability"])
    for x, y, w, h, p in tiles:
        writer.writerow([int(x), int(y), int(w), int(h), f"{p:.6f}"])
    return buf.getvalue()
