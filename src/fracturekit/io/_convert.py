"""Pixel conversions to 8 bits: the min..max stretch, alpha on black, EXIF transposes.

The stretch runs over bounded chunks of rows: its float64 working copies are a few megabytes
whatever the image's size, so converting a 16-bit image costs about its 8-bit output on top of
the 16-bit data, and every reader (whole decodes, DICOM, the streamed bands of ``scan``) gets
exactly the same bytes from the same formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: Values converted at once: float64 working copies of about 8 MB each.
CHUNK_VALUES = 1 << 20

# EXIF orientation -> PIL transpose, exactly the table of PIL.ImageOps.exif_transpose.
ORIENTATION_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}
_EXIF_ORIENTATION_TAG = 0x0112

Transform = Callable[[np.ndarray], np.ndarray]


def orient(image: PILImage.Image, orientation: int) -> PILImage.Image:
    """``image`` with the transpose of EXIF ``orientation`` applied (1: unchanged)."""
    from PIL import Image

    method = ORIENTATION_TRANSPOSE.get(orientation)
    return image.transpose(getattr(Image.Transpose, method)) if method else image


def exif_orientation_of(im: PILImage.Image) -> int:
    """The EXIF orientation an opened image declares (1 when none or malformed)."""
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF: nothing to apply
        return 1
    return value if value in ORIENTATION_TRANSPOSE else 1


# --------------------------------------------------------------------------------------------
# the min..max stretch


def row_step(values: np.ndarray) -> int:
    """Rows (first axis) per chunk of about :data:`CHUNK_VALUES` values."""
    per_row = math.prod(values.shape[1:]) if values.ndim > 1 else 1
    return max(1, CHUNK_VALUES // max(1, per_row))


def _chunks(values: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    step = row_step(values)
    for y in range(0, len(values), step):
        yield y, values[y : y + step]


def value_range(chunks: Iterable[np.ndarray]) -> tuple[float, float]:
    """Minimum and maximum over chunks (NaN counts as 0, as in the stretch); ``(0, 0)`` when
    there are no values."""
    lo, hi = math.inf, -math.inf
    for values in chunks:
        if values.dtype.kind == "f":
            values = np.nan_to_num(values)
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def stretch_chunk(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear ``lo..hi`` -> ``0..255`` (uint8, clipped); all zeros when ``hi <= lo``."""
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    x = values.astype(np.float64)  # the one working copy, updated in place
    if values.dtype.kind == "f":  # (its masks cost memory: only where NaN/inf can occur)
        np.nan_to_num(x, copy=False)
    x -= lo
    x *= 255.0 / (hi - lo)
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def stretch(values: np.ndarray, transform: Transform | None = None) -> np.ndarray:
    """``values`` (after ``transform``, applied per chunk) stretched from their own minimum to
    their maximum onto 0..255 (uint8); a constant array becomes zeros.

    Works on chunks of rows, so the extra memory is the uint8 output plus a few megabytes.
    """

    def transformed() -> Iterator[tuple[int, np.ndarray]]:
        for y, chunk in _chunks(values):
            yield y, (transform(chunk) if transform is not None else chunk)

    lo, hi = value_range(chunk for _, chunk in transformed())
    out = np.empty(values.shape, dtype=np.uint8)
    for y, chunk in transformed():
        out[y : y + len(chunk)] = stretch_chunk(chunk, lo, hi)
    return out


def map_chunks(values: np.ndarray, to_uint8: Transform) -> np.ndarray:
    """``to_uint8`` applied chunk by chunk into one uint8 array of ``values``' shape."""
    out = np.empty(values.shape, dtype=np.uint8)
    for y, chunk in _chunks(values):
        out[y : y + len(chunk)] = to_uint8(chunk)
    return out


def _pil_rows(im: PILImage.Image) -> Iterator[tuple[int, np.ndarray]]:
    """A loaded single-band image as numpy chunks of rows (crops, never one full copy)."""
    step = max(1, CHUNK_VALUES // max(1, im.width))
    for y in range(0, im.height, step):
        yield y, np.asarray(im.crop((0, y, im.width, min(y + step, im.height))))


def stretch_pil(im: PILImage.Image) -> PILImage.Image:
    """A high-bit-depth single-band image (``I;16*``, ``I``, ``F``) stretched onto an 8-bit
    ``L`` image, row chunk by row chunk: the extra memory is the output and a few megabytes."""
    from PIL import Image

    lo, hi = value_range(chunk for _, chunk in _pil_rows(im))
    out = Image.new("L", im.size, 0)
    for y, chunk in _pil_rows(im):
        out.paste(Image.fromarray(stretch_chunk(chunk, lo, hi), mode="L"), (0, y))
    return out


# --------------------------------------------------------------------------------------------
# modes


def rgb_image(arr: np.ndarray) -> PILImage.Image:
    """An ``(h, w, 3)`` uint8 array as a PIL ``RGB`` image."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def _composite_on_black(im: PILImage.Image) -> PILImage.Image:
    from PIL import Image

    base_mode = "L" if im.mode in ("LA", "La") else "RGB"
    colour = im.convert(base_mode)
    return Image.composite(colour, Image.new(base_mode, im.size, 0), im.getchannel("A"))


def to_8bit(im: PILImage.Image) -> PILImage.Image:
    """Any PIL mode -> 8-bit ``L`` or ``RGB`` by the package's rules."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        has_alpha = "transparency" in im.info
        return to_8bit(im.convert("RGBA" if has_alpha else "RGB"))
    if mode == "PA":
        return _composite_on_black(im.convert("RGBA"))
    if mode in ("RGBA", "RGBa", "LA", "La"):
        return _composite_on_black(im)
    if mode.startswith(("I", "F")):  # I;16*, I, F: high bit depth, stretch by actual range
        return stretch_pil(im)
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV
