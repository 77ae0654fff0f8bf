"""What is known before any pixel is decoded: the file's first bytes, its kind, the limits.

One header reader (:func:`read_head`) serves every decoder, whole or streamed; the kind of a
file is decided by its magic bytes (:func:`image_signature`, :func:`is_dicom`), never by its
name alone; the pixel limit and the decoded-bytes budget are checked here from the header.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "FRACTUREKIT_MAX_PIXELS"
#: The decoded-bytes budget is this many bytes per pixel of the pixel limit: what PIL holds for
#: an 8-bit RGB or RGBA image at the limit. Every 8-bit image, 16-bit grey and 32-bit grey are
#: bounded by the pixel limit alone; 16-bit RGB gets two thirds of it, 16-bit RGBA half.
DECODED_BYTES_PER_PIXEL = 4
HEAD_BYTES = 132  # up to the DICOM preamble's "DICM" at bytes 128-131

#: Extensions fracturekit treats as images when it lists a folder (lower case). Files without
#: an extension count too when they carry the DICOM preamble (see :func:`is_image_file`).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"}
)
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})

# Magic bytes at offset 0 -> format; one row a format. WebP is RIFF....WEBP (checked below).
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",  # BigTIFF
    b"MM\x00+": "tiff",
    b"BM": "bmp",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    **{f"P{i}".encode(): "pnm" for i in range(1, 8)},
}
# A DICOM data set without the 128-byte preamble starts with a group 0x0002 (file meta) or
# 0x0008 (identifying) element, little endian.
_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00")


#: What an :class:`ImageReadError` can say went wrong (its ``kind``), for programs to act on:
#: ``too_large`` over the pixel limit or the decoded-size budget (or too large to stream),
#: ``truncated`` the file ends early, ``missing`` no such file (or a folder), ``empty`` 0 bytes,
#: ``unreadable`` anything else (corrupt, not an image, an unsupported layout).
READ_ERROR_KINDS = ("unreadable", "missing", "empty", "too_large", "truncated")


class ImageReadError(ValueError):
    """An image (or mask) cannot be read. ``str()`` is ``"<path>: <reason>"``.

    Attributes:
        path: the file (or upload name).
        reason: what is wrong, for a person.
        kind: what is wrong, for a program: one of :data:`READ_ERROR_KINDS` (default
            ``unreadable``; ``truncated`` when ``truncated`` is set).
        truncated: refused only because strict mode refuses truncated files.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        *,
        kind: str | None = None,
        truncated: bool = False,
    ):
        kind = kind or ("truncated" if truncated else "unreadable")
        if kind not in READ_ERROR_KINDS:
            raise ValueError(f"kind={kind!r}: must be one of {', '.join(READ_ERROR_KINDS)}")
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        self.truncated = truncated
        super().__init__(f"{self.path}: {reason}")

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self):  # keep path/reason/kind when pickled across processes
        return (_rebuild_error, (self.path, self.reason, self.truncated, self.kind))


def _rebuild_error(
    path: str, reason: str, truncated: bool, kind: str | None = None
) -> ImageReadError:
    return ImageReadError(path, reason, kind=kind, truncated=truncated)


class ImageIssue(NamedTuple):
    """One file and what is wrong with it (a warning or an error)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# --------------------------------------------------------------------------------------------
# limits


def max_pixels_limit(max_pixels: int | None = None) -> int | None:
    """The pixel limit in force: ``max_pixels`` if given, else ``$FRACTUREKIT_MAX_PIXELS``, else
    100 megapixels. ``0`` (or a negative number) means no limit and is returned as ``None``."""
    if max_pixels is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if raw:
            try:
                max_pixels = int(float(raw))
            except ValueError:
                raise ValueError(
                    f"{MAX_PIXELS_ENV}={raw!r}: expected a number of pixels, e.g. 200000000"
                ) from None
        else:
            max_pixels = DEFAULT_MAX_PIXELS
    return max_pixels if max_pixels > 0 else None


def max_decoded_bytes(max_pixels: int | None = None) -> int | None:
    """The decoded-bytes budget in force: :data:`DECODED_BYTES_PER_PIXEL` times the pixel
    limit (:func:`max_pixels_limit`), so one setting bounds both; ``None`` when it is off."""
    limit = max_pixels_limit(max_pixels)
    return None if limit is None else DECODED_BYTES_PER_PIXEL * limit


def check_size(
    name: str | os.PathLike[str],
    width: int,
    height: int,
    limit: int | None,
    *,
    samples: int = 1,
    bytes_per_sample: int = 1,
    frames: int = 1,
) -> None:
    """Refuse, from the header, an image over the pixel limit or whose decoded data would
    exceed the bytes budget (``DECODED_BYTES_PER_PIXEL * limit``).

    Args:
        name: the file, for the error.
        width, height: pixels per frame.
        limit: the pixel limit (:func:`max_pixels_limit`); ``None`` checks nothing.
        samples: values per pixel as stored (3 for RGB, 4 for RGBA).
        bytes_per_sample: bytes per stored value (2 for 16-bit data).
        frames: frames that will be decoded.

    Raises:
        ImageReadError: over either bound; the message says how to raise the limit.
    """
    if limit is None:
        return
    pixels = width * height
    how = (
        f"If the image is genuine, raise the limit: max_pixels=... or the environment variable "
        f"{MAX_PIXELS_ENV}."
    )
    if pixels > limit:
        raise ImageReadError(
            name,
            f"image is {width}x{height} = {pixels / 1e6:.1f} megapixels, over the limit "
            f"of {limit / 1e6:g} megapixels (a decompression bomb?). {how}",
            kind="too_large",
        )
    decoded = pixels * samples * bytes_per_sample * frames
    budget = DECODED_BYTES_PER_PIXEL * limit
    if decoded > budget:
        layout = f"{samples} x {8 * bytes_per_sample}-bit samples"
        if frames > 1:
            layout += f" x {frames} frames"
        raise ImageReadError(
            name,
            f"image is {width}x{height} = {pixels / 1e6:.1f} megapixels of {layout}: "
            f"{decoded / 1e6:.0f} MB decoded, over the budget of {budget / 1e6:g} MB "
            f"({DECODED_BYTES_PER_PIXEL} bytes a pixel of the {limit / 1e6:g}-megapixel "
            f"limit; a decompression bomb?). {how}",
            kind="too_large",
        )


# --------------------------------------------------------------------------------------------
# the first bytes


def read_head(source: Path | bytes, name: str | os.PathLike[str], size: int = HEAD_BYTES) -> bytes:
    """The first ``size`` bytes of a file (or of bytes in memory).

    Raises:
        ImageReadError: no such file, a folder, unreadable, or empty.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageReadError(name, "empty file (0 bytes)", kind="empty")
        return source[:size]
    try:
        if source.is_dir():
            raise ImageReadError(name, "is a folder, not an image file", kind="missing")
        with open(source, "rb") as fp:
            head = fp.read(size)
    except FileNotFoundError:
        raise ImageReadError(name, "no such file", kind="missing") from None
    except OSError as exc:
        raise ImageReadError(name, f"cannot read file ({exc.strerror or exc})") from None
    if not head:
        raise ImageReadError(name, "empty file (0 bytes)", kind="empty")
    return head


def image_signature(head: bytes) -> str | None:
    """The format the magic bytes at the start name (``"png"``, ``"jpeg"``, ``"tiff"``,
    ``"bmp"``, ``"gif"``, ``"webp"``, ``"pnm"``), or ``None``."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, kind in _SIGNATURES.items():
        if head.startswith(magic):
            return kind
    return None


def is_dicom(head: bytes, name: str | os.PathLike[str] = "") -> bool:
    """Whether a file is DICOM, by its bytes first.

    DICOM: ``DICM`` at byte 128 (the Part 10 preamble). Otherwise a file whose first bytes are
    another image format's magic is that format, whatever its name (a PNG named ``x.dcm``);
    a ``.dcm``/``.dicom`` name, or a data set without preamble (its first element in group
    0x0002 or 0x0008), is DICOM.
    """
    if head[128:132] == b"DICM":
        return True
    if image_signature(head) is not None:
        return False
    if Path(str(name)).suffix.lower() in DICOM_EXTENSIONS:
        return True
    return head[:2] in _DICOM_GROUPS and head[3:4] == b"\x00"


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether a folder listing should treat ``path`` as an image: an image extension (any
    case), or no extension and the DICOM preamble. Hidden files (``.DS_Store``) never are."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return True
    if suffix == "":
        try:
            with open(path, "rb") as fp:
                return fp.read(HEAD_BYTES)[128:132] == b"DICM"
        except OSError:
            return False
    return False
