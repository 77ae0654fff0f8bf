"""DICOM decoding: Modality LUT, VOI window or LUT, MONOCHROME1, one frame only.

The decoded size (rows x columns x samples x bytes per sample) is checked from the data set's
attributes before any pixel is decoded, and only the first frame is decoded (pydicom 3's
frame-level ``pixel_array(ds, index=0)``): a 100-frame file costs one frame. Conversions run over
chunks of rows (:mod:`fracturekit.io._convert`), so their float64 working copies stay small.
"""

from __future__ import annotations

import io as _stdio
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit.io._convert import map_chunks, rgb_image, stretch
from fracturekit.io._header import DECODED_BYTES_PER_PIXEL, ImageReadError, check_size
from fracturekit.io._pil import describe


def _dicom_apis():
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _first_frame_reader():
    """``(read(ds) -> first frame, frames it decodes or None for all)``."""
    try:  # pydicom >= 3: frame-level access, only the frame asked for is decoded
        from pydicom.pixels import pixel_array
    except ImportError:  # pragma: no cover - pydicom 2.x decodes every frame

        def read_all(ds: Any) -> np.ndarray:
            arr = np.asarray(ds.pixel_array)
            return arr[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr

        return read_all, None
    return (lambda ds: np.asarray(pixel_array(ds, index=0))), 1


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


def _header(ds: Any, name: str) -> tuple[int, int, int, int, int]:
    """``(rows, columns, samples, bytes per sample, frames)`` from the attributes."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError(name, "DICOM file lacks Rows/Columns") from None
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8) or 8)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(name, f"DICOM file has invalid image attributes ({exc})") from None
    return rows, cols, samples, max(1, (bits + 7) // 8), frames


DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def _inflated_size(source: Path | bytes, cap: int) -> int | None:
    """Bytes a deflated DICOM's data set inflates to (read and inflated in chunks, nothing
    kept), or None when it is not a deflated Part 10 file. Stops counting past ``cap``."""
    import struct
    import zlib

    with _stdio.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as fh:
        head = fh.read(144)
        # Preamble, "DICM", then the file meta group in explicit VR little endian, led by its
        # group length (0002,0000) UL: the deflated data set starts right after the group.
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
            return None
        (group_length,) = struct.unpack("<I", head[140:144])
        if group_length > 1 << 16:
            return None
        meta = fh.read(group_length)
        if DEFLATED.encode() not in meta:
            return None
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total, chunk = 0, 1 << 20
        while total <= cap and not inflater.eof:
            pending = inflater.unconsumed_tail or fh.read(chunk)
            if not pending:
                break
            out = inflater.decompress(pending, chunk)
            if not out and inflater.unconsumed_tail == pending:
                break  # no progress: a damaged stream, which dcmread will report
            total += len(out)
        return total


def decode_dicom(source: Path | bytes, name: str, limit: int | None):
    """-> (8-bit L/RGB image, stored mode, ``"DICOM"``, orientation 1, no warning)."""
    import pydicom

    apply_modality_lut, apply_voi_lut = _dicom_apis()
    read_frame, frames_decoded = _first_frame_reader()
    budget = None if limit is None else DECODED_BYTES_PER_PIXEL * limit
    if budget is not None:
        # pydicom inflates a deflated data set whole, every frame, before any frame can be
        # chosen: count what it would inflate to first, holding nothing.
        inflated = _inflated_size(source, budget)
        if inflated is not None and inflated > budget:
            raise ImageReadError(
                name,
                f"deflated DICOM data set inflates to over {budget / 1e6:.0f} MB, the decoded-"
                f"size budget ({DECODED_BYTES_PER_PIXEL} bytes a pixel of the limit of {limit / 1e6:g} "
                "megapixels)",
                kind="too_large",
            )
    fp = _stdio.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        ds = pydicom.dcmread(fp, force=True)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(name, f"corrupt DICOM file ({describe(exc)})") from None
    if "PixelData" not in ds:
        raise ImageReadError(name, "DICOM file holds no image (no PixelData element)")
    rows, cols, samples, nbytes, frames = _header(ds, name)
    frames = frames if frames_decoded is None else frames_decoded
    check_size(name, cols, rows, limit, samples=samples, bytes_per_sample=nbytes, frames=frames)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    mode = f"{photometric};{int(ds.get('BitsAllocated', 8))}"
    try:
        arr = read_frame(ds)
    except Exception as exc:  # noqa: BLE001 - e.g. a compressed transfer syntax without plugin
        raise ImageReadError(name, f"cannot decode DICOM pixel data ({describe(exc)})") from None
    if samples == 1:
        return _gray(arr, ds, apply_modality_lut, apply_voi_lut), mode, "DICOM", 1, None
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ImageReadError(name, f"unsupported DICOM pixel layout {arr.shape}")
    rgb = arr[..., :3]
    rgb = rgb.astype(np.uint8) if rgb.dtype == np.uint8 else stretch(rgb)
    return rgb_image(rgb), mode, "DICOM", 1, None


def _gray(arr: np.ndarray, ds: Any, apply_modality_lut, apply_voi_lut) -> Any:
    """One grey frame: Modality LUT, then the first VOI window, the VOI LUT or min..max."""
    from PIL import Image

    def modality(chunk: np.ndarray) -> np.ndarray:
        return apply_modality_lut(chunk, ds)

    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None and _first(width) >= 1:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        c, w = _first(center), _first(width)
        out = map_chunks(arr, lambda chunk: _window(modality(chunk), c, w, function))
    elif "VOILUTSequence" in ds:
        out = stretch(arr, lambda chunk: apply_voi_lut(modality(chunk), ds))
    else:
        out = stretch(arr, modality)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        np.subtract(255, out, out=out)
    return Image.fromarray(out, mode="L")
