"""Small generated images and data sets with planted problems, for the io/data/inspect tests.

Everything is written with PIL / pydicom / tifffile into a temporary folder: no file is stored
in the repository.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(seed: int, size: tuple[int, int] = (40, 32), mode: str = "RGB") -> Image.Image:
    """A distinct picture per seed (width, height)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def blob_image(size: tuple[int, int] = (48, 40), box=(6, 4, 20, 30)) -> Image.Image:
    """Gray image, black with one bright asymmetric rectangle (x0, y0, x1, y1)."""
    arr = np.full((size[1], size[0]), 20, dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 230
    return Image.fromarray(arr, mode="L")


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def write_truncated_jpeg(path: Path, seed: int = 0, cut: int = 4) -> Path:
    """A JPEG missing its last ``cut`` bytes (like the 34 FracAtlas files)."""
    data = jpeg_bytes(noise_image(seed, (64, 48)))
    path.write_bytes(data[:-cut])
    return path


def write_exif_jpeg(path: Path, image: Image.Image, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.convert("RGB").save(path, "JPEG", quality=98, exif=exif.tobytes())
    return path


def write_tiff16(path: Path, lo: int = 1000, hi: int = 5000, size=(40, 32)) -> Path:
    """16-bit gray TIFF with values spanning lo..hi (a 12-bit X-ray in a 16-bit container)."""
    w, h = size
    ramp = np.linspace(lo, hi, w * h).reshape(h, w).astype(np.uint16)
    Image.fromarray(ramp).save(path, "TIFF")
    return path


def write_rgba_png(path: Path, size=(40, 32)) -> Path:
    """Red, alpha 255 on the left half and 0 on the right half."""
    w, h = size
    arr = np.zeros((h, w, 4), dtype=np.uint8)
    arr[..., 0] = 200
    arr[:, : w // 2, 3] = 255
    Image.fromarray(arr, mode="RGBA").save(path, "PNG")
    return path


def dicom_bytes(
    values: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    preamble: bool = True,
) -> bytes:
    """An uncompressed 16-bit DICOM file holding ``values`` (stored values, uint16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = values.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    return data if preamble else data[132:]


def deflated_dicom(side: int, frames: int) -> bytes:
    """``frames`` zero frames of ``side`` x ``side`` 16-bit gray, saved with the Deflated
    transfer syntax: a small file that inflates to ``side * side * 2 * frames`` bytes of pixels
    (a decompression bomb when large)."""
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dcmread(io.BytesIO(dicom_bytes(np.zeros((side, side), np.uint16))))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.NumberOfFrames = frames
    ds.PixelData = bytes(side * side * 2 * frames)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass
class Planted:
    """Paths of the planted problems in :func:`make_planted_dataset`."""

    root: Path
    corrupt: Path
    empty: Path
    truncated: Path
    duplicate_train: Path
    duplicate_val: Path
    tiff16: Path
    rgba: Path
    dicom_mono1: Path
    exif_jpeg: Path
    exif_mask: Path
    notes: Path


def make_planted_dataset(root: Path) -> Planted:
    """A split-folder data set ``root/{train,val}/{crack,no crack}`` with planted problems.

    Clean images: 4 per class in train, 2 per class in val. Planted: a corrupt file, a zero-byte
    file, a truncated JPEG, one image copied into train and val, a 16-bit TIFF, an RGBA PNG, a
    MONOCHROME1 DICOM, an EXIF-rotated JPEG with its mask (stored frame) and a notes.txt.
    """
    seed = 100
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("crack", "no crack"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                seed += 1
                noise_image(seed).save(folder / f"{split}_{cls[:2]}_{i}.png")
    train_crack, val_crack = root / "train" / "crack", root / "val" / "crack"
    corrupt = train_crack / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" + bytes(range(256)) * 4)
    empty = root / "train" / "no crack" / "empty.png"
    empty.write_bytes(b"")
    truncated = write_truncated_jpeg(root / "train" / "no crack" / "truncated.jpg", seed=7)
    dup_data = jpeg_bytes(noise_image(999))
    duplicate_train = train_crack / "dup_a.jpg"
    duplicate_val = val_crack / "dup_b.jpg"
    duplicate_train.write_bytes(dup_data)
    duplicate_val.write_bytes(dup_data)
    tiff16 = write_tiff16(train_crack / "xray16.tif")
    rgba = write_rgba_png(root / "train" / "no crack" / "overlay.png")
    stored = (np.arange(24 * 20).reshape(20, 24) * 9 % 4096).astype(np.uint16)
    dicom_mono1 = root / "val" / "no crack" / "scan.dcm"
    dicom_mono1.write_bytes(dicom_bytes(stored, photometric="MONOCHROME1"))
    exif_jpeg = write_exif_jpeg(train_crack / "rotated.jpg", blob_image(), orientation=6)
    masks = root / "train" / "masks"
    masks.mkdir()
    exif_mask = masks / "rotated.png"
    Image.fromarray(((np.asarray(blob_image()) > 127) * 255).astype(np.uint8)).save(exif_mask)
    notes = train_crack / "notes.txt"
    notes.write_text("not an image\n")
    return Planted(
        root=root,
        corrupt=corrupt,
        empty=empty,
        truncated=truncated,
        duplicate_train=duplicate_train,
        duplicate_val=duplicate_val,
        tiff16=tiff16,
        rgba=rgba,
        dicom_mono1=dicom_mono1,
        exif_jpeg=exif_jpeg,
        exif_mask=exif_mask,
        notes=notes,
    )


def make_class_folders(root: Path, counts: dict[str, int], size=(32, 32), seed: int = 0) -> Path:
    """``root/<class>/<class>_<i>.png`` of distinct noise images."""
    for c, (cls, n) in enumerate(sorted(counts.items())):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise_image(seed * 100_000 + c * 1000 + i, size).save(folder / f"{cls}_{i}.png")
    return root
