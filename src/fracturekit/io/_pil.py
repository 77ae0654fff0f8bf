"""PIL decoding: the header read under our limits, the full decode, truncated files, 16-bit TIFF.

PIL identifies a file by its content, never its name. The decoded size is checked from the
header (pixels and stored bytes, see :func:`fracturekit.io._header.check_size`) before any
pixel is decoded.
"""

from __future__ import annotations

import io as _stdio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fracturekit.io._convert import exif_orientation_of, rgb_image, stretch, to_8bit
from fracturekit.io._header import DECODED_BYTES_PER_PIXEL, ImageReadError, check_size

if TYPE_CHECKING:
    from PIL import Image as PILImage

# --------------------------------------------------------------------------------------------
# PIL's process-wide switches, scoped


class _PilSwitches:
    """Flip PIL's module-level switches for one fracturekit decode without leaking the flip.

    ``ImageFile.LOAD_TRUNCATED_IMAGES`` and ``Image.MAX_IMAGE_PIXELS`` are globals that PIL
    reads while it opens or decodes. fracturekit decodes on thread pools, so flipping one for a
    single file would silently change how every concurrent decode behaves (a truncated file
    decoded at that moment would load without its warning). Ordinary decodes therefore hold this
    lock *shared*; the rare tolerant decode of a truncated file holds it *exclusively*, so no
    other fracturekit decode can observe ``LOAD_TRUNCATED_IMAGES = True``. Header reads, which
    run with ``MAX_IMAGE_PIXELS = None`` (our own limit replaces it), are additionally
    serialised by a mutex; they are fast (no pixel data is read).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._open_mutex = threading.Lock()

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()

    @contextmanager
    def header_read(self) -> Iterator[None]:
        """Shared, plus PIL's decompression-bomb check off (we apply our own limit)."""
        from PIL import Image

        with self.shared(), self._open_mutex:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = saved

    @contextmanager
    def truncated_decode(self) -> Iterator[None]:
        """Exclusive, with ``LOAD_TRUNCATED_IMAGES`` on for exactly this block."""
        from PIL import Image, ImageFile

        with self.exclusive():
            saved_truncated, saved_pixels = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            Image.MAX_IMAGE_PIXELS = None
            try:
                yield
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = saved_truncated
                Image.MAX_IMAGE_PIXELS = saved_pixels


SWITCHES = _PilSwitches()


# --------------------------------------------------------------------------------------------
# the header


def describe(exc: BaseException) -> str:
    """``"Type: message"`` of an exception, for error reasons."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_pil(source: Path | bytes, name: str, limit: int | None) -> PILImage.Image:
    """Open (header only) with our pixel limit and bytes budget instead of PIL's limit."""
    from PIL import Image, UnidentifiedImageError

    fp = _stdio.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with SWITCHES.header_read():
            im = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageReadError(
            name,
            "not a readable image: PIL cannot identify it (not an image file, or a corrupt "
            "header); DICOM files need the DICM preamble or a .dcm/.dicom name",
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted header is "corrupt"
        raise ImageReadError(name, f"corrupt image header ({describe(exc)})") from None
    try:
        samples, bytes_per_sample = _stored_layout(im)
        check_size(
            name, im.width, im.height, limit, samples=samples, bytes_per_sample=bytes_per_sample
        )
    except ImageReadError:
        im.close()
        raise
    return im


def _stored_layout(im: PILImage.Image) -> tuple[int, int]:
    """``(samples per pixel, bytes per sample)`` of what the decode will hold in memory."""
    from PIL import ImageMode

    if _is_rgb16_tiff(im):
        return int(im.tag_v2.get(277, 3)), 2  # SamplesPerPixel; tifffile keeps 16 bits
    try:
        mode = ImageMode.getmode(im.mode)
        return len(mode.bands), np.dtype(mode.typestr).itemsize
    except (KeyError, TypeError):  # a rare mode: count it as DECODED_BYTES_PER_PIXEL bytes
        return 1, DECODED_BYTES_PER_PIXEL


def _is_rgb16_tiff(im: PILImage.Image) -> bool:
    """A 16-bit-per-sample colour TIFF: PIL would keep only the high byte of each sample."""
    tile = getattr(im, "tile", None) or []
    if im.format != "TIFF" or not tile:
        return False
    args = tile[0].args
    rawmode = args[0] if isinstance(args, tuple) else str(args)
    return isinstance(rawmode, str) and rawmode.startswith(("RGB;16", "RGBA;16", "RGBX;16"))


def _read_rgb16_tiff(source: Path | bytes) -> PILImage.Image:
    """Full-depth colour TIFF via tifffile (a scikit-image dependency), stretched to 8 bits.

    The 16-bit array is dropped before the PIL image is made, so the peak is the 16-bit data
    plus its 8-bit copy.
    """
    import tifffile

    fp = _stdio.BytesIO(source) if isinstance(source, bytes) else source
    arr = np.asarray(tifffile.imread(fp, key=0))
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ValueError(f"unexpected colour TIFF layout {arr.shape}")
    out = stretch(arr[..., :3])
    del arr
    return rgb_image(out)


# --------------------------------------------------------------------------------------------
# the decode


def _is_truncation(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and "truncated" in str(exc).lower()


def decode_pil(source: Path | bytes, name: str, strict: bool, limit: int | None):
    """-> (8-bit L/RGB image, stored mode, format, orientation, warning or None)."""
    im = open_pil(source, name, limit)
    mode, fmt = im.mode, im.format or "unknown"
    orientation = exif_orientation_of(im)
    if _is_rgb16_tiff(im):
        im.close()
        try:
            return _read_rgb16_tiff(source), f"{mode};16", fmt, orientation, None
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(name, f"corrupt 16-bit TIFF ({describe(exc)})") from None
    warning = None
    try:
        with SWITCHES.shared():
            im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted data
        im.close()
        if not _is_truncation(exc):
            raise ImageReadError(name, f"corrupt image data ({describe(exc)})") from None
        if strict:
            raise ImageReadError(
                name, f"truncated file ({exc}); refused in strict mode", truncated=True
            ) from None
        # The tolerant decode: this one only, with LOAD_TRUNCATED_IMAGES on.
        im = open_pil(source, name, limit)
        try:
            with SWITCHES.truncated_decode():
                im.load()
        except Exception as exc2:  # noqa: BLE001
            im.close()
            raise ImageReadError(
                name, f"truncated and undecodable ({describe(exc2)})", kind="truncated"
            ) from None
        warning = f"truncated file ({exc}); loaded with the missing end filled in by the decoder"
    try:  # (no close() here: it would free the pixels just loaded; load() closed the file)
        out = to_8bit(im)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(name, f"cannot convert {mode} pixels ({describe(exc)})") from None
    return out, mode, fmt, orientation, warning
