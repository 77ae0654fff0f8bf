"""Reading images, masks and DICOM files, with errors that name the file and the reason.

Every pixel fracturekit reads goes through this module, so one set of rules holds everywhere:

* **Formats.** PNG, JPEG, BMP, TIFF (8- and 16-bit), GIF/WebP (first frame), grayscale, RGBA,
  palette and DICOM. The bytes decide, not the name: a file is DICOM when it carries the
  ``DICM`` preamble (bytes 128-131); a file that starts with another format's magic bytes is
  that format whatever its name (a PNG named ``x.dcm``, a TIFF named ``.jpg``); otherwise a
  ``*.dcm`` / ``*.dicom`` name or a DICOM data set without preamble is DICOM. Everything that
  is not DICOM is handed to PIL, which identifies the content itself.
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
  ``_pil._PilSwitches``), never left on globally.
* **Decompression bombs: bounded memory.** One setting, ``max_pixels`` (default 100
  megapixels; the ``FRACTUREKIT_MAX_PIXELS`` environment variable or the ``max_pixels``
  argument change it, ``0`` turns both checks off), bounds two things, both checked from the
  header before any pixel is decoded, with a message saying how to raise the limit:

  - the pixels: width x height <= ``max_pixels``;
  - the decoded bytes: width x height x samples per pixel x bytes per sample x frames decoded
    <= ``DECODED_BYTES_PER_PIXEL`` (4) x ``max_pixels`` (:func:`max_decoded_bytes`): what PIL
    holds for an 8-bit RGB(A) image at the pixel limit. So every 8-bit image, 16-bit grey and
    32-bit/float grey is bounded by the pixel limit alone, a 16-bit RGB image gets two thirds
    of it and 16-bit RGBA half. Only the first frame of a multi-frame file is decoded (DICOM
    via pydicom's frame-level access, PIL and tifffile the first page), so only it counts.

  The 16-bit/float stretch runs over chunks of about a million values, so a decode costs about
  the stored array plus its 8-bit output (a 25-megapixel 16-bit colour TIFF: ~230 MB, where a
  whole-image float64 stretch took 1.9 GB). PIL's own ``MAX_IMAGE_PIXELS`` check is switched
  off for fracturekit's header reads, so it neither warns below nor refuses above our limit.
* **Errors.** A missing, empty, corrupt, truncated (strict) or non-image file raises
  :class:`ImageReadError` (a ``ValueError``) whose text is ``"<path>: <reason>"``; its
  ``kind`` (one of :data:`READ_ERROR_KINDS`: ``too_large``, ``truncated``, ``missing``,
  ``empty``, ``unreadable``) says what went wrong to a program (``serve`` answers 413 for
  ``too_large``).
  :func:`check_images` checks many files on a thread pool and collects every problem instead.
* **Streaming.** :func:`open_rows` reads large TIFF, BMP and PGM/PPM files in bands of rows
  (what ``fracturekit.scan`` tiles), others through :func:`read_image`.

Layout: ``_header`` (the one header reader, magic bytes, limits, :class:`ImageReadError`),
``_convert`` (the chunked stretch, alpha, EXIF transposes), ``_pil`` and ``_dicom`` (the
decoders), ``_read`` (the public whole-image readers, masks, :func:`check_images`),
``_stream`` (the banded readers).
"""

from __future__ import annotations

from fracturekit.io._header import (
    DECODED_BYTES_PER_PIXEL,
    DEFAULT_MAX_PIXELS,
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    MAX_PIXELS_ENV,
    READ_ERROR_KINDS,
    ImageIssue,
    ImageReadError,
    image_signature,
    is_dicom,
    is_image_file,
    max_decoded_bytes,
    max_pixels_limit,
)
from fracturekit.io._read import (
    CheckReport,
    ImageInfo,
    check_images,
    exif_orientation,
    open_image,
    read_image,
    read_image_bytes,
    read_mask,
)
from fracturekit.io._stream import (
    DECODE_MAX_PIXELS,
    SCAN_MAX_PIXELS,
    RowSource,
    open_rows,
)

__all__ = [
    "DECODED_BYTES_PER_PIXEL",
    "DECODE_MAX_PIXELS",
    "DEFAULT_MAX_PIXELS",
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS_ENV",
    "READ_ERROR_KINDS",
    "SCAN_MAX_PIXELS",
    "CheckReport",
    "ImageInfo",
    "ImageIssue",
    "ImageReadError",
    "RowSource",
    "check_images",
    "exif_orientation",
    "image_signature",
    "is_dicom",
    "is_image_file",
    "max_decoded_bytes",
    "max_pixels_limit",
    "open_image",
    "open_rows",
    "read_image",
    "read_image_bytes",
    "read_mask",
]
