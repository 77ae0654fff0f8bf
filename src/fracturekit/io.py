"""Reading images, masks and DICOM files, with errors that name the file and the reason.

Every pixel fracturekit reads goes through this module, so one set of rules holds everywhere:

* **Formats.** PNG, JPEG, BMP, TIFF (8- and 16-bit), GIF/WebP (first frame), grayscale, RGBA,
  palette and DICOM. A file is DICOM when it carries the ``DICM`` preamble (bytes 128-131) or is
  named ``*.dcm`` / ``*.dicom``; everything else is handed to PIL, which sniffs the content.
* **8-bit output.** Images come back as 8-bit ``L`` or ``RGB``:

  - 16-bit, 32-bit and float images (TIFF, PNG) are stretched linearly from their own minimum
    to their own maximum onto 0..255. Dividing by 257 would leave a 12-bit X-ray stored in a
    16-bit container almost black; a constant image becomes all zeros.
  - RGBA / LA / palette-with-transparency images are composited onto **black**
    (``value * alpha / 255``): a transparent pixel holds nothing, like the dark background of
    an X-ray.
  - DICOM: the Modality LUT (RescaleSlope/RescaleIntercept, or a Modality LUT Sequence) is
    applied, then the first VOI window (WindowCenter/WindowWidth, with its VOILUTFunction) or a
    VOI LUT Sequence; without either the values are stretched min..max. MONOCHROME1 (bright =
    low values) is inverted so bone is always bright. Multi-frame files give their first frame.
  - ``channels=3`` replicates a grayscale image into R, G and B (ImageNet backbones);
    ``channels=1`` turns colour into luma (PIL's ITU-R 601-2 ``convert("L")``).
* **EXIF orientation (the one rule).** Images are returned with their EXIF orientation applied
  (the same transposes as ``PIL.ImageOps.exif_transpose``). Masks are stored in the image's
  *stored* pixel frame (what ``PIL.Image.open`` gives before any transpose, as FracAtlas masks
  are), so the same transpose must be applied to a mask: :func:`read_image` records the
  orientation it applied in ``image.info["orientation"]`` and
  ``read_mask(mask_path, size=image.size, orientation=image.info["orientation"])`` applies it.
  :func:`exif_orientation` reads it from a file without decoding pixels. A mask file's own EXIF
  tag is ignored.
* **Truncated files.** Some real JPEGs lack a few trailing bytes (PIL: "image file is
  truncated") yet decode to a complete picture (34 FracAtlas files do). By default such a file
  is loaded, the missing tail filled by the decoder, and reported as a *warning*;
  ``strict=True`` refuses it as an error. PIL's process-wide ``LOAD_TRUNCATED_IMAGES`` switch is
  turned on only for that one decode, while no other fracturekit decode runs (see
  :class:`_PilSwitches`), never left on globally.
* **Decompression bombs.** Images over ``max_pixels`` (default 100 megapixels; the
  ``FRACTUREKIT_MAX_PIXELS`` environment variable or the ``max_pixels`` argument change it,
  ``0`` turns the check off) are refused from their header, before any pixel is decoded, with a
  message saying how to raise the limit. PIL's own ``MAX_IMAGE_PIXELS`` check is switched off
  for fracturekit's header reads, so it neither warns below nor refuses above our limit.
* **Errors.** A missing, empty, corrupt, truncated (strict) or non-image file raises
  :class:`ImageReadError` (a ``ValueError``) whose text is ``"<path>: <reason>"``.
  :func:`check_images` checks many files on a thread pool and collects every problem instead.
"""

from __future__ import annotations

import io as _stdio
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from PIL import Image as PILImage

DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "FRACTUREKIT_MAX_PIXELS"

#: Extensions fracturekit treats as images when it lists a folder (lower case). Files without
#: an extension count too when they carry the DICOM preamble (see :func:`is_image_file`).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"}
)
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})

# EXIF orientation -> PIL transpose, exactly the table of PIL.ImageOps.exif_transpose.
_ORIENTATION_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}
_EXIF_ORIENTATION_TAG = 0x0112


class ImageReadError(ValueError):
    """An image (or mask) cannot be read. ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike[str], reason: str, *, truncated: bool = False):
        self.path = str(path)
        self.reason = reason
        self.truncated = truncated  # refused only because strict mode refuses truncated files
        super().__init__(f"{self.path}: {reason}")

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self):  # keep path/reason when pickled across processes
        return (_rebuild_error, (self.path, self.reason, self.truncated))


def _rebuild_error(path: str, reason: str, truncated: bool) -> ImageReadError:
    return ImageReadError(path, reason, truncated=truncated)


class ImageIssue(NamedTuple):
    """One file and what is wrong with it (a warning or an error)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


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
            pixel limit, or truncated in strict mode.
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


_SWITCHES = _PilSwitches()


# --------------------------------------------------------------------------------------------
# limits and small helpers


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


def _check_pixels(name: str, width: int, height: int, limit: int | None) -> None:
    if limit is not None and width * height > limit:
        raise ImageReadError(
            name,
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit "
            f"of {limit / 1e6:g} megapixels (a decompression bomb?). If the image is genuine, "
            f"raise the limit: max_pixels=... or the environment variable {MAX_PIXELS_ENV}.",
        )


def is_dicom(head: bytes, name: str | os.PathLike[str] = "") -> bool:
    """A DICOM file: ``DICM`` at byte 128 (the Part 10 preamble) or a ``.dcm``/``.dicom`` name."""
    return head[128:132] == b"DICM" or Path(str(name)).suffix.lower() in DICOM_EXTENSIONS


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
                return fp.read(132)[128:132] == b"DICM"
        except OSError:
            return False
    return False


def _orient(image: PILImage.Image, orientation: int) -> PILImage.Image:
    from PIL import Image

    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image.transpose(getattr(Image.Transpose, method)) if method else image


def _exif_orientation_of(im: PILImage.Image) -> int:
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF: nothing to apply
        return 1
    return value if value in _ORIENTATION_TRANSPOSE else 1


def _stretch(values: np.ndarray) -> np.ndarray:
    """Linear min..max -> 0..255 (uint8); a constant array becomes zeros."""
    values = np.nan_to_num(values.astype(np.float64, copy=False))
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _composite_on_black(im: PILImage.Image) -> PILImage.Image:
    from PIL import Image

    base_mode = "L" if im.mode in ("LA", "La") else "RGB"
    colour = im.convert(base_mode)
    return Image.composite(colour, Image.new(base_mode, im.size, 0), im.getchannel("A"))


def _to_8bit(im: PILImage.Image) -> PILImage.Image:
    """Any PIL mode -> 8-bit ``L`` or ``RGB`` by the module's rules."""
    from PIL import Image

    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        has_alpha = "transparency" in im.info
        return _to_8bit(im.convert("RGBA" if has_alpha else "RGB"))
    if mode == "PA":
        return _composite_on_black(im.convert("RGBA"))
    if mode in ("RGBA", "RGBa", "LA", "La"):
        return _composite_on_black(im)
    if mode.startswith(("I", "F")):  # I;16*, I, F: high bit depth, stretch by actual range
        return Image.fromarray(_stretch(np.asarray(im)), mode="L")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def _is_rgb16_tiff(im: PILImage.Image) -> bool:
    """A 16-bit-per-sample colour TIFF: PIL would keep only the high byte of each sample."""
    tile = getattr(im, "tile", None) or []
    if im.format != "TIFF" or not tile:
        return False
    args = tile[0].args
    rawmode = args[0] if isinstance(args, tuple) else str(args)
    return isinstance(rawmode, str) and rawmode.startswith(("RGB;16", "RGBA;16", "RGBX;16"))


def _read_rgb16_tiff(source: Path | bytes) -> PILImage.Image:
    """Full-depth colour TIFF via tifffile (a scikit-image dependency), stretched to 8 bits."""
    import tifffile

    fp = _stdio.BytesIO(source) if isinstance(source, bytes) else source
    arr = np.asarray(tifffile.imread(fp, key=0))
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ValueError(f"unexpected colour TIFF layout {arr.shape}")
    return _rgb_image(_stretch(arr[..., :3]))


# --------------------------------------------------------------------------------------------
# decoding


def _read_head(source: Path | bytes, name: str) -> bytes:
    if isinstance(source, bytes):
        head = source[:132]
        if not source:
            raise ImageReadError(name, "empty file (0 bytes)")
        return head
    try:
        if source.is_dir():
            raise ImageReadError(name, "is a folder, not an image file")
        with open(source, "rb") as fp:
            head = fp.read(132)
    except FileNotFoundError:
        raise ImageReadError(name, "no such file") from None
    except OSError as exc:
        raise ImageReadError(name, f"cannot read file ({exc.strerror or exc})") from None
    if not head:
        raise ImageReadError(name, "empty file (0 bytes)")
    return head


def _open_pil(source: Path | bytes, name: str, limit: int | None) -> PILImage.Image:
    """Open (header only) with our pixel limit instead of PIL's."""
    from PIL import Image, UnidentifiedImageError

    fp = _stdio.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with _SWITCHES.header_read():
            im = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageReadError(
            name,
            "not a readable image: PIL cannot identify it (not an image file, or a corrupt "
            "header); DICOM files need the DICM preamble or a .dcm/.dicom name",
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted header is "corrupt"
        raise ImageReadError(name, f"corrupt image header ({_describe(exc)})") from None
    try:
        _check_pixels(name, im.width, im.height, limit)
    except ImageReadError:
        im.close()
        raise
    return im


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_truncation(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and "truncated" in str(exc).lower()


def _decode_pil(source: Path | bytes, name: str, strict: bool, limit: int | None):
    """-> (8-bit L/RGB image, stored mode, format, orientation, warning or None)."""
    im = _open_pil(source, name, limit)
    mode, fmt = im.mode, im.format or "unknown"
    orientation = _exif_orientation_of(im)
    if _is_rgb16_tiff(im):
        im.close()
        try:
            return _read_rgb16_tiff(source), f"{mode};16", fmt, orientation, None
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(name, f"corrupt 16-bit TIFF ({_describe(exc)})") from None
    warning = None
    try:
        with _SWITCHES.shared():
            im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted data
        im.close()
        if not _is_truncation(exc):
            raise ImageReadError(name, f"corrupt image data ({_describe(exc)})") from None
        if strict:
            raise ImageReadError(
                name, f"truncated file ({exc}); refused in strict mode", truncated=True
            ) from None
        # The tolerant decode: this one only, with LOAD_TRUNCATED_IMAGES on.
        im = _open_pil(source, name, limit)
        try:
            with _SWITCHES.truncated_decode():
                im.load()
        except Exception as exc2:  # noqa: BLE001
            im.close()
            raise ImageReadError(name, f"truncated and undecodable ({_describe(exc2)})") from None
        warning = f"truncated file ({exc}); loaded with the missing end filled in by the decoder"
    try:  # (no close() here: it would free the pixels just loaded; load() closed the file)
        out = _to_8bit(im)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(name, f"cannot convert {mode} pixels ({_describe(exc)})") from None
    return out, mode, fmt, orientation, warning


def _rgb_image(arr: np.ndarray) -> PILImage.Image:
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def _dicom_apis():
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _first(value: Any) -> float:
    try:
        return float(value[0])  # MultiValue: the first window is the default one
    except TypeError:
        return float(value)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 VOI windowing onto 0..255."""
    x = values.astype(np.float64, copy=False)
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        y = (x - center) / width + 0.5
    else:  # LINEAR
        y = (x - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(np.rint(np.clip(y, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)


def _decode_dicom(source: Path | bytes, name: str, limit: int | None):
    import pydicom
    from PIL import Image

    apply_modality_lut, apply_voi_lut = _dicom_apis()
    fp = _stdio.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        ds = pydicom.dcmread(fp, force=True)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(name, f"corrupt DICOM file ({_describe(exc)})") from None
    if "PixelData" not in ds:
        raise ImageReadError(name, "DICOM file holds no image (no PixelData element)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError(name, "DICOM file lacks Rows/Columns") from None
    _check_pixels(name, cols, rows, limit)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsAllocated", 8))
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - e.g. a compressed transfer syntax without plugin
        raise ImageReadError(name, f"cannot decode DICOM pixel data ({_describe(exc)})") from None
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    mode = f"{photometric};{bits}"
    if samples == 1:
        values = apply_modality_lut(arr, ds)
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is not None and width is not None and _first(width) >= 1:
            function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
            out = _window(values, _first(center), _first(width), function)
        elif "VOILUTSequence" in ds:
            out = _stretch(apply_voi_lut(values, ds))
        else:
            out = _stretch(values)
        if photometric == "MONOCHROME1":
            out = 255 - out
        return Image.fromarray(out, mode="L"), mode, "DICOM", 1, None
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ImageReadError(name, f"unsupported DICOM pixel layout {arr.shape}")
    rgb = arr[..., :3]
    rgb = rgb.astype(np.uint8) if rgb.dtype == np.uint8 else _stretch(rgb)
    return _rgb_image(rgb), mode, "DICOM", 1, None


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
        max_pixels: pixel limit (see :func:`max_pixels_limit`).

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
    head = _read_head(source, label)
    if is_dicom(head, label if isinstance(source, bytes) else source):
        image, mode, fmt, orientation, warning = _decode_dicom(source, label, limit)
    else:
        image, mode, fmt, orientation, warning = _decode_pil(source, label, strict, limit)
    image = _orient(image, orientation)
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
        ImageReadError: missing, empty, corrupt, not an image, over the pixel limit, or
            truncated with ``strict=True``.
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
    decides DICOM-by-extension (``scan.dcm``)."""
    image, _ = open_image(bytes(data), name=name, strict=strict, max_pixels=max_pixels)
    return _channels(image, channels)


def exif_orientation(path: str | os.PathLike[str]) -> int:
    """The EXIF orientation (1-8) that :func:`read_image` applies to ``path``; 1 when it has
    none (and for DICOM). Reads the header only."""
    path = Path(path)
    head = _read_head(path, str(path))
    if is_dicom(head, path):
        return 1
    im = _open_pil(path, str(path), None)
    try:
        return _exif_orientation_of(im)
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
    head = _read_head(path, name)
    if is_dicom(head, path):
        image, _, _, _, _ = _decode_dicom(path, name, max_pixels_limit(max_pixels))
        values = np.asarray(image)
    else:
        im = _open_pil(path, name, max_pixels_limit(max_pixels))
        try:
            with _SWITCHES.shared():
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
            raise ImageReadError(name, f"corrupt mask ({_describe(exc)})") from None
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
    if orientation in _ORIENTATION_TRANSPOSE or (size is not None and size != mask.shape[::-1]):
        pil = _orient(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), orientation)
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
        max_pixels: pixel limit (see :func:`max_pixels_limit`).
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
