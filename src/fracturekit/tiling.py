"""Windows over a streamed image: what both kinds of scan share.

``fracturekit.scan`` (classifiers: a probability per tile) and ``fracturekit.scan_segment``
(segmenters: a probability per pixel) slide windows over an image read top to bottom in bands of
rows (``fracturekit.io.open_rows``). Here: where the windows go (``tile_positions``), the rows a
window row needs (``RowWindow``, which drops rows no window needs any more), a window's pixels
(``tile_image``), the thumbnail built from the bands as they stream past (``Thumbnail``), the
checks of the scan arguments, the output paths and the reduced probability map files
(``write_map``). numpy and Pillow only.
"""

from __future__ import annotations

import io as _stdio
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit._files import atomic_write
from fracturekit.io import ImageReadError, RowSource

THUMBNAIL_PX = 2048  # long side of the overlay at most
MAP_PNG_PX = 4096  # probability.png is downsampled beyond this


class RowWindow:
    """Rows ``[y0, y1)`` of a band stream, asked for with non-decreasing ``y0``.

    Keeps only the rows still needed; each new band also goes to ``on_band`` (the thumbnail).
    """

    def __init__(self, source: RowSource, on_band: Callable[[np.ndarray], None]) -> None:
        self.bands = source.bands()
        self.on_band = on_band
        self.buf = np.zeros((0, source.width, source.channels), dtype=np.uint8)
        self.top = 0  # image row of buf[0]
        self.height = source.height
        self.path = source.path

    def rows(self, y0: int, y1: int) -> np.ndarray:
        if y0 < self.top:
            raise ValueError("rows must be asked for top to bottom")
        while self.top + len(self.buf) < y1:
            band = next(self.bands, None)
            if band is None:
                raise ImageReadError(
                    self.path,
                    f"ended after {self.top + len(self.buf)} of {self.height} rows",
                    kind="truncated",
                )
            self.on_band(band)
            drop = min(max(0, y0 - self.top), len(self.buf))  # rows no tile needs any more
            self.buf = np.concatenate([self.buf[drop:], band])
            self.top += drop
        return self.buf[y0 - self.top : y1 - self.top]

    def drain(self) -> None:
        for band in self.bands:
            self.on_band(band)


class Thumbnail:
    """A box-filtered thumbnail built from bands as they stream past (at most ``size`` px).

    ``f`` is the reduction factor: thumbnail pixel ``(i, j)`` averages image pixels
    ``[i*f, (i+1)*f) x [j*f, (j+1)*f)``; the thumbnail is ``ceil(height / f)`` x
    ``ceil(width / f)``.
    """

    def __init__(self, width: int, height: int, channels: int, size: int = THUMBNAIL_PX):
        self.f = max(1, math.ceil(max(width, height) / size))
        self.width = width
        self.out_w = math.ceil(width / self.f)
        self.pending = np.zeros((0, width, channels), dtype=np.float32)
        self.rows: list[np.ndarray] = []

    def _reduce(self, block: np.ndarray) -> np.ndarray:
        rows = block.mean(axis=0)  # (width, channels)
        pad = self.out_w * self.f - self.width
        if pad:
            rows = np.concatenate([rows, np.repeat(rows[-1:], pad, axis=0)])
        return rows.reshape(self.out_w, self.f, -1).mean(axis=1)

    def add(self, band: np.ndarray) -> None:
        # In slices of whole row groups, so a tall band is never converted to float at once.
        step = self.f * max(1, 64 // self.f)
        for start in range(0, len(band), step):
            data = np.concatenate([self.pending, band[start : start + step].astype(np.float32)])
            full = len(data) // self.f
            for i in range(full):
                self.rows.append(self._reduce(data[i * self.f : (i + 1) * self.f]))
            self.pending = data[full * self.f :]

    def image(self) -> np.ndarray:
        if len(self.pending):
            self.rows.append(self._reduce(self.pending))
            self.pending = self.pending[:0]
        out = np.stack(self.rows) if self.rows else np.zeros((1, self.out_w, 1), np.float32)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def tile_positions(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride`` px, plus one flush with the far edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_image(rows: np.ndarray, x: int, tile: int) -> Any:
    """The ``tile`` x ``tile`` window at column ``x`` of ``rows`` as a PIL image; an image
    smaller than the tile is mirrored out to full size (its own pixels stay top left)."""
    from PIL import Image

    crop = rows[:, x : x + tile]
    h, w = crop.shape[:2]
    if h < tile or w < tile:
        crop = np.pad(crop, ((0, tile - h), (0, tile - w), (0, 0)), mode="symmetric")
    crop = np.ascontiguousarray(crop)
    return Image.fromarray(crop[..., 0] if crop.shape[2] == 1 else crop)


def scan_settings(
    predictor: Any, tile: int | None, stride: int | None, batch_size: int
) -> tuple[int, int, float]:
    """``(tile, stride, threshold)`` of a scan, checked: the window defaults to the model's
    input size, the step to half a window, the threshold to the model's (0.5 without one)."""
    tile = int(predictor.img_size if tile is None else tile)
    stride = int(max(1, tile // 2) if stride is None else stride)
    check_scan_args(tile, stride, batch_size)
    threshold = float(predictor.threshold if predictor.threshold is not None else 0.5)
    return tile, stride, threshold


def check_scan_args(tile: int, stride: int, batch_size: int) -> None:
    """Raise ``ValueError`` for a tile, stride or batch size no scan can use."""
    if tile < 8:
        raise ValueError(f"tile={tile}: must be at least 8 px")
    if not 1 <= stride <= tile:
        raise ValueError(f"stride={stride}: must lie in 1..tile ({tile}) so tiles cover the image")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")


def output_files(out: Path, names: Iterable[str], overwrite: bool) -> dict[str, Path]:
    """The output paths; existing ones are an error unless ``overwrite``."""
    files = {name: out / name for name in names}
    if not overwrite:
        existing = [str(p) for p in files.values() if p.exists()]
        if existing:
            raise FileExistsError(
                f"{', '.join(existing)} already exist(s): pass overwrite=True (--overwrite) to "
                "replace, or choose another output folder"
            )
    return files


def write_map(prob: np.ndarray, png: Path, npy: Path) -> None:
    """A probability map as ``npy`` (float32) and ``png`` (8-bit, at most ``MAP_PNG_PX``)."""
    from PIL import Image

    buf = _stdio.BytesIO()
    np.save(buf, prob.astype(np.float32))
    atomic_write(npy, lambda tmp: tmp.write_bytes(buf.getvalue()))
    image = Image.fromarray(np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if max(image.size) > MAP_PNG_PX:
        image.thumbnail((MAP_PNG_PX, MAP_PNG_PX), Image.Resampling.BOX)
    atomic_write(png, lambda tmp: image.save(tmp, format="PNG"))
