"""Whole decodes: ``open_image``/``read_image``/``read_image_bytes``, masks, checking many files.

The kind of a file is decided by its bytes (:func:`fracturekit.io._header.is_dicom`): DICOM
goes to pydicom, everything else to PIL.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fracturekit.io._convert import ORIENTATION_TRANSPOSE, exif_orientation_of, orient
from fracturekit.io._dicom import decode_dicom
from fracturekit.io._header import (
    ImageIssue,
    ImageReadError,
    is_dicom,
    max_pixels_limit,
    read_head,
)
from fracturekit.io._pil import SWITCHES, decode_pil, describe, open_pil

if TYPE_CHECKING:
    from PIL import Image as PILImage


@dataclass(frozen=True)
class ImageInfo:
    """What decoding a file found out about it.

    Attributes:
        path: the file (or the name given to :func:`read_image_bytes`).
        format: ``"JPEG"``, ``"PNG"``, ``"TIFF"``, ``"DICOM"``, ...
        mode: the stored pixel mode before conversion (PIL mode such as ``"L"``, ``"I;16"``,
            ``"RGBA"``, ``"P"``; for DICOM e.g. ``"MONOCHROME1;16"``).
        size: ``(width, height)`` as returned, i.e. after the EXIF orientation.
        orientation: the EXIF orientation applied (1 = none).
        warning: why the file loaded only with a caveat (a truncated file), else ``None``.
    """

    path: Path
    format: str
    mode: str
    size: tuple[int, int]
    orientation: int = 1
    warning: str | None = None


@dataclass
class CheckReport:
    """Result of :func:`check_images`.

    Attributes:
        ok: the files that load (including those with a warning), in input order.
        warnings: files that load only with a caveat: truncated files (non-strict mode).
        errors: files that cannot be used: missing, empty, corrupt, not an image, over the
            pixel limit or the decoded-bytes budget, or truncated in strict mode.
        infos: :class:`ImageInfo` for every file in ``ok``.
    """

    ok: list[Path] = field(default_factory=list)
    warnings: list[ImageIssue] = field(default_factory=list)
    errors: list[ImageIssue] = field(default_factory=list)
    infos: dict[Path, ImageInfo] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """No warning and no error."""
        return not self.warnings and not self.errors


def open_image(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    strict: bool = False,
    max_pixels: int | None = None,
) -> tuple[PILImage.Image, ImageInfo]:
    """Decode a file (or its bytes) into an 8-bit ``L`` or ``RGB`` image, orientation applied.

    The lower-level twin of :func:`read_image` for callers that also want what was found
    (stored mode and format, a truncation warning); ``channels`` conversion is not applied.

    Args:
        source: a path, or the file's bytes.
        name: how errors name the file (default: the path, or ``"upload"`` for bytes).
        strict: refuse truncated files instead of loading them with a warning.
        max_pixels: pixel limit, which also sets the decoded-bytes budget (see
            :func:`fracturekit.io.max_decoded_bytes`).

    Raises:
        ImageReadError: the file cannot be used; the message names it and says why.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = bytes(source)
        label = name or "upload"
    else:
        source = Path(source)
        label = name or str(source)
    limit = max_pixels_limit(max_pixels)
    head = read_head(source, label)
    if is_dicom(head, label if isinstance(source, bytes) else source):
        image, mode, fmt, orientation, warning = decode_dicom(source, label, limit)
    else:
        image, mode, fmt, orientation, warning = decode_pil(source, label, strict, limit)
    image = orient(image, orientation)
    image.info = {"orientation": orientation}
    info = ImageInfo(Path(label), fmt, mode, image.size, orientation, warning)
    return image, info


def _channels(image: PILImage.Image, channels: int) -> PILImage.Image:
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: must be 1 or 3")
    want = "L" if channels == 1 else "RGB"
    if image.mode == want:
        return image
    out = image.convert(want)
    out.info = dict(image.info)
    return out


def read_image(
    path: str | os.PathLike[str],
    *,
    channels: int = 3,
    strict: bool = False,
    max_pixels: int | None = None,
) -> PILImage.Image:
    """Read an image file as 8-bit ``RGB`` (``channels=3``) or ``L`` (``channels=1``).

    EXIF orientation is applied and recorded in ``image.info["orientation"]`` (see the module
    docstring for every conversion rule). A truncated file loads (non-strict) without a message;
    :func:`check_images` is where such files are reported.

    Raises:
        ImageReadError: missing, empty, corrupt, not an image, over the pixel limit or the
            bytes budget, or truncated with ``strict=True``.
    """
    image, _ = open_image(path, strict=strict, max_pixels=max_pixels)
    return _channels(image, channels)


def read_image_bytes(
    data: bytes,
    *,
    name: str = "upload",
    channels: int = 3,
    strict: bool = False,
    max_pixels: int | None = None,
) -> PILImage.Image:
    """:func:`read_image` for bytes in memory (an upload); ``name`` names it in errors and
    decides DICOM by name where the bytes do not (a ``scan.dcm`` without the preamble);
    ``max_pixels`` bounds the pixels and the decoded bytes, as for :func:`read_image`."""
    image, _ = open_image(bytes(data), name=name, strict=strict, max_pixels=max_pixels)
    return _channels(image, channels)


def exif_orientation(path: str | os.PathLike[str]) -> int:
    """The EXIF orientation (1-8) that :func:`read_image` applies to ``path``; 1 when it has
    none (and for DICOM). Reads the header only."""
    path = Path(path)
    head = read_head(path, str(path))
    if is_dicom(head, path):
        return 1
    im = open_pil(path, str(path), None)
    try:
        return exif_orientation_of(im)
    finally:
        im.close()


def read_mask(
    path: str | os.PathLike[str],
    size: tuple[int, int] | None = None,
    *,
    orientation: int = 1,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Read a binary mask as a ``bool`` array of shape ``(height, width)``.

    Foreground: for 0/1 masks any non-zero pixel; otherwise pixels >= 128 (>= 32768 for 16-bit
    masks), which also absorbs JPEG noise. Palette masks: any index other than 0. Colour masks
    are converted to gray first.

    Args:
        path: the mask file.
        size: ``(width, height)`` wanted, normally ``image.size`` of the image returned by
            :func:`read_image`; the mask is resized with nearest-neighbour when it differs.
        orientation: the image's EXIF orientation (``image.info["orientation"]`` or
            :func:`exif_orientation` of the image file). Masks are stored in the image's stored
            pixel frame, so the image's transpose is applied to the mask too.
        max_pixels: pixel limit, as for images.

    Raises:
        ImageReadError: the mask cannot be read.
    """
    from PIL import Image

    path = Path(path)
    name = str(path)
    head = read_head(path, name)
    if is_dicom(head, path):
        image, _, _, _, _ = decode_dicom(path, name, max_pixels_limit(max_pixels))
        values = np.asarray(image)
    else:
        im = open_pil(path, name, max_pixels_limit(max_pixels))
        try:
            with SWITCHES.shared():
                im.load()
            if im.mode == "P":
                values = np.asarray(im)  # palette index: 0 is background
            elif im.mode in ("1", "L") or im.mode.startswith(("I", "F")):
                values = np.asarray(im)
            else:
                values = np.asarray(im.convert("L"))
        except ImageReadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(name, f"corrupt mask ({describe(exc)})") from None
        finally:
            im.close()
    if values.ndim != 2:
        raise ImageReadError(name, f"mask must be one channel, got shape {values.shape}")
    peak = values.max() if values.size else 0
    if values.dtype == bool or peak <= 1:
        mask = values > 0
    elif peak > 255:
        mask = values >= 32768
    else:
        mask = values >= 128
    if orientation in ORIENTATION_TRANSPOSE or (size is not None and size != mask.shape[::-1]):
        pil = orient(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), orientation)
        if size is not None and pil.size != tuple(size):
            pil = pil.resize(tuple(size), Image.Resampling.NEAREST)
        mask = np.asarray(pil) >= 128
    return np.ascontiguousarray(mask)


# --------------------------------------------------------------------------------------------
# checking many files


def _check_one(path: Path, strict: bool, max_pixels: int | None) -> ImageInfo | ImageReadError:
    try:
        _, info = open_image(path, strict=strict, max_pixels=max_pixels)
    except ImageReadError as exc:
        return exc
    return ImageInfo(path, info.format, info.mode, info.size, info.orientation, info.warning)


def check_images(
    paths: Iterable[str | os.PathLike[str]],
    *,
    strict: bool = False,
    max_pixels: int | None = None,
    workers: int | None = None,
) -> CheckReport:
    """Decode every file completely (on a thread pool) and sort them into ok/warnings/errors.

    Run it before a long job so that a bad file is reported up front, never at epoch 7.
    Truncated files are warnings (they load) unless ``strict``, when they are errors. Files
    are decoded in full because corruption inside the data only shows when it is decoded.

    Args:
        paths: files to check; duplicates are checked once.
        strict: treat truncated files as errors.
        max_pixels: pixel limit, which also sets the decoded-bytes budget (see
            :func:`fracturekit.io.max_decoded_bytes`).
        workers: threads (default: ``min(16, 2 * CPUs)``; PIL and NumPy release the GIL while
            decoding).
    """
    unique = list(dict.fromkeys(Path(p) for p in paths))
    limit = max_pixels_limit(max_pixels)
    limit_arg = limit if limit is not None else 0
    report = CheckReport()
    if not unique:
        return report
    workers = workers or min(16, 2 * (os.cpu_count() or 1), len(unique))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fk-check") as pool:
        results = pool.map(lambda p: _check_one(p, strict, limit_arg), unique)
        for path, result in zip(unique, results, strict=True):
            if isinstance(result, ImageReadError):
                report.errors.append(ImageIssue(path, result.reason))
                continue
            report.ok.append(path)
            report.infos[path] = result
            if result.warning:
                report.warnings.append(ImageIssue(path, result.warning))
    return report
