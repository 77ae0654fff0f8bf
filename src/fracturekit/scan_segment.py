"""Scanning a large image with a segmenter: a full-resolution crack mask in bounded memory.

``fracturekit.scan.scan_image`` sends segmentation checkpoints (``predictor.task ==
"segment"``) here. Windows of ``tile`` px (default: the model's input size, so the image is
seen at its own resolution) every ``stride`` px (default half a tile) go through
``Predictor.predict_proba_maps`` in batches (a ``tile`` other than the input size is resized to
it and its map back). The last window of a row or column is shifted to end flush with the image,
and an image smaller than a window is mirrored out to it, so every pixel is covered.

**Stitching.** Each window's map is weighted by ``window_weight`` (a 2-D Hann taper with a floor
of ``WEIGHT_FLOOR``: largest in the middle, where the network sees the most context, and above
zero everywhere, so pixels near the image's edge that only edge windows cover still count) and
a pixel's probability is ``sum(w * p) / sum(w)`` over the windows covering it: no seams where
windows meet.

**Bounded memory.** Nothing the size of the full image is held:

* the rows of the image: about ``tile`` rows (``fracturekit.tiling.RowWindow``; TIFF, BMP and
  PGM/PPM are streamed, other formats decoded whole, as for classifiers);
* the weighted sums: a band of ``tile`` rows x the image's width (``BandBuffer``); once a row of
  windows is done, the rows above the next row of windows are final and leave the band;
* ``min_area`` (stored at ``img_size`` x ``img_size``; scaled by ``(tile / img_size)**2``, so
  at native resolution it applies as is) is applied exactly as ``drop_small_pieces`` would on
  the whole mask: ``PieceFilter`` holds back only the rows of pieces still open and under the
  area, which span fewer than ``min_area`` rows;
* ``mask.png`` is written band by band (``fracturekit.masks.MaskPngWriter``), and a 1-bit copy
  of the mask goes to an anonymous temporary file in the output folder for the pieces' crops;
* pieces are found band by band and joined across band seams (``PieceTracker``); a finished
  piece is counted and only the ``MAX_PIECES`` largest are kept;
* the thumbnail, and the probability map and mask reduced to it (at most 2,048 px on the long
  side: block maxima, so a 1-px crack stays visible).

**Pieces, outlines and widths.** The listed pieces (the ``MAX_PIECES`` largest) are cut from the
1-bit mask on their bounding box (plus a margin), isolated from other pieces in the box, and
outlined (``fracturekit.masks.mask_polygons``) and measured (``fracturekit.width.measure_mask``)
at full resolution when the box holds at most ``MAX_CROP_PX`` pixels and the piece at most
``MAX_CROP_AREA``. A larger piece (a crack running across a large part of the image, or a filled
region) is read reduced by the smallest whole factor that fits
(a reduced pixel is crack when any of its pixels is); its outline and widths are then at that
resolution (its ``scale`` in regions.json and widths.csv): widths narrower than the factor come
out as about the factor. Areas, boxes and probabilities are always exact.

**Outputs** in ``out``: ``mask.png`` (8-bit, 0/255, the image's size), ``overlay.png`` (the
thumbnail with the mask in red), ``probability.png`` and ``probability.npy`` (the pixel
probability reduced to the thumbnail's grid by block maxima; ``map_scale`` image pixels per map
pixel), ``regions.json`` (the settings, totals and the listed pieces: polygon in image pixels,
box, area, maximum and mean probability, scale) and ``widths.csv`` (one row a listed piece of at
least ``MEASURE_MIN_AREA`` px: length and widths in px, in mm with ``px_per_mm``).
"""

from __future__ import annotations

import csv
import heapq
import io as _stdio
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fracturekit._files import atomic_write, atomic_write_text
from fracturekit.io import RowSource, open_rows
from fracturekit.masks import MaskPngWriter, crack_totals, mask_polygons
from fracturekit.tiling import (
    RowWindow,
    Thumbnail,
    output_files,
    scan_settings,
    tile_image,
    tile_positions,
    write_map,
)
from fracturekit.width import MM_COLUMNS, WIDTH_COLUMNS, CrackMeasurement, measure_mask

SEGMENT_OUTPUT_FILES = (
    "mask.png",
    "overlay.png",
    "probability.png",
    "probability.npy",
    "regions.json",
    "widths.csv",
)
WEIGHT_FLOOR = 0.02  # the window weight at its very edge, relative to its middle
MAX_PIECES = 1000  # pieces outlined in regions.json and measured in widths.csv (the largest)
MAX_CROP_PX = 1 << 22  # a piece's box up to this many pixels is measured at full resolution
# ...and a piece of up to this many pixels: the outline and the skeleton's graph cost memory by
# the piece's pixels (a 4 MP box filled at 75% took about 1.2 GB to outline and measure).
MAX_CROP_AREA = 1 << 19
MEASURE_MIN_AREA = 10  # pieces smaller than this are not measured (width_summary's default)
MASK_COLOUR = (255, 40, 40)
EIGHT = np.ones((3, 3), dtype=bool)


def window_weight(tile: int, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """The ``(tile, tile)`` float32 weight of a window's pixels: a Hann taper, ``floor`` at the
    edge, 1 in the middle, and the same for every window (so a constant map stitches to
    itself)."""
    t = (np.arange(tile) + 0.5) / tile
    side = floor + (1.0 - floor) * np.sin(np.pi * t) ** 2
    return np.outer(side, side).astype(np.float32)


# --------------------------------------------------------------------------------------------
# stitching


class BandBuffer:
    """Weighted sums of the window maps over rows ``[top, top + capacity)``: the rows not final.

    ``peak_rows`` counts the most rows ever in use (at most ``capacity``, the tile height).
    """

    def __init__(self, width: int, capacity: int) -> None:
        self.sums = np.zeros((capacity, width), np.float32)
        self.weights = np.zeros((capacity, width), np.float32)
        self.top = 0
        self.used = 0
        self.peak_rows = 0

    def add(self, y: int, x: int, prob: np.ndarray, weight: np.ndarray) -> None:
        """Window map ``prob`` (weighted by ``weight``) at image position ``(x, y)``."""
        h, w = prob.shape
        r0 = y - self.top
        if r0 < 0 or r0 + h > len(self.sums):
            raise ValueError(f"rows {y}..{y + h} lie outside the band at {self.top}")
        self.sums[r0 : r0 + h, x : x + w] += prob * weight
        self.weights[r0 : r0 + h, x : x + w] += weight
        self.used = max(self.used, r0 + h)
        self.peak_rows = max(self.peak_rows, self.used)

    def pop(self, y_end: int) -> np.ndarray:
        """The final probabilities of rows ``[top, y_end)``; they leave the band."""
        n = y_end - self.top
        out = self.sums[:n] / self.weights[:n]  # every pixel is covered: its weight is > 0
        for arr in (self.sums, self.weights):
            arr[: len(arr) - n] = arr[n:]
            arr[len(arr) - n :] = 0.0
        self.top, self.used = y_end, max(0, self.used - n)
        return out


def stitched_rows(
    predictor: Any,
    window: RowWindow,
    buffer: BandBuffer,
    width: int,
    height: int,
    *,
    tile: int,
    stride: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """The stitched pixel probabilities, top to bottom: ``(y, rows)`` with ``rows`` a
    ``(n, width)`` float32 band starting at image row ``y``.

    Windows of one row go through the model in batches of ``batch_size``; after each row of
    windows the rows above the next one are final and given out.
    """

    xs, ys = tile_positions(width, tile, stride), tile_positions(height, tile, stride)
    weight = window_weight(tile)
    native = tile == int(predictor.img_size)
    total, done = len(xs) * len(ys), 0
    for j, y in enumerate(ys):
        rows = window.rows(y, min(y + tile, height))
        h = len(rows)
        for start in range(0, len(xs), batch_size):
            part = xs[start : start + batch_size]
            batch = predictor.stack([predictor.preprocess(tile_image(rows, x, tile)) for x in part])
            maps = predictor.predict_proba_maps(
                batch, None if native else [(tile, tile)] * len(part)
            )
            for x, prob in zip(part, maps, strict=True):
                w = min(tile, width - x)
                buffer.add(y, x, np.asarray(prob, np.float32)[:h, :w], weight[:h, :w])
            done += len(part)
            if progress is not None:
                progress(done, total)
        yield y, buffer.pop(ys[j + 1] if j + 1 < len(ys) else height)


# --------------------------------------------------------------------------------------------
# the mask's pieces, streamed


class PieceFilter:
    """Threshold and ``min_area`` on rows streamed top to bottom: exactly ``drop_small_pieces``
    of the whole thresholded mask, holding back only the rows it cannot decide yet.

    A piece (8-connected) is kept once it has ``min_area`` pixels or touches the rows already
    given out (their pieces were kept); it is dropped once it is closed (does not reach the
    newest row) with fewer. Only a piece still open and under ``min_area`` pixels holds rows
    back, and it spans fewer than ``min_area`` rows: ``peak_rows`` stays under ``min_area`` plus
    one band (a stride of rows; the image's last band is a window's).
    """

    def __init__(self, width: int, threshold: float, min_area: float) -> None:
        self.threshold, self.min_area = threshold, min_area
        self.context = np.zeros((1, width), bool)  # the last row given out
        self.mask = np.zeros((0, width), bool)
        self.prob = np.zeros((0, width), np.float32)
        self.peak_rows = 0

    def push(self, prob: np.ndarray, last: bool) -> tuple[np.ndarray, np.ndarray]:
        """Add the next rows' probabilities; returns the rows now decided: ``(mask, prob)``
        (possibly no rows). With ``last`` every row is given out."""
        if self.min_area <= 1:  # nothing to drop
            return prob >= self.threshold, prob
        self.mask = np.concatenate([self.mask, prob >= self.threshold])
        self.prob = np.concatenate([self.prob, prob])
        self.peak_rows = max(self.peak_rows, len(self.mask))
        keep, labels, ready = self._decide(last)
        mask = keep[labels[1 : ready + 1]]
        prob_out = self.prob[:ready]
        if ready:
            self.context = mask[-1:].copy()
        self.mask, self.prob = self.mask[ready:], self.prob[ready:]
        return mask, prob_out

    def _decide(self, last: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """Which pieces stay (``keep[label]``), the labels (context row first) and how many
        held rows are decided."""
        from scipy import ndimage

        labels, n = ndimage.label(np.concatenate([self.context, self.mask]), structure=EIGHT)
        keep = np.bincount(labels.ravel(), minlength=n + 1) >= self.min_area
        keep[labels[0]] = True  # joined to rows already given out
        keep[0] = False
        if last:
            return keep, labels, len(self.mask)
        undecided = np.zeros(n + 1, bool)
        undecided[labels[-1]] = True  # still open
        undecided &= ~keep
        undecided[0] = False
        if not undecided.any():
            return keep, labels, len(self.mask)
        return keep, labels, int(np.argmax(undecided[labels[1:]].any(axis=1)))


@dataclass
class Piece:
    """One 8-connected piece of the mask: pixels, box ``[y0, y1) x [x0, x1)``, its first pixel
    in raster order (``seed``), and the maximum and sum of its pixels' probabilities."""

    area: int
    y0: int
    x0: int
    y1: int
    x1: int
    seed: tuple[int, int]
    max_probability: float
    probability_sum: float

    def joined(self, other: Piece) -> Piece:
        return Piece(
            self.area + other.area,
            min(self.y0, other.y0),
            min(self.x0, other.x0),
            max(self.y1, other.y1),
            max(self.x1, other.x1),
            min(self.seed, other.seed),
            max(self.max_probability, other.max_probability),
            self.probability_sum + other.probability_sum,
        )


def _band_pieces(labels: np.ndarray, n: int, prob: np.ndarray, y: int) -> list[Piece]:
    """The pieces of one labelled band starting at image row ``y``."""
    from scipy import ndimage

    if n == 0:
        return []
    index = np.arange(1, n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    pmax = np.atleast_1d(ndimage.maximum(prob, labels, index))
    psum = np.atleast_1d(ndimage.sum_labels(prob, labels, index))
    flat = labels.ravel()
    nonzero = np.flatnonzero(flat)
    _, first = np.unique(flat[nonzero], return_index=True)
    seeds = nonzero[first]  # each label's first pixel in raster order
    width = labels.shape[1]
    return [
        Piece(
            int(area[i]),
            y + sl[0].start,
            sl[1].start,
            y + sl[0].stop,
            sl[1].stop,
            (y + int(seeds[i]) // width, int(seeds[i]) % width),
            float(pmax[i]),
            float(psum[i]),
        )
        for i, sl in enumerate(ndimage.find_objects(labels))
    ]


def _seam_links(above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """``(k, 2)`` pairs ``(above value, below value)`` of 8-neighbouring non-zero pixels of two
    adjacent rows."""
    width = len(above)
    pairs = []
    for dx in (-1, 0, 1):
        a = above[max(0, -dx) : width - max(0, dx)]
        b = below[max(0, dx) : width - max(0, -dx)]
        hit = (a > 0) & (b > 0)
        pairs.append(np.stack([a[hit], b[hit]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


class PieceTracker:
    """The pieces of a mask streamed top to bottom, in memory bounded by the open pieces.

    Each band is labelled on its own and its pieces are joined to the open pieces (those
    reaching the previous band's last row) across the seam with a small union-find. A piece
    that does not reach the newest row is finished: it is counted and only the ``keep``
    largest are kept (``finish`` returns them, largest first).
    """

    def __init__(self, width: int, keep: int = MAX_PIECES) -> None:
        self.width, self.keep = width, keep
        self.open: list[Piece] = []
        self.last = np.zeros(width, np.int64)  # per column of the last row: open index + 1
        self.top = 0
        self.count = 0
        self.pixels = 0
        self._largest: list[tuple[int, int, Piece]] = []  # min-heap on (area, -raster seed)

    def add(self, mask: np.ndarray, prob: np.ndarray) -> None:
        """The next rows of the mask and their probabilities."""
        from scipy import ndimage

        y, self.top = self.top, self.top + len(mask)
        if not len(mask):
            return
        labels, n = ndimage.label(mask, structure=EIGHT)
        pieces = self.open + _band_pieces(labels, n, prob, y)
        m = len(self.open)
        parent = list(range(len(pieces)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, b in _seam_links(self.last, labels[0]):
            ra, rb = find(int(a) - 1), find(m + int(b) - 1)
            parent[max(ra, rb)] = min(ra, rb)
        joined: dict[int, Piece] = {}
        for i, piece in enumerate(pieces):
            r = find(i)
            joined[r] = joined[r].joined(piece) if r in joined else piece
        bottom = [int(b) for b in np.unique(labels[-1]) if b]
        roots = sorted({find(m + b - 1) for b in bottom})
        index = {r: k for k, r in enumerate(roots)}
        self._finish([p for r, p in joined.items() if r not in index])
        self.open = [joined[r] for r in roots]
        lut = np.zeros(n + 1, np.int64)
        for b in bottom:
            lut[b] = index[find(m + b - 1)] + 1
        self.last = lut[labels[-1]]

    def _finish(self, pieces: list[Piece]) -> None:
        for piece in pieces:
            self.count += 1
            self.pixels += piece.area
            item = (piece.area, -(piece.seed[0] * self.width + piece.seed[1]), piece)
            if len(self._largest) < self.keep:
                heapq.heappush(self._largest, item)
            elif item[:2] > self._largest[0][:2]:
                heapq.heapreplace(self._largest, item)

    def finish(self) -> list[Piece]:
        """Every piece is done: the ``keep`` largest, largest first (ties: raster order)."""
        self._finish(self.open)
        self.open, self.last = [], np.zeros(self.width, np.int64)
        return [p for _, _, p in sorted(self._largest, key=lambda t: t[:2], reverse=True)]


# --------------------------------------------------------------------------------------------
# the mask on disk, and reduced maps


def block_max(a: np.ndarray, f: int) -> np.ndarray:
    """``a`` (2-D) reduced to the maxima of its ``f`` x ``f`` blocks (``ceil`` of each side;
    the blocks past the edge are padded with zeros)."""
    if f == 1:
        return a
    h, w = a.shape
    padded = np.zeros((math.ceil(h / f) * f, math.ceil(w / f) * f), a.dtype)
    padded[:h, :w] = a
    return padded.reshape(len(padded) // f, f, -1, f).max(axis=(1, 3))


class BlockMaxRows:
    """Rows streamed top to bottom reduced by ``block_max`` as they come."""

    def __init__(self, width: int, f: int, dtype: Any) -> None:
        self.f = f
        self.pending = np.zeros((0, width), dtype)
        self.rows: list[np.ndarray] = []

    def add(self, rows: np.ndarray) -> None:
        data = np.concatenate([self.pending, rows])
        full = len(data) // self.f * self.f
        if full:
            self.rows.append(block_max(data[:full], self.f))
        self.pending = data[full:]

    def result(self) -> np.ndarray:
        if len(self.pending):
            self.rows.append(block_max(self.pending, self.f))
            self.pending = self.pending[:0]
        return np.concatenate(self.rows)


class PackedMask:
    """The mask in a binary file, one bit a pixel, row after row; read back as crops."""

    def __init__(self, stream: BinaryIO, width: int) -> None:
        self.stream, self.width = stream, width
        self.row_bytes = (width + 7) // 8
        self.rows = 0

    def write(self, mask: np.ndarray) -> None:
        self.stream.seek(self.rows * self.row_bytes)
        self.stream.write(np.packbits(mask, axis=1).tobytes())
        self.rows += len(mask)

    def crop(self, y0: int, y1: int, x0: int, x1: int, f: int = 1) -> np.ndarray:
        """Rows ``[y0, y1)`` x columns ``[x0, x1)``, reduced by ``block_max(., f)``; read ``f``
        rows at a time in slices, so memory holds about the (reduced) crop."""
        b0, b1 = x0 // 8, (x1 + 7) // 8
        step = f * max(1, 256 // f)
        parts = []
        for r in range(y0, y1, step):
            n = min(step, y1 - r)
            self.stream.seek(r * self.row_bytes)
            raw = np.frombuffer(self.stream.read(n * self.row_bytes), np.uint8)
            bits = np.unpackbits(raw.reshape(n, self.row_bytes)[:, b0:b1], axis=1)
            parts.append(block_max(bits[:, x0 - 8 * b0 : x1 - 8 * b0].astype(bool), f))
        return np.concatenate(parts)


# --------------------------------------------------------------------------------------------
# scanning


@dataclass
class SegmentScanResult:
    """What ``scan_segment_image`` found and wrote.

    Attributes:
        path: the image scanned; ``width``/``height`` its size.
        tile, stride: window and step in px; ``n_tiles`` the windows run.
        threshold: the checkpoint's pixel threshold; ``min_area`` the piece area applied, in
            image pixels; ``positive`` the class mapped.
        crack_pixels: pixels of the mask; ``crack_fraction`` their share of the image.
        pieces: the mask's 8-connected pieces; ``regions`` the ``MAX_PIECES`` largest.
        widths: ``fracturekit.masks.crack_totals`` of the measured pieces (no ``rows``).
        probability: the pixel probability reduced by block maxima, ``scale`` image px per
            map px; ``mask`` the mask reduced the same way (the overlay's).
        band_rows: the most rows of weighted sums held; ``held_rows`` the most mask rows held
            back by ``min_area``.
        files: output name -> path; ``streamed``: how pixels were read; ``seconds``: wall time.
    """

    path: Path
    width: int
    height: int
    tile: int
    stride: int
    n_tiles: int
    threshold: float
    min_area: float
    positive: str
    crack_pixels: int
    crack_fraction: float
    pieces: int
    regions: list[dict[str, Any]]
    widths: dict[str, Any]
    probability: np.ndarray
    mask: np.ndarray
    scale: int
    band_rows: int = 0
    held_rows: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    streamed: str = ""
    seconds: float = 0.0
    px_per_mm: float | None = None
    task: str = "segment"


class _Streams:
    """Where the stitched rows go: the piece filter, mask.png, the 1-bit copy, the pieces,
    the reduced maps and the thumbnail."""

    def __init__(self, source: RowSource, threshold: float, min_area: float, bits: BinaryIO):
        width = source.width
        self.source = source
        self.thumb = Thumbnail(width, source.height, source.channels)
        self.filter = PieceFilter(width, threshold, min_area)
        self.packed = PackedMask(bits, width)
        self.tracker = PieceTracker(width)
        self.prob_map = BlockMaxRows(width, self.thumb.f, np.float32)
        self.mask_map = BlockMaxRows(width, self.thumb.f, bool)

    def totals(self) -> dict[str, Any]:
        """The ``SegmentScanResult`` fields the streams hold, once every row went through."""
        pixels = self.tracker.pixels
        return {
            "crack_pixels": pixels,
            "crack_fraction": pixels / float(self.source.width * self.source.height),
            "pieces": self.tracker.count,
            "probability": self.prob_map.result(),
            "mask": self.mask_map.result(),
            "scale": self.thumb.f,
            "held_rows": self.filter.peak_rows,
        }

    def add(self, prob: np.ndarray, last: bool, png: MaskPngWriter) -> None:
        self.prob_map.add(prob)
        mask, kept_prob = self.filter.push(prob, last)
        if len(mask):
            png.write(mask)
            self.packed.write(mask)
            self.tracker.add(mask, kept_prob)
            self.mask_map.add(mask)


def _stream_mask(
    predictor: Any,
    streams: _Streams,
    tmp: Path,
    *,
    tile: int,
    stride: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
    band: BandBuffer,
) -> None:
    """The one pass over the image: stitch, decide and write ``mask.png`` to ``tmp``."""
    source = streams.source
    window = RowWindow(source, streams.thumb.add)
    with open(tmp, "wb") as fh:
        png = MaskPngWriter(fh, source.width, source.height)
        rows = stitched_rows(
            predictor,
            window,
            band,
            source.width,
            source.height,
            tile=tile,
            stride=stride,
            batch_size=batch_size,
            progress=progress,
        )
        for y, prob in rows:
            streams.add(prob, y + len(prob) == source.height, png)
        window.drain()
        png.close()


def scan_segment_image(
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
) -> SegmentScanResult:
    """Scan a large image with a segmenter into a full-resolution mask, pieces and widths.

    Args:
        predictor: a segmentation ``Predictor`` (``task == "segment"``).
        path: the image (tiled/striped TIFF, BMP and PGM/PPM are streamed).
        tile: window size in image px (default: the model's input size, native resolution).
        stride: step between windows (default ``tile // 2``).
        batch_size: windows per forward pass.
        out: output folder (created).
        max_pixels: the largest image accepted (see ``fracturekit.io.open_rows``).
        overwrite: replace existing output files; otherwise an existing one is an error.
        progress: called with ``(windows done, windows in all)`` after each batch.
        px_per_mm: image scale; adds the mm columns to widths.csv and the totals.

    Returns:
        A ``SegmentScanResult``; the files are listed in the module docstring.

    Raises:
        ImageReadError: the image cannot be read or is over the pixel limit.
        ValueError: bad tile, stride, batch size or scale.
        FileExistsError: an output file exists and ``overwrite`` is false.
    """
    started = time.perf_counter()
    tile, stride, threshold, min_area = _settings(predictor, tile, stride, batch_size, px_per_mm)
    out = Path(out)
    files = output_files(out, SEGMENT_OUTPUT_FILES, overwrite)
    source = open_rows(path, channels=predictor.in_chans, max_pixels=max_pixels)
    out.mkdir(parents=True, exist_ok=True)
    band = BandBuffer(source.width, min(tile, source.height))
    with tempfile.TemporaryFile(dir=out) as bits:
        streams = _Streams(source, threshold, min_area, bits)
        settings = {"tile": tile, "stride": stride, "batch_size": batch_size, "band": band}
        atomic_write(
            files["mask.png"],
            lambda tmp: _stream_mask(predictor, streams, tmp, progress=progress, **settings),
        )
        regions, width_rows, cracks = _describe_pieces(
            streams.tracker.finish(), streams.packed, px_per_mm
        )
    result = SegmentScanResult(
        path=Path(path),
        width=source.width,
        height=source.height,
        tile=tile,
        stride=stride,
        n_tiles=len(tile_positions(source.width, tile, stride))
        * len(tile_positions(source.height, tile, stride)),
        threshold=threshold,
        min_area=min_area,
        positive=_positive_name(predictor),
        regions=regions,
        widths={k: v for k, v in crack_totals(cracks, px_per_mm=px_per_mm).items() if k != "rows"},
        band_rows=band.peak_rows,
        **streams.totals(),
        files=files,
        streamed=source.streamed,
        px_per_mm=px_per_mm,
    )
    _overlay_png(streams.thumb.image(), result.mask, files["overlay.png"])
    write_map(result.probability, files["probability.png"], files["probability.npy"])
    _write_widths(width_rows, px_per_mm, files["widths.csv"])
    result.seconds = time.perf_counter() - started
    _write_summary(result)
    return result


def _settings(
    predictor: Any, tile: int | None, stride: int | None, batch_size: int, px_per_mm: float | None
) -> tuple[int, int, float, float]:
    """``(tile, stride, threshold, min_area in image px)``, the arguments checked."""
    tile, stride, threshold = scan_settings(predictor, tile, stride, batch_size)
    if px_per_mm is not None and not (math.isfinite(px_per_mm) and px_per_mm > 0):
        raise ValueError(f"px_per_mm={px_per_mm}: must be a positive number")
    # min_area is counted at img_size x img_size; a window of `tile` px is seen at img_size.
    min_area = float(predictor.min_area) * (tile / float(predictor.img_size)) ** 2
    return tile, stride, threshold, min_area


def _positive_name(predictor: Any) -> str:
    return str(predictor.positive or predictor.classes[-1])


# --------------------------------------------------------------------------------------------
# pieces, pictures and files


def _crop_factor(piece: Piece) -> int:
    """1 when the piece's box fits ``MAX_CROP_PX`` and its pixels ``MAX_CROP_AREA``, else the
    smallest factor that makes both fit (a thin crack across a large box stays at full
    resolution; a filled region is reduced)."""
    box = (piece.y1 - piece.y0 + 2) * (piece.x1 - piece.x0 + 2)
    f = 1
    while box > MAX_CROP_PX * f * f or piece.area > MAX_CROP_AREA * f * f:
        f += 1
    return f


def _piece_crop(piece: Piece, packed: PackedMask, height: int) -> tuple[np.ndarray, int, int]:
    """The piece alone on its box (plus one reduced pixel of margin, within the image):
    ``(mask, x, y)`` with ``(x, y)`` the crop's top-left image pixel."""
    from scipy import ndimage

    f = _crop_factor(piece)
    y0, x0 = max(0, piece.y0 - f), max(0, piece.x0 - f)
    y1, x1 = min(height, piece.y1 + f), min(packed.width, piece.x1 + f)
    # Whole reduced pixels from (x0, y0), so the seed falls in the right one.
    crop = packed.crop(y0, y1, x0, x1, f)
    labels, _ = ndimage.label(crop, structure=EIGHT)
    sy, sx = piece.seed
    return labels == labels[(sy - y0) // f, (sx - x0) // f], x0, y0


def _measure_piece(own: np.ndarray, f: int, px_per_mm: float | None) -> CrackMeasurement | None:
    """The widths and length of one isolated piece measured at ``1 / f`` resolution, in image
    pixels (None below ``MEASURE_MIN_AREA``)."""
    cracks = measure_mask(
        own,
        px_per_mm=None if px_per_mm is None else px_per_mm / f,
        min_area=max(1, math.ceil(MEASURE_MIN_AREA / f**2)),
    )
    if not cracks:
        return None
    m = max(cracks, key=lambda c: c.area_px)
    if f > 1:  # reduced pixels -> image pixels (the mm values were measured at the right scale)
        m.length_px *= f
        m.widths_px = m.widths_px * f
        for name in ("mean_width_px", "median_width_px", "max_width_px", "p95_width_px"):
            setattr(m, name, getattr(m, name) * f)
    return m


def _describe_pieces(
    pieces: list[Piece], packed: PackedMask, px_per_mm: float | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[CrackMeasurement]]:
    """Outline and measure the listed pieces: the regions, the widths.csv rows and the
    measurements."""
    regions, rows, cracks = [], [], []
    for k, piece in enumerate(pieces, start=1):
        f = _crop_factor(piece)
        own, x, y = _piece_crop(piece, packed, packed.rows)
        outline = mask_polygons(own, offset=(x, y), scale=f, limit=1)
        regions.append(
            {
                "id": k,
                "polygon": outline[0]["polygon"] if outline else [],
                "bbox": [piece.x0, piece.y0, piece.x1, piece.y1],
                "area_px": piece.area,
                "max_probability": round(piece.max_probability, 6),
                "mean_probability": round(piece.probability_sum / piece.area, 6),
                "scale": f,
            }
        )
        m = _measure_piece(own, f, px_per_mm)
        if m is not None:
            row = m.row("")
            row.pop("image", None)
            row.pop("crack", None)
            rows.append({"piece": k, **row, "scale": f})
            cracks.append(m)
    return regions, rows, cracks


def _write_widths(rows: list[dict[str, Any]], px_per_mm: float | None, path: Path) -> None:
    columns = ["piece", *WIDTH_COLUMNS[2:], *(MM_COLUMNS if px_per_mm else ()), "scale"]
    buf = _stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _overlay_png(thumb: np.ndarray, mask: np.ndarray, path: Path) -> Path:
    """The thumbnail with the (reduced) mask drawn in ``MASK_COLOUR``."""
    from PIL import Image

    rgb = (np.repeat(thumb, 3, axis=2) if thumb.shape[2] == 1 else thumb).astype(np.float32)
    a = 0.65 * mask[: rgb.shape[0], : rgb.shape[1], None].astype(np.float32)
    blend = (1 - a) * rgb + a * np.asarray(MASK_COLOUR, np.float32)
    image = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _write_summary(result: SegmentScanResult) -> None:
    """regions.json: the scan's settings, totals and the listed pieces."""
    summary = {
        "image": str(result.path),
        "task": result.task,
        "width": result.width,
        "height": result.height,
        "tile": result.tile,
        "stride": result.stride,
        "n_tiles": result.n_tiles,
        "positive": result.positive,
        "threshold": result.threshold,
        "min_area_px": round(result.min_area, 3),
        "crack_pixels": result.crack_pixels,
        "crack_fraction": round(result.crack_fraction, 8),
        "max_probability": round(float(result.probability.max()), 6),
        "map_scale": result.scale,
        "map_shape": list(result.probability.shape),
        "map_reduction": "max",
        "pieces": result.pieces,
        "regions_listed": len(result.regions),
        "px_per_mm": result.px_per_mm,
        "widths": result.widths,
        "streamed": result.streamed,
        "seconds": round(result.seconds, 3),
        "regions": result.regions,
    }
    atomic_write_text(result.files["regions.json"], json.dumps(summary, indent=2) + "\n")
