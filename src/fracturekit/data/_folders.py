"""Folder layouts: ``ROOT/<class>/*`` and ``ROOT/{train,val,test}/<class>/*``, with ``masks/``."""

from __future__ import annotations

from pathlib import Path

from fracturekit.data._records import DatasetError, Sample
from fracturekit.io import is_image_file

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
MASKS_DIR = "masks"


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(
        p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))
    )


def class_dirs(path: Path) -> list[Path]:
    return [p for p in _visible_dirs(path) if p.name.lower() != MASKS_DIR]


def split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in _visible_dirs(root):
        split = SPLIT_NAMES.get(d.name.lower())
        if split is None:
            continue
        if split in found:
            raise DatasetError(f"{root}: both {found[split].name}/ and {d.name}/ hold {split} data")
        found[split] = d
    return found


def mask_index(*folders: Path) -> dict[str, Path]:
    """stem -> mask file for the image files in ``folders`` (first folder wins; .png first)."""
    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        files = sorted(
            (p for p in folder.iterdir() if p.is_file() and is_image_file(p)),
            key=lambda p: (p.suffix.lower() != ".png", p.name),
        )
        for p in files:
            index.setdefault(p.stem, p)
    return index


def find_masks_dir(folder: Path) -> Path | None:
    for d in _visible_dirs(folder) if folder.is_dir() else []:
        if d.name.lower() == MASKS_DIR:
            return d
    return None


def _scan_class_tree(
    root: Path, split: str | None, masks: dict[str, Path], ignored: list[Path]
) -> list[Sample]:
    samples = []
    for class_dir in class_dirs(root):
        for p in sorted(class_dir.rglob("*")):
            if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            if is_image_file(p):
                samples.append(Sample(p, -1, class_dir.name, mask=masks.get(p.stem), split=split))
            else:
                ignored.append(p)
    return samples


def masks_beside(folder: Path) -> dict[str, Path]:
    """stem -> mask file of the ``masks/`` folder inside ``folder`` (empty when there is none)."""
    masks_dir = find_masks_dir(folder)
    return mask_index(masks_dir) if masks_dir else {}


def load_folders(root: Path, ignored: list[Path]) -> list[Sample]:
    samples = _scan_class_tree(root, None, masks_beside(root), ignored)
    if not samples:
        raise DatasetError(f"{root}: no images found in class folders ROOT/<class>/")
    return samples


def load_masked_images(root: Path, ignored: list[Path]) -> list[Sample]:
    """A folder of images (no class folders) with ``masks/``: one class named after the folder
    (segmentation data; an image without a mask file has no pixel truth)."""
    masks = masks_beside(root)
    samples = []
    for p in sorted(root.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if is_image_file(p):
            samples.append(Sample(p, -1, root.name, mask=masks.get(p.stem)))
        else:
            ignored.append(p)
    if not samples:
        raise DatasetError(f"{root}: no images found beside masks/")
    return samples


def load_split_folders(root: Path, ignored: list[Path]) -> list[Sample]:
    root_masks = find_masks_dir(root)
    samples = []
    for split, folder in sorted(split_dirs(root).items()):
        local = find_masks_dir(folder)
        masks = mask_index(*(d for d in (local, root_masks) if d is not None))
        samples += _scan_class_tree(folder, split, masks, ignored)
    if not any(s.split == "train" for s in samples):
        raise DatasetError(f"{root}: no images found under train/<class>/")
    return samples
