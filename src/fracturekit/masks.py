"""What a predicted crack/fracture mask says, in one place for every command.

``predict``, ``scan``, ``serve`` and ``width`` all turn a segmenter's binary mask into the same
three things: the share of the image it covers (``crack_fraction``), its pieces outlined as
polygons in image pixels (``mask_polygons``) and the widths and lengths of its cracks
(``width_summary``, over ``fracturekit.width.measure_mask``; ``crack_totals`` of cracks
measured one at a time). Also the piece filter every segmenter decision uses
(``drop_small_pieces``) and the mask file format (``mask_png``: 0/255, 8-bit, the image's size;
``MaskPngWriter`` writes the same file row by row, for masks too large to hold). numpy, scipy
and scikit-image only.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:  # the width code (scipy, scikit-image) loads on first use
    from fracturekit.width import CrackMeasurement

__all__ = [
    "MaskPngWriter",
    "crack_fraction",
    "crack_totals",
    "drop_small_pieces",
    "image_is_positive",
    "mask_png",
    "mask_polygons",
    "segment_image_score",
    "width_summary",
]


def crack_fraction(mask: np.ndarray) -> float:
    """The share of the mask's pixels that are crack (0 for an empty array)."""
    mask = np.asarray(mask)
    return float(np.count_nonzero(mask)) / mask.size if mask.size else 0.0


def drop_small_pieces(mask: np.ndarray, min_area: float) -> np.ndarray:
    """``mask`` without its 8-connected pieces of fewer than ``min_area`` pixels."""
    from scipy import ndimage

    if min_area <= 1 or not mask.any():
        return mask
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def mask_png(mask: np.ndarray) -> bytes:
    """A mask as PNG bytes: 8-bit grey, 255 for crack, 0 elsewhere, the mask's size."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8)).save(
        buf, format="PNG", optimize=False, compress_level=6
    )
    return buf.getvalue()


class MaskPngWriter:
    """``mask_png``'s format written row by row: memory holds one band, never the whole mask.

    PIL encodes a PNG from a whole image only; a 20,000 x 20,000 mask is 400 MB as bytes. This
    writes the PNG chunks itself (8-bit grey, no interlace, filter type 0 on every row) and
    feeds the rows through one ``zlib`` stream, so the file decodes exactly as ``mask_png`` of
    the whole mask would.

    Example::

        with open(path, "wb") as fh:
            png = MaskPngWriter(fh, width, height)
            for band in bands:  # (rows, width) bool, top to bottom
                png.write(band)
            png.close()
    """

    CHUNK_BYTES = 1 << 16  # compressed bytes gathered into one IDAT chunk

    def __init__(self, stream: BinaryIO, width: int, height: int, level: int = 6) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"a PNG needs at least one pixel, got {width} x {height}")
        self.stream, self.width, self.height = stream, int(width), int(height)
        self.rows = 0
        self._z = zlib.compressobj(level)
        self._pending = bytearray()
        stream.write(b"\x89PNG\r\n\x1a\n")
        # IHDR: size, bit depth 8, colour type 0 (grey), deflate, adaptive filters, no interlace.
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 0, 0, 0, 0))

    def _chunk(self, kind: bytes, data: bytes) -> None:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        self.stream.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc))

    def _compressed(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= self.CHUNK_BYTES:
            self._chunk(b"IDAT", bytes(self._pending))
            self._pending.clear()

    def write(self, mask: np.ndarray) -> None:
        """The next rows: a ``(rows, width)`` array, true (or non-zero) for crack."""
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.shape[1] != self.width:
            raise ValueError(f"rows of width {self.width} expected, got shape {mask.shape}")
        if self.rows + len(mask) > self.height:
            raise ValueError(f"more than the {self.height} rows the PNG was opened for")
        raw = np.zeros((len(mask), self.width + 1), np.uint8)  # column 0: filter type 0
        raw[:, 1:][mask.astype(bool)] = 255
        self._compressed(self._z.compress(raw.tobytes()))
        self.rows += len(mask)

    def close(self) -> None:
        """Finish the file; every row must have been written."""
        if self.rows != self.height:
            raise ValueError(f"{self.rows} of {self.height} rows written")
        self._compressed(self._z.flush())
        if self._pending:
            self._chunk(b"IDAT", bytes(self._pending))
            self._pending.clear()
        self._chunk(b"IEND", b"")


def mask_polygons(
    mask: np.ndarray,
    *,
    tolerance: float = 1.0,
    min_area: int = 1,
    offset: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The mask's 8-connected pieces as outlines in image pixels, largest first.

    Args:
        mask: 2-D binary array.
        tolerance: polygon simplification tolerance in mask pixels
            (``skimage.measure.approximate_polygon``).
        min_area: pieces with fewer pixels are left out.
        offset: ``(x, y)`` added to every coordinate (a tile's position in a larger image).
        scale: image pixels per mask pixel (a mask computed on a reduced grid).
        limit: keep at most this many pieces (the largest).

    Returns:
        ``[{"id", "polygon": [[x, y], ...], "bbox": [x0, y0, x1, y1], "area_px"}]``; the
        outline is the piece's outer boundary (holes are not outlined), ``area_px`` counts image
        pixels.
    """
    from scipy import ndimage
    from skimage import measure

    binary = np.asarray(mask, bool)
    labels, _ = ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))
    pieces = []
    for label, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        piece = labels[sl] == label
        area = int(piece.sum())
        if area >= max(min_area, 1):
            pieces.append((area, sl, piece))
    pieces.sort(key=lambda p: -p[0])
    out = []
    ox, oy = offset
    for area, sl, piece in pieces[:limit]:
        contours = measure.find_contours(np.pad(piece.astype(np.float32), 1), 0.5)
        outline = max(contours, key=lambda c: len(c))
        poly = measure.approximate_polygon(outline, tolerance=tolerance)
        # Contour points are in padded piece coordinates; +0.5 puts them on pixel edges.
        ys = (poly[:, 0] - 1 + sl[0].start + 0.5) * scale + oy
        xs = (poly[:, 1] - 1 + sl[1].start + 0.5) * scale + ox
        out.append(
            {
                "id": len(out) + 1,
                "polygon": [
                    [round(float(x), 1), round(float(y), 1)] for x, y in zip(xs, ys, strict=True)
                ],
                "bbox": [
                    round(sl[1].start * scale + ox),
                    round(sl[0].start * scale + oy),
                    round(sl[1].stop * scale + ox),
                    round(sl[0].stop * scale + oy),
                ],
                "area_px": round(area * scale * scale),
            }
        )
    return out


def width_summary(
    mask: np.ndarray, *, px_per_mm: float | None = None, min_area: int = 10
) -> dict[str, Any]:
    """Widths and lengths of the mask's cracks (``fracturekit.width.measure_mask``).

    Returns:
        ``{"cracks": n, "length_px": total skeleton length, "mean_width_px": length-weighted
        mean over every profile point, "max_width_px", "rows": [the widths.csv row of each
        crack]}``, plus ``length_mm``, ``mean_width_mm``, ``max_width_mm`` with ``px_per_mm``.
        Widths are None when no crack is found.
    """
    from fracturekit.width import measure_mask

    cracks = measure_mask(np.asarray(mask, bool), px_per_mm=px_per_mm, min_area=min_area)
    return crack_totals(cracks, px_per_mm=px_per_mm)


def crack_totals(
    cracks: list[CrackMeasurement], *, px_per_mm: float | None = None
) -> dict[str, Any]:
    """``width_summary`` of cracks already measured (``fracturekit.width.measure_mask``), e.g.
    the pieces of a mask measured one at a time."""
    widths = [c.widths_px[np.isfinite(c.widths_px)] for c in cracks]
    finite = np.concatenate(widths) if widths else np.zeros(0)
    out: dict[str, Any] = {
        "cracks": len(cracks),
        "length_px": round(float(sum(c.length_px for c in cracks)), 2),
        "mean_width_px": round(float(finite.mean()), 3) if finite.size else None,
        "max_width_px": round(float(finite.max()), 3) if finite.size else None,
    }
    if px_per_mm is not None:
        for key in ("length", "mean_width", "max_width"):
            value = out[f"{key}_px"]
            out[f"{key}_mm"] = None if value is None else round(value / px_per_mm, 3)
    out["rows"] = [c.row("") for c in cracks]
    for row in out["rows"]:
        row.pop("image", None)
    return out


def image_is_positive(
    class_name: str | None, mask: np.ndarray | None, classes: Sequence[str], positive: str
) -> bool:
    """A segmenter's image-level truth: the image's class when it is one of the checkpoint's
    ``classes``, else (a folder of images without class folders) whether its mask is non-empty."""
    if class_name in classes:
        return class_name == positive
    return bool(mask is not None and mask.any())


def segment_image_score(prob: np.ndarray, kept: np.ndarray, threshold: float) -> float:
    """The image score of a segmenter, for ROC AUC and the image-level decision.

    The map's maximum probability, except when no predicted piece is large enough
    (``min_area``) to make the image positive: then at most just below ``threshold``. So
    ``score >= threshold`` is exactly the mask-area decision, and ROC AUC ranks images by their
    most probable pixel.
    """
    top = float(prob.max()) if prob.size else 0.0
    return top if kept.any() else min(top, float(np.nextafter(threshold, 0.0)))
