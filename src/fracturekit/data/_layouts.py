"""Which layout a path holds, and the table of readers, one row a layout.

Layout names are ``config.LAYOUTS`` (``auto`` first, then one per reader); the names below
are unpacked from it, so a layout is named in one place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from fracturekit.config import LAYOUTS
from fracturekit.data._folders import (
    class_dirs,
    find_masks_dir,
    load_folders,
    load_masked_images,
    load_split_folders,
    split_dirs,
)
from fracturekit.data._manifest import IMAGE_COLUMNS, is_url, load_csv, pick_column, read_csv
from fracturekit.data._options import LoadOptions
from fracturekit.data._records import DatasetError, Sample
from fracturekit.io import ImageIssue

AUTO, FOLDERS, SPLIT_FOLDERS, CSV, LABELLING_EXPORT, MASKED_IMAGES = LAYOUTS


def detect_layout(path: str | os.PathLike[str], *, image_column: str | None = None) -> str:
    """Which layout ``path`` holds: see the package docstring. Raises DatasetError when none."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".tsv"):
            raise DatasetError(f"{path}: a data set is a folder or a CSV manifest")
        rows, header = read_csv(path)
        column = pick_column(path, header, image_column, IMAGE_COLUMNS, "image")
        urls = any(is_url(row.get(column, "")) for row in rows)
        return LABELLING_EXPORT if urls else CSV
    splits = split_dirs(path)
    if "train" in splits and class_dirs(splits["train"]):
        return SPLIT_FOLDERS
    if class_dirs(path):
        return FOLDERS
    manifests = _manifests(path)
    if len(manifests) == 1:
        return detect_layout(manifests[0], image_column=image_column)
    if find_masks_dir(path) is not None:
        return MASKED_IMAGES
    raise DatasetError(
        f"{path}: no layout recognised: expected class folders ROOT/<class>/<images>, "
        "ROOT/train/<class>/..., a CSV manifest (path,label[,group][,split]) or, for "
        "segmentation, images with their masks in ROOT/masks/"
    )


def _manifests(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.csv") if p.is_file())


def _read_folders(path: Path, options: LoadOptions, dropped, ignored) -> list[Sample]:
    if not path.is_dir():
        raise DatasetError(f"{path}: layout {FOLDERS} needs a folder")
    return load_folders(path, ignored)


def _read_split_folders(path: Path, options: LoadOptions, dropped, ignored) -> list[Sample]:
    if not path.is_dir() or "train" not in split_dirs(path):
        raise DatasetError(f"{path}: layout {SPLIT_FOLDERS} needs ROOT/train/<class>/")
    return load_split_folders(path, ignored)


def _read_manifest(path: Path, options: LoadOptions, dropped, ignored) -> list[Sample]:
    if path.is_dir():
        manifests = _manifests(path)
        if len(manifests) != 1:
            raise DatasetError(
                f"{path}: a manifest layout needs one CSV file (found {len(manifests)} in the folder)"
            )
        path = manifests[0]
    return load_csv(path, options, dropped)


def _read_masked_images(path: Path, options: LoadOptions, dropped, ignored) -> list[Sample]:
    if not path.is_dir() or find_masks_dir(path) is None:
        raise DatasetError(f"{path}: layout {MASKED_IMAGES} needs a folder of images with masks/")
    return load_masked_images(path, ignored)


Reader = Callable[[Path, LoadOptions, list[ImageIssue], list[Path]], list[Sample]]
# One row a layout: reader(path, options, dropped, ignored) -> samples (labels still -1).
READERS: dict[str, Reader] = {
    FOLDERS: _read_folders,
    SPLIT_FOLDERS: _read_split_folders,
    CSV: _read_manifest,
    LABELLING_EXPORT: _read_manifest,  # a CSV whose images are URLs: the same reader
    MASKED_IMAGES: _read_masked_images,
}


def read_layout(
    path: Path,
    layout: str,
    options: LoadOptions,
    dropped: list[ImageIssue],
    ignored: list[Path],
) -> tuple[list[Sample], str]:
    """The samples at ``path`` read as ``layout`` (``auto``: detected), and the layout read."""
    if layout not in LAYOUTS:
        raise DatasetError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if layout == AUTO:
        layout = detect_layout(path, image_column=options.image_column)
    return READERS[layout](path, options, dropped, ignored), layout
