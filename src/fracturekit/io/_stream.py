"""Streaming readers: an image read top to bottom in bands of rows, for scanning large images.

Rows are read in bands, so memory holds a band at a time:

* TIFF (tiled or striped; uncompressed, Deflate, LZW, PackBits, anything ``tifffile`` decodes
  without extra codecs): read strip by strip or one row of tiles at a time; uncompressed
  contiguous files are memory-mapped. 8-bit, 16-bit, float, grayscale, RGB and RGBA.
* BMP (uncompressed 8-bit palette, 24- and 32-bit) and binary PGM/PPM (8 and 16 bit):
  memory-mapped.
* Everything else (JPEG, PNG, WebP, DICOM, compressed BMP, JPEG-compressed TIFF, TIFFs with an
  orientation tag) is decoded whole by :func:`fracturekit.io.read_image`, allowed up to
  ``DECODE_MAX_PIXELS`` (250 megapixels, about 750 MB of RGB) unless ``max_pixels`` says
  otherwise.

Pixel values follow the package's rules with the same formula (:mod:`fracturekit.io._convert`):
16-bit and float data are stretched linearly from the image's own minimum to its maximum (found
in a first streaming pass), alpha is composited onto black.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fracturekit.io._convert import stretch_chunk, value_range
from fracturekit.io._header import ImageReadError, image_signature, read_head
from fracturekit.io._read import read_image

SCAN_MAX_PIXELS = 4_000_000_000  # streamed formats: memory stays bounded, only time grows
DECODE_MAX_PIXELS = 250_000_000  # formats decoded whole: ~750 MB of RGB at this size
BAND_ROWS = 256  # rows per read from memory-mapped files
MAX_SEGMENT_BYTES = 64 * 1024 * 1024  # one TIFF strip/tile row larger than this is refused
SEGMENT_READ_BYTES = 8 * 1024 * 1024  # compressed TIFF bytes read at once (tifffile: 256 MB)
HEAD_BYTES = 4096  # enough for a BMP palette header and a PNM header with comments


@dataclass
class RowSource:
    """An image read top to bottom in bands of rows.

    Attributes:
        path: the file.
        width, height: size in pixels.
        channels: 1 (gray) or 3 (RGB) in the bands given out.
        streamed: how the pixels are read (``tiff``, ``memmap`` or ``decoded``).
        bands: returns a fresh iterator of ``(rows, width, channels)`` uint8 bands covering the
            image top to bottom.
    """

    path: Path
    width: int
    height: int
    channels: int
    streamed: str
    bands: Callable[[], Iterator[np.ndarray]]


def _to_uint8(band: np.ndarray, lo: float, hi: float, alpha: bool) -> np.ndarray:
    """One raw band ``(h, w, c)`` to uint8 by ``fracturekit.io``'s rules."""
    if alpha:
        colour, a = band[..., :-1], band[..., -1:]
    else:
        colour, a = band, None
    if band.dtype != np.uint8:
        # The whole decode's formula, so the bytes match ``read_image``.
        colour = stretch_chunk(colour, lo, hi)
        if a is not None:
            a = stretch_chunk(a, lo, hi)
    if a is not None:  # composite onto black, as for RGBA/LA images
        colour = ((colour.astype(np.uint32) * a + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(colour)


def _stretched(
    raw: Callable[[], Iterator[np.ndarray]], alpha: bool
) -> Callable[[], Iterator[np.ndarray]]:
    """Bands converted to uint8; non-8-bit data need the image's range first (one extra pass)."""
    state: dict[str, float] = {}

    def bands() -> Iterator[np.ndarray]:
        it = raw()
        first = next(it, None)
        if first is None:
            return
        if first.dtype != np.uint8 and "lo" not in state:
            colour = (band[..., :-1] if alpha else band for band in _chain(first, it))
            state["lo"], state["hi"] = value_range(colour)
            it = raw()
            first = next(it)
        for band in _chain(first, it):
            yield _to_uint8(band, state.get("lo", 0.0), state.get("hi", 0.0), alpha)

    return bands


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _memmap_bands(
    array: np.ndarray, flip: bool, lut: np.ndarray | None = None
) -> Callable[[], Iterator[np.ndarray]]:
    """Bands of a memory-mapped ``(rows, width, samples)`` array; ``flip``: stored bottom-up."""
    height = array.shape[0]

    def bands() -> Iterator[np.ndarray]:
        for y0 in range(0, height, BAND_ROWS):
            y1 = min(y0 + BAND_ROWS, height)
            band = array[height - y1 : height - y0][::-1] if flip else array[y0:y1]
            band = np.array(band)  # copy out of the map: the pages can then be dropped
            if lut is not None:
                band = lut[band[..., 0]]
            yield band

    return bands


def _check_limit(path: Path, width: int, height: int, limit: int | None) -> None:
    if limit and width * height > limit:
        raise ImageReadError(
            path,
            f"image is {width}x{height}, over the scan limit of {limit / 1e6:g} megapixels "
            "(raise it with max_pixels / --max-pixels)",
            kind="too_large",
        )


def _open_tiff(path: Path, limit: int | None) -> RowSource | None:
    """A streamed TIFF, or None when ``tifffile`` cannot stream it (then it is decoded whole)."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: PIL gets its chance
        return None
    try:
        page = tif.pages.first
        orientation = page.tags.get(274)
        samples = int(page.samplesperpixel)
        photometric = int(page.photometric)
        if (
            (orientation is not None and int(orientation.value) != 1)
            or page.is_subsampled
            or (samples > 1 and int(page.planarconfig) != 1)
            or photometric not in (1, 2)  # MINISBLACK, RGB (others: PIL's conversions)
            or samples not in (1, 2, 3, 4)
            or (photometric == 2 and samples < 3)
            or page.imagedepth != 1
            or page.bitspersample not in (8, 16, 32, 64)
        ):
            return None
        height, width = int(page.imagelength), int(page.imagewidth)
        _check_limit(path, width, height, limit)
        colour = 3 if photometric == 2 else 1
        alpha = samples > colour
        if page.is_memmappable:
            tif.close()
            array = tifffile.memmap(path, page=0, mode="r")
            array = array.reshape(height, width, samples)
            return RowSource(
                path,
                width,
                height,
                colour,
                "memmap",
                _stretched(_memmap_bands(array, flip=False), alpha),
            )
        segment_rows = int(page.tilelength) if page.is_tiled else int(page.rowsperstrip)
        itemsize = np.dtype(page.dtype).itemsize
        if min(segment_rows, height) * width * samples * itemsize > MAX_SEGMENT_BYTES:
            raise ImageReadError(
                path,
                f"one TIFF strip holds {min(segment_rows, height)} rows of {width} px: too "
                "large to stream; re-save it tiled (e.g. vips tiffsave in.tif out.tif --tile)",
                kind="too_large",
            )
        # Decode one segment now: a codec tifffile lacks (JPEG, WebP...) shows up here.
        next(iter(page.segments(maxworkers=1, buffersize=SEGMENT_READ_BYTES)))
    except ImageReadError:
        tif.close()
        raise
    except Exception:  # noqa: BLE001 - unsupported layout or codec: decode whole instead
        tif.close()
        return None
    tif.close()
    return RowSource(
        path, width, height, colour, "tiff", _stretched(_tiff_bands(path, samples), alpha)
    )


def _tiff_bands(path: Path, samples: int) -> Callable[[], Iterator[np.ndarray]]:
    """Raw bands of a tiled or striped TIFF: one strip, or one row of tiles, at a time."""

    def bands() -> Iterator[np.ndarray]:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            height, width = int(page.imagelength), int(page.imagewidth)
            dtype = np.dtype(page.dtype)
            band: np.ndarray | None = None
            band_y = -1
            for data, index, shape in page.segments(maxworkers=1, buffersize=SEGMENT_READ_BYTES):
                y, x = int(index[-3]), int(index[-2])
                rows = min(int(shape[-3]), height - y)
                if y != band_y:
                    if band is not None:
                        yield band
                    band = np.zeros((rows, width, samples), dtype=dtype)
                    band_y = y
                if data is None:  # an empty segment: no data stored, zeros
                    continue
                cols = min(int(shape[-2]), width - x)
                seg = np.asarray(data).reshape(shape[-3], shape[-2], -1)
                band[:, x : x + cols] = seg[:rows, :cols, :samples]
            if band is not None:
                yield band

    return bands


def _open_bmp(path: Path, head: bytes, limit: int | None) -> RowSource | None:
    """An uncompressed BMP (8-bit palette, 24- or 32-bit) as a memory map, else None."""
    if len(head) < 54 or head[:2] != b"BM":
        return None
    offset = struct.unpack_from("<I", head, 10)[0]
    header_size = struct.unpack_from("<I", head, 14)[0]
    if header_size < 40:
        return None
    width, height, _planes, bits, compression, _size, _xr, _yr, used = struct.unpack_from(
        "<iiHHIIiiI", head, 18
    )
    if width <= 0 or height == 0 or compression != 0 or bits not in (8, 24, 32):
        return None
    top_down = height < 0
    height = abs(height)
    _check_limit(path, width, height, limit)
    row_bytes = ((width * bits + 31) // 32) * 4
    with open(path, "rb") as fp:
        if fp.seek(0, 2) < offset + row_bytes * height:
            raise ImageReadError(
                path, "BMP file is shorter than its header says (truncated)", kind="truncated"
            )
        fp.seek(14 + header_size)
        palette_raw = fp.read(4 * ((used or 256) if bits == 8 else 0))
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(height, row_bytes))
    lut = None
    if bits == 8:
        pal = np.frombuffer(palette_raw, dtype=np.uint8).reshape(-1, 4)[:, 2::-1]  # BGRX->RGB
        pal = np.vstack([pal, np.zeros((256 - len(pal), 3), np.uint8)])
        gray = bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())
        lut = pal[:, :1] if gray else pal
        pixels = raw[:, :width].reshape(height, width, 1)
        channels = 1 if gray else 3
    else:
        step = bits // 8
        pixels = raw[:, : width * step].reshape(height, width, step)[..., 2::-1]  # BGR->RGB
        channels = 3
    return RowSource(
        path, width, height, channels, "memmap", _memmap_bands(pixels, not top_down, lut)
    )


def _open_pnm(path: Path, head: bytes, limit: int | None) -> RowSource | None:
    """A binary PGM (P5) or PPM (P6), 8 or 16 bit, as a memory map, else None."""
    if head[:2] not in (b"P5", b"P6"):
        return None
    fields: list[int] = []
    pos = 2
    while len(fields) < 3:
        while pos < len(head) and head[pos : pos + 1].isspace():
            pos += 1
        if head[pos : pos + 1] == b"#":
            pos = head.find(b"\n", pos)
            if pos < 0:
                return None
            continue
        start = pos
        while pos < len(head) and head[pos : pos + 1].isdigit():
            pos += 1
        if start == pos:
            return None
        fields.append(int(head[start:pos]))
    pos += 1  # the single whitespace after maxval
    width, height, maxval = fields
    _check_limit(path, width, height, limit)
    channels = 3 if head[:2] == b"P6" else 1
    dtype = np.dtype(np.uint8) if maxval < 256 else np.dtype(">u2")
    with open(path, "rb") as fp:
        if fp.seek(0, 2) < pos + width * height * channels * dtype.itemsize:
            raise ImageReadError(
                path, "PNM file is shorter than its header says (truncated)", kind="truncated"
            )
    array = np.memmap(path, dtype=dtype, mode="r", offset=pos, shape=(height, width, channels))
    return RowSource(
        path, width, height, channels, "memmap", _stretched(_memmap_bands(array, False), False)
    )


def _decoded(path: Path, channels: int, max_pixels: int) -> RowSource:
    image = read_image(path, channels=channels, max_pixels=max_pixels)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    return RowSource(
        path,
        image.width,
        image.height,
        array.shape[2],
        "decoded",
        _memmap_bands(array, flip=False),
    )


def open_rows(path: str | Path, *, channels: int = 3, max_pixels: int | None = None) -> RowSource:
    """Open an image for reading in bands of rows (streamed where the format allows).

    Args:
        path: the image.
        channels: for images decoded whole: 1 or 3 (streamed ones keep their own and are
            converted per tile).
        max_pixels: the largest image accepted; default ``SCAN_MAX_PIXELS`` for streamed
            formats and ``DECODE_MAX_PIXELS`` for those decoded whole.

    Raises:
        ImageReadError: missing, unreadable, truncated or over the pixel limit.
    """
    path = Path(path)
    head = read_head(path, path, HEAD_BYTES)
    source = None
    limit = SCAN_MAX_PIXELS if max_pixels is None else max_pixels
    kind = image_signature(head)
    if kind == "tiff":
        source = _open_tiff(path, limit)
    elif kind == "bmp":
        source = _open_bmp(path, head, limit)
    elif kind == "pnm":
        source = _open_pnm(path, head, limit)
    if source is not None:
        return source
    limit = DECODE_MAX_PIXELS if max_pixels is None else max_pixels
    return _decoded(path, channels, limit)
