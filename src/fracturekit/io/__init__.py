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

from fracturekit.io._header import (
    DECODED_BYTES_PER_PIXEL,
    DEFAULT_MAX_PIXELS,
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    MAX_PIXELS_ENV,
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
