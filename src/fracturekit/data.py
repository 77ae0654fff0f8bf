"""Data sets: samples from folders or CSV manifests, splits, transforms, imbalance helpers.

Layouts (``layout="auto"`` detects them; a flag forces one):

* ``folders``: ``ROOT/<class>/*`` (nested sub-folders belong to their class).
* ``split-folders``: ``ROOT/{train,val|valid|validation,test}/<class>/*``; class names may
  contain spaces (``not fractured``). Without a val split, one is carved from train.
* ``csv``: a manifest ``path,label[,group][,split][,mask]``; paths relative to the CSV or
  absolute. Other column names are chosen with ``image_column``/``label_column``/
  ``group_column``. A name without an extension (``crack500_patches/patches.csv``'s ``patch``
  column) is resolved to the one image file ``<csv dir>/<name>.*`` or
  ``<csv dir>/<label>/<name>.*``.
* ``labelling-export``: a CSV whose image column holds http(s) URLs and whose label column holds
  JSON (``{"labels": ["Crack"]}``), the label picked by ``label_key``, a dotted path such as
  ``labels.0`` or ``choices``. URLs are downloaded once into a cache folder with timeouts and a
  size cap; every failed URL is reported. (Any CSV may mix plain labels, JSON labels, paths and
  URLs; the layout name says what was detected.)

A folder named ``masks/`` beside the class folders holds binary masks ``masks/<stem>.png`` (any
image extension) and is never a class; samples with a mask get ``Sample.mask``.

Splits are stratified by class with a fixed seed. When samples have groups (a ``group`` column:
patient, source photo) every split is group-disjoint, made with scikit-learn's
``StratifiedGroupKFold`` using ``round(1 / fraction)`` folds, so the fraction is approximate
(whole groups move). Class order is sorted by name; labels are indices into it.

Unusable files policy: ``load_dataset`` decodes every file (images and masks) up front with
:func:`fracturekit.io.check_images`, so a bad file never stops a long run halfway.

* default: a sample whose image or mask cannot be read (or whose URL failed to download, or
  whose manifest row has no label) is **left out** and named in ``DatasetSplits.dropped``;
  truncated files load and are named in ``DatasetSplits.warnings``. Both are also logged as
  warnings on the ``fracturekit.data`` logger, so they are never silent.
* ``strict=True``: any of the above, truncated files included, raises :class:`DatasetError`
  listing every file.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings as _warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit._files import atomic_write_bytes
from fracturekit.io import (
    IMAGE_EXTENSIONS,
    ImageIssue,
    check_images,
    is_image_file,
    read_image,
    read_mask,
)

log = logging.getLogger("fracturekit.data")

LAYOUTS = ("auto", "folders", "split-folders", "csv", "labelling-export")
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
IMAGE_COLUMNS = ("path", "image", "file", "filename", "image_path", "filepath", "img")
LABEL_COLUMNS = ("label", "class", "class_name", "target", "category")
JSON_LABEL_KEYS = ("labels", "label", "choices", "choice", "class")
DEFAULT_DOWNLOAD_TIMEOUT = 30.0
DEFAULT_MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024


class DatasetError(ValueError):
    """A data set cannot be loaded as asked; the message names the files or rows and why."""


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``label`` indexes ``DatasetSplits.classes``; ``url`` is where a
    downloaded image came from (``path`` is then its file in the download cache)."""

    path: Path
    label: int
    class_name: str
    mask: Path | None = None
    group: str | None = None
    split: str | None = None
    url: str | None = None

    @property
    def source(self) -> str:
        """How to name the sample to a person: its URL if downloaded, else its path."""
        return self.url or str(self.path)


@dataclass
class DatasetSplits:
    """A loaded data set.

    Attributes:
        classes: class names, sorted; ``Sample.label`` indexes this list.
        train, val, test: the samples of each split (``val``/``test`` may be empty).
        layout: the layout read (``folders``, ``split-folders``, ``csv``, ``labelling-export``).
        warnings: files that load with a caveat (truncated), as ``(path, reason)``.
        dropped: samples left out, as ``(path or URL, reason)``: unreadable image or mask,
            failed download, manifest row without a label.
        ignored: files in class folders that are not images by name (``notes.txt``).
        root: the data set path given.
    """

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    layout: str
    warnings: list[ImageIssue] = field(default_factory=list)
    dropped: list[ImageIssue] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    root: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def splits(self) -> dict[str, list[Sample]]:
        """``{"train": [...], "val": [...], "test": [...]}``."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def all_samples(self) -> list[Sample]:
        return [*self.train, *self.val, *self.test]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class name: count}}`` with every class listed (zeros included)."""
        return {
            name: {c: sum(s.class_name == c for s in samples) for c in self.classes}
            for name, samples in self.splits().items()
        }

    def problems(self) -> list[str]:
        """Human-readable lines about left-out and truncated files (empty when clean)."""
        lines = []
        if self.dropped:
            lines.append(f"left out {len(self.dropped)} unusable file(s):")
            lines += [f"  {issue}" for issue in self.dropped]
        if self.warnings:
            lines.append(f"loaded {len(self.warnings)} truncated file(s) (--strict refuses them):")
            lines += [f"  {issue}" for issue in self.warnings]
        return lines


# --------------------------------------------------------------------------------------------
# layouts


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(
        p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))
    )


def _class_dirs(path: Path) -> list[Path]:
    return [p for p in _visible_dirs(path) if p.name.lower() != MASKS_DIR]


def _split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in _visible_dirs(root):
        split = SPLIT_NAMES.get(d.name.lower())
        if split is None:
            continue
        if split in found:
            raise DatasetError(f"{root}: both {found[split].name}/ and {d.name}/ hold {split} data")
        found[split] = d
    return found


def detect_layout(path: str | os.PathLike[str], *, image_column: str | None = None) -> str:
    """Which layout ``path`` holds: see the module docstring. Raises DatasetError when none."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".tsv"):
            raise DatasetError(f"{path}: a data set is a folder or a CSV manifest")
        rows, header = _read_csv(path)
        column = _pick_column(path, header, image_column, IMAGE_COLUMNS, "image")
        urls = any(_is_url(row.get(column, "")) for row in rows)
        return "labelling-export" if urls else "csv"
    splits = _split_dirs(path)
    if "train" in splits and _class_dirs(splits["train"]):
        return "split-folders"
    if _class_dirs(path):
        return "folders"
    manifests = sorted(p for p in path.glob("*.csv") if p.is_file())
    if len(manifests) == 1:
        return detect_layout(manifests[0], image_column=image_column)
    raise DatasetError(
        f"{path}: no layout recognised: expected class folders ROOT/<class>/<images>, "
        "ROOT/train/<class>/..., or a CSV manifest (path,label[,group][,split])"
    )


def _mask_index(*folders: Path) -> dict[str, Path]:
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


def _find_masks_dir(folder: Path) -> Path | None:
    for d in _visible_dirs(folder) if folder.is_dir() else []:
        if d.name.lower() == MASKS_DIR:
            return d
    return None


def _scan_class_tree(
    root: Path, split: str | None, masks: dict[str, Path], ignored: list[Path]
) -> list[Sample]:
    samples = []
    for class_dir in _class_dirs(root):
        for p in sorted(class_dir.rglob("*")):
            if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            if is_image_file(p):
                samples.append(Sample(p, -1, class_dir.name, mask=masks.get(p.stem), split=split))
            else:
                ignored.append(p)
    return samples


def _load_folders(root: Path, ignored: list[Path]) -> list[Sample]:
    masks_dir = _find_masks_dir(root)
    masks = _mask_index(masks_dir) if masks_dir else {}
    samples = _scan_class_tree(root, None, masks, ignored)
    if not samples:
        raise DatasetError(f"{root}: no images found in class folders ROOT/<class>/")
    return samples


def _load_split_folders(root: Path, ignored: list[Path]) -> list[Sample]:
    root_masks = _find_masks_dir(root)
    samples = []
    for split, folder in sorted(_split_dirs(root).items()):
        local = _find_masks_dir(folder)
        masks = _mask_index(*(d for d in (local, root_masks) if d is not None))
        samples += _scan_class_tree(folder, split, masks, ignored)
    if not any(s.split == "train" for s in samples):
        raise DatasetError(f"{root}: no images found under train/<class>/")
    return samples


# --------------------------------------------------------------------------------------------
# CSV manifests and labelling-tool exports


def _read_csv(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read manifest ({exc})") from None
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise DatasetError(f"{path}: empty manifest (no header row)")
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return rows, header


def _pick_column(
    path: Path, header: list[str], chosen: str | None, candidates: Sequence[str], what: str
) -> str:
    if chosen is not None:
        if chosen not in header:
            raise DatasetError(
                f"{path}: no column {chosen!r} for the {what}; columns: {', '.join(header)}"
            )
        return chosen
    lower = {h.lower(): h for h in header}
    for name in candidates:
        if name in lower:
            return lower[name]
    raise DatasetError(
        f"{path}: no {what} column (tried {', '.join(candidates)}); columns: {', '.join(header)}."
        f" Name it with --{what}-column."
    )


def _is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def _json_label(value: str, key: str | None) -> str:
    """The class name inside a JSON annotation, following the dotted ``key`` path."""
    try:
        node: Any = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"label is not valid JSON ({exc.msg})") from None
    if key:
        for part in key.split("."):
            if isinstance(node, list) and part.lstrip("-").isdigit():
                index = int(part)
                if not -len(node) <= index < len(node):
                    raise ValueError(f"label key {key!r}: index {index} out of range")
                node = node[index]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise ValueError(f"label key {key!r}: no {part!r} in {json.dumps(node)[:80]}")
    elif isinstance(node, dict):
        found = [k for k in JSON_LABEL_KEYS if k in node]
        if not found:
            raise ValueError(f"JSON label has no {'/'.join(JSON_LABEL_KEYS)} key; give --label-key")
        node = node[found[0]]
    while isinstance(node, list) and len(node) == 1:
        node = node[0]
    if isinstance(node, dict) and not key:
        found = [k for k in JSON_LABEL_KEYS if k in node]
        node = node[found[0]] if found else node
        while isinstance(node, list) and len(node) == 1:
            node = node[0]
    if isinstance(node, (str, int)) and not isinstance(node, bool):
        text = str(node).strip()
        if text:
            return text
        raise ValueError("empty label")
    if isinstance(node, list) and not node:
        raise ValueError("no label (empty list)")
    raise ValueError(f"label is not a single class name: {json.dumps(node)[:80]}")


class _StemIndex:
    """Lazily listed folders: ``find(folder, stem)`` -> the single image named ``stem.*``."""

    def __init__(self) -> None:
        self._folders: dict[Path, dict[str, list[Path]]] = {}

    def find(self, folder: Path, stem: str) -> list[Path]:
        if folder not in self._folders:
            index: dict[str, list[Path]] = defaultdict(list)
            if folder.is_dir():
                for entry in os.scandir(folder):
                    p = Path(entry.path)
                    if entry.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                        index[p.stem].append(p)
            self._folders[folder] = index
        return self._folders[folder].get(stem, [])


def _resolve_path(base: Path, name: str, label: str, stems: _StemIndex) -> Path:
    path = Path(name)
    if not path.is_absolute():
        path = base / path
    if path.exists() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return path
    # An extension-less name: <base>/<name>.* or <base>/<label>/<name>.*
    for folder in (path.parent, base / label / Path(name).parent):
        hits = stems.find(folder, path.name)
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(f"{name!r} matches several files: {', '.join(map(str, hits))}")
    return path  # does not exist: the up-front check names it


def _load_csv(
    path: Path,
    *,
    image_column: str | None,
    label_column: str | None,
    label_key: str | None,
    group_column: str | None,
    cache_dir: Path | None,
    dropped: list[ImageIssue],
    download_timeout: float,
    max_download_bytes: int,
) -> list[Sample]:
    rows, header = _read_csv(path)
    if not rows:
        raise DatasetError(f"{path}: the manifest has no rows")
    image_col = _pick_column(path, header, image_column, IMAGE_COLUMNS, "image")
    label_col = _pick_column(path, header, label_column, LABEL_COLUMNS, "label")
    group_col = _pick_column(path, header, group_column, (), "group") if group_column else None
    if group_col is None and "group" in {h.lower() for h in header}:
        group_col = _pick_column(path, header, None, ("group",), "group")
    lower = {h.lower(): h for h in header}
    split_col, mask_col = lower.get("split"), lower.get("mask")
    base = path.parent
    stems = _StemIndex()
    masks_dir = _find_masks_dir(base)
    masks = _mask_index(masks_dir) if masks_dir else {}

    # Pass 1: labels, paths and splits (nothing is downloaded for a row that is unusable).
    samples, bad_rows = [], []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"{path.name} row {number}"
        image = row.get(image_col, "")
        if not image:
            bad_rows.append(f"{where}: empty {image_col!r}")
            continue
        raw_label = row.get(label_col, "")
        try:
            if label_key or raw_label.startswith(("{", "[")):
                label = _json_label(raw_label, label_key)
            elif raw_label:
                label = raw_label
            else:
                raise ValueError("no label")
        except ValueError as exc:
            dropped.append(ImageIssue(image, f"{where}: {exc}"))
            continue
        url = image if _is_url(image) else None
        try:
            file = Path(image) if url else _resolve_path(base, image, label, stems)
        except ValueError as exc:
            bad_rows.append(f"{where}: {exc}")
            continue
        split = None
        if split_col and row.get(split_col):
            split = SPLIT_NAMES.get(row[split_col].lower())
            if split is None:
                bad_rows.append(f"{where}: split {row[split_col]!r} is not train, val or test")
                continue
        if mask_col and row.get(mask_col):
            mask = Path(row[mask_col])
            mask = mask if mask.is_absolute() else base / mask
        else:
            mask = None if url else masks.get(file.stem)
        group = (row.get(group_col) or None) if group_col else None
        samples.append(Sample(file, -1, label, mask=mask, group=group, split=split, url=url))
    # Pass 2: download the URLs once into the cache; a failed URL drops its rows (named).
    urls = sorted({s.url for s in samples if s.url})
    if urls and not bad_rows:
        local_of, failed = download_images(
            urls,
            cache_dir or default_cache_dir(),
            timeout=download_timeout,
            max_bytes=max_download_bytes,
        )
        dropped.extend(failed)
        samples = [
            dataclasses.replace(s, path=local_of[s.url]) if s.url else s
            for s in samples
            if not s.url or s.url in local_of
        ]
    if bad_rows:
        shown = "\n  ".join(bad_rows[:20])
        more = f"\n  ... and {len(bad_rows) - 20} more" if len(bad_rows) > 20 else ""
        raise DatasetError(f"{path}: {len(bad_rows)} bad manifest row(s):\n  {shown}{more}")
    if not samples:
        reasons = "\n  ".join(str(d) for d in dropped[:10])
        raise DatasetError(f"{path}: no usable rows. First problems:\n  {reasons}")
    return samples


def default_cache_dir() -> Path:
    """``$FRACTUREKIT_CACHE`` or ``$XDG_CACHE_HOME/fracturekit`` (``~/.cache/fracturekit``),
    plus ``downloads``."""
    if os.environ.get("FRACTUREKIT_CACHE"):
        return Path(os.environ["FRACTUREKIT_CACHE"]) / "downloads"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fracturekit" / "downloads"


def _cache_name(url: str) -> str:
    digest = hashlib.blake2b(url.encode("utf-8"), digest_size=16).hexdigest()
    suffix = Path(urllib.parse.urlparse(url).path).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        suffix = ""
    return digest + suffix


def _fetch(url: str, target: Path, timeout: float, max_bytes: int) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {parsed.scheme!r}")
    request = urllib.request.Request(url, headers={"User-Agent": "fracturekit"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/s only)
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise ValueError(f"{int(declared)} bytes, over the {max_bytes}-byte download cap")
        chunks, total = [], 0
        while True:
            chunk = response.read(1 << 16)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise ValueError(f"over the {max_bytes}-byte download cap")
            chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise ValueError("empty response")
    atomic_write_bytes(target, data)


def download_images(
    urls: Iterable[str],
    cache_dir: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    workers: int = 8,
) -> tuple[dict[str, Path], list[ImageIssue]]:
    """Download each URL once into ``cache_dir`` (a file already there is reused).

    Args:
        urls: http(s) URLs.
        cache_dir: where files go, named by a hash of the URL.
        timeout: seconds for connecting and for each read.
        max_bytes: refuse larger downloads (declared or actual size).
        workers: parallel downloads.

    Returns:
        ``({url: local file}, [(url, reason) for each URL that failed])``.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(urls))

    def one(url: str) -> Path | str:
        target = cache / _cache_name(url)
        if target.is_file() and target.stat().st_size > 0:
            return target
        try:
            _fetch(url, target, timeout, max_bytes)
        except urllib.error.HTTPError as exc:
            return f"download failed: HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            return f"download failed: {exc.reason}"
        except TimeoutError:
            return f"download failed: timed out after {timeout:g} s"
        except (OSError, ValueError) as exc:
            return f"download failed: {exc}"
        return target

    local: dict[str, Path] = {}
    failed: list[ImageIssue] = []
    if not unique:
        return local, failed
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique)))) as pool:
        for url, result in zip(unique, pool.map(one, unique), strict=True):
            if isinstance(result, Path):
                local[url] = result
            else:
                failed.append(ImageIssue(url, result))  # type: ignore[arg-type]
    return local, failed


# --------------------------------------------------------------------------------------------
# splitting


def _stratified_take(samples: list[Sample], fraction: float, seed: int) -> tuple[list, list]:
    """Per class, a seeded ``round(n * fraction)`` of the samples (at least one from a class of
    two or more, never all of it)."""
    if fraction <= 0 or not samples:
        return samples, []
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_class[s.class_name].append(i)
    taken: set[int] = set()
    for name in sorted(by_class):
        idx = by_class[name]
        n = len(idx)
        k = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
        taken.update(idx[j] for j in rng.permutation(n)[:k])
    taken -= _straddling_copies(samples, taken)
    keep = [s for i, s in enumerate(samples) if i not in taken]
    return keep, [s for i, s in enumerate(samples) if i in taken]


def content_digest(path: str | os.PathLike[str]) -> str:
    """A hash of a file's bytes: identical files have identical digests."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _digest_or_path(sample: Sample) -> str:
    # A file that cannot be read has already been reported by the up-front check; it is unique.
    try:
        return content_digest(sample.path)
    except OSError:
        return f"path:{sample.path}"


def _straddling_copies(samples: list[Sample], taken: set[int]) -> set[int]:
    """Indices in ``taken`` whose file has an identical copy outside ``taken``.

    Real data sets hold byte-identical files under different names (FracAtlas has several); a
    random split that puts one copy in training and another in validation inflates validation
    scores. Such copies are kept on the training side, so validation never sees an image that
    training saw.
    """
    if not taken:
        return set()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(_digest_or_path, samples))
    outside = {d for i, d in enumerate(digests) if i not in taken}
    return {i for i in taken if digests[i] in outside}


def _group_take(samples: list[Sample], fraction: float, seed: int) -> tuple[list, list]:
    """Whole groups, stratified by class: one fold of StratifiedGroupKFold(round(1/fraction))."""
    from sklearn.model_selection import StratifiedGroupKFold

    if fraction <= 0 or not samples:
        return samples, []
    groups = [s.group if s.group is not None else f"file:{s.path}" for s in samples]
    n_groups = len(set(groups))
    if n_groups < 2:
        raise DatasetError("cannot make a group-disjoint split: every sample is in one group")
    n_splits = min(max(2, round(1 / fraction)), n_groups)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with _warnings.catch_warnings():
        # "The least populated class in y has only N members": fine, groups decide anyway.
        _warnings.simplefilter("ignore", UserWarning)
        _, held = next(
            splitter.split(np.zeros(len(samples)), [s.class_name for s in samples], groups)
        )
    held_set = set(held.tolist())
    keep = [s for i, s in enumerate(samples) if i not in held_set]
    return keep, [s for i, s in enumerate(samples) if i in held_set]


def split_samples(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split off ``fraction`` of ``samples``: stratified by class, group-disjoint when any
    sample has a group; byte-identical copies of a file never straddle the two sides. Returns
    ``(rest, taken)``, both in input order."""
    if any(s.group is not None for s in samples):
        return _group_take(samples, fraction, seed)
    return _stratified_take(samples, fraction, seed)


# --------------------------------------------------------------------------------------------
# load_dataset


def _read_layout(
    path: Path,
    layout: str,
    opts: dict[str, Any],
    dropped: list[ImageIssue],
    ignored: list[Path],
) -> tuple[list[Sample], str]:
    if layout not in LAYOUTS:
        raise DatasetError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if layout == "auto":
        layout = detect_layout(path, image_column=opts["image_column"])
    if layout == "folders":
        if not path.is_dir():
            raise DatasetError(f"{path}: layout folders needs a folder")
        return _load_folders(path, ignored), layout
    if layout == "split-folders":
        if not path.is_dir() or "train" not in _split_dirs(path):
            raise DatasetError(f"{path}: layout split-folders needs ROOT/train/<class>/")
        return _load_split_folders(path, ignored), layout
    # csv / labelling-export
    if path.is_dir():
        manifests = sorted(p for p in path.glob("*.csv") if p.is_file())
        if len(manifests) != 1:
            raise DatasetError(
                f"{path}: layout {layout} needs a CSV file (found {len(manifests)} in the folder)"
            )
        path = manifests[0]
    return _load_csv(path, dropped=dropped, **opts), layout


def _with_labels(samples: Iterable[Sample], classes: list[str], split: str) -> list[Sample]:
    index = {c: i for i, c in enumerate(classes)}
    return [
        dataclasses.replace(s, label=index[s.class_name], split=split)
        for s in sorted(samples, key=lambda s: (s.class_name, str(s.path)))
    ]


def _listing(issues: Sequence[Any], limit: int = 30) -> str:
    lines = [f"  {i}" for i in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"  ... and {len(issues) - limit} more")
    return "\n".join(lines)


def load_dataset(
    path: str | os.PathLike[str],
    *,
    layout: str = "auto",
    val: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    label_key: str | None = None,
    group_column: str | None = None,
    strict: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    check: bool = True,
    max_pixels: int | None = None,
    download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
) -> DatasetSplits:
    """Load a data set of any supported layout, check every file, and split it.

    Args:
        path: a folder or a CSV manifest.
        layout: ``auto`` or one of ``folders``, ``split-folders``, ``csv``, ``labelling-export``.
        val, test: separate data sets (any layout) for validation / test. Giving one while
            ``path`` has its own split of that name is an error.
        val_fraction, test_fraction: the share of the whole data carved out (stratified, group-
            disjoint with groups) for a split that neither ``path`` nor ``val``/``test`` gives.
        seed: seed of the splits.
        image_column, label_column, group_column: CSV column names.
        label_key: dotted key path to the class name inside a JSON label column.
        strict: raise on any unusable or truncated file instead of leaving it out / warning.
        cache_dir: download cache for URL manifests (default :func:`default_cache_dir`).
        check: decode every image and mask up front (turn off only when the caller checks).
        max_pixels: decompression-bomb limit (see :func:`fracturekit.io.max_pixels_limit`).
        download_timeout, max_download_bytes: per-URL limits for URL manifests.

    Raises:
        DatasetError: no layout, bad manifest rows, an unknown class in val/test, nothing left,
            or (strict) any unusable or truncated file.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DatasetError("val_fraction and test_fraction must lie in [0, 1) and sum below 1")
    root = Path(path)
    opts = {
        "image_column": image_column,
        "label_column": label_column,
        "label_key": label_key,
        "group_column": group_column,
        "cache_dir": Path(cache_dir) if cache_dir is not None else None,
        "download_timeout": download_timeout,
        "max_download_bytes": max_download_bytes,
    }
    dropped: list[ImageIssue] = []
    ignored: list[Path] = []
    samples, kind = _read_layout(root, layout, opts, dropped, ignored)
    extra: dict[str, list[Sample]] = {}
    for split, other in (("val", val), ("test", test)):
        if other is None:
            continue
        if any(s.split == split for s in samples):
            raise DatasetError(
                f"{root} already has a {split} split; drop --{split} or its {split} part"
            )
        other_samples, _ = _read_layout(Path(other), "auto", opts, dropped, ignored)
        extra[split] = [dataclasses.replace(s, split=split) for s in other_samples]

    everything = samples + [s for part in extra.values() for s in part]
    warnings: list[ImageIssue] = []
    if check:
        files = [s.path for s in everything] + [s.mask for s in everything if s.mask is not None]
        report = check_images(files, strict=strict, max_pixels=max_pixels)
        bad = {Path(issue.path): issue for issue in report.errors}
        url_of = {s.path: s.url for s in everything if s.url}
        warnings = [ImageIssue(url_of.get(w.path, w.path), w.reason) for w in report.warnings]
        if strict and (bad or dropped):
            issues = [*dropped, *report.errors]
            raise DatasetError(
                f"{root}: {len(issues)} unusable file(s) (strict mode refuses them, truncated "
                f"files included):\n{_listing(issues)}"
            )
        if bad:
            kept = []
            for s in everything:
                issue = bad.get(s.path) or (bad.get(s.mask) if s.mask is not None else None)
                if issue is None:
                    kept.append(s)
                else:
                    what = "" if issue.path == s.path else f"its mask {issue.path}: "
                    dropped.append(ImageIssue(s.url or s.path, what + issue.reason))
            drop_set = {id(s) for s in everything} - {id(s) for s in kept}
            samples = [s for s in samples if id(s) not in drop_set]
            extra = {k: [s for s in v if id(s) not in drop_set] for k, v in extra.items()}
    elif strict and dropped:
        raise DatasetError(f"{root}: {len(dropped)} unusable row(s):\n{_listing(dropped)}")

    classes = sorted({s.class_name for s in samples if s.split in (None, "train")})
    if not classes:
        raise DatasetError(f"{root}: no usable training samples left\n{_listing(dropped)}")
    unknown = sorted(
        {s.class_name for s in samples + [x for v in extra.values() for x in v]} - set(classes)
    )
    if unknown:
        raise DatasetError(
            f"{root}: class(es) {', '.join(unknown)} appear in val/test but not in train "
            f"(train classes: {', '.join(classes)})"
        )

    parts = {
        "val": [s for s in samples if s.split == "val"] + extra.get("val", []),
        "test": [s for s in samples if s.split == "test"] + extra.get("test", []),
    }
    pool = sorted(
        (s for s in samples if s.split in (None, "train")),
        key=lambda s: (s.class_name, str(s.path)),
    )
    carved = 0.0  # share of the pool already given to test
    if not parts["test"] and test_fraction > 0:
        pool, parts["test"] = split_samples(pool, test_fraction, seed)
        carved = test_fraction
    if not parts["val"] and val_fraction > 0:
        # val_fraction is a share of the whole; after carving test, of what is left.
        pool, parts["val"] = split_samples(pool, val_fraction / (1 - carved), seed + 1)

    result = DatasetSplits(
        classes=classes,
        train=_with_labels(pool, classes, "train"),
        val=_with_labels(parts["val"], classes, "val"),
        test=_with_labels(parts["test"], classes, "test"),
        layout=kind,
        warnings=warnings,
        dropped=dropped,
        ignored=ignored,
        root=root,
    )
    _log_problems(result)
    return result


def _log_problems(splits: DatasetSplits, shown: int = 5) -> None:
    """One warning per kind of problem, so that even a caller who ignores the lists sees it."""
    for issues, what in (
        (splits.dropped, "left out {n} unusable file(s)"),
        (splits.warnings, "loaded {n} truncated file(s)"),
    ):
        if issues:
            names = ", ".join(str(i.path) for i in issues[:shown])
            more = f" and {len(issues) - shown} more" if len(issues) > shown else ""
            log.warning("%s: %s: %s%s", splits.root, what.format(n=len(issues)), names, more)


# --------------------------------------------------------------------------------------------
# transforms


_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _per_channel(values: Sequence[float], channels: int, what: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if channels == 1:
        return [sum(values) / len(values)]  # a gray image of an RGB-normalised backbone
    if len(values) == 1:
        return values * channels
    raise ValueError(f"{what} has {len(values)} values for {channels} channels")


class ImageTransform:
    """The callable :func:`build_transforms` returns; picklable for DataLoader workers.

    ``transform(image, mask=None) -> (float32 tensor C x H x W normalised, mask tensor
    1 x H x W of 0./1. or None)``. The image is a PIL image (or a C x H x W uint8 tensor);
    the mask a ``bool``/``uint8`` array or tensor of the image's height x width. Geometric
    steps move the mask exactly as the image (torchvision ``tv_tensors.Mask``, nearest
    neighbour); brightness/contrast/blur/noise touch the image only.
    """

    def __init__(
        self,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "none",
        channels: int = 3,
        interpolation: str = "bilinear",
    ):
        if augment not in ("none", "default", "strong"):
            raise ValueError(f"augment={augment!r}: use none, default or strong")
        if channels not in (1, 3):
            raise ValueError(f"channels={channels}: must be 1 or 3")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r}: use {', '.join(_INTERPOLATIONS)}")
        self.img_size = int(img_size)
        self.mean = _per_channel(mean, channels, "mean")
        self.std = _per_channel(std, channels, "std")
        self.augment = augment
        self.channels = channels
        self.interpolation = interpolation
        self.pipeline = self._build()

    def _build(self):
        import torch
        from torchvision.transforms import InterpolationMode, v2

        size = (self.img_size, self.img_size)
        interp = InterpolationMode(self.interpolation)
        steps: list[Any] = []
        if self.augment == "strong":
            steps.append(
                v2.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interp, antialias=True)
            )
        else:
            steps.append(v2.Resize(size, interpolation=interp, antialias=True))
        if self.augment == "default":
            steps += [
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                v2.ColorJitter(brightness=0.2, contrast=0.2),
            ]
        elif self.augment == "strong":
            steps += [
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.RandomApply([v2.RandomRotation(90)], p=0.25),
                v2.RandomAffine(degrees=30, translate=(0.15, 0.15), scale=(0.8, 1.25), shear=8),
                v2.ColorJitter(brightness=0.4, contrast=0.4),
                v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.3),
                v2.RandomAutocontrast(p=0.2),
            ]
        steps.append(v2.ToDtype(torch.float32, scale=True))
        if self.augment == "strong":
            steps.append(v2.RandomApply([v2.GaussianNoise(sigma=0.03)], p=0.3))
        steps.append(v2.Normalize(self.mean, self.std))
        return v2.Compose(steps)

    def __call__(self, image: Any, mask: Any = None):
        import torch
        from PIL import Image
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        if isinstance(image, Image.Image):
            want = "L" if self.channels == 1 else "RGB"
            if image.mode != want:
                image = image.convert(want)
            tensor = F.pil_to_tensor(image)
        else:
            tensor = torch.as_tensor(image)
            if tensor.ndim == 2:
                tensor = tensor[None]
            if tensor.shape[0] != self.channels:
                if self.channels == 3 and tensor.shape[0] == 1:
                    tensor = tensor.expand(3, -1, -1)
                else:
                    raise ValueError(f"image has {tensor.shape[0]} channels, want {self.channels}")
        img = tv_tensors.Image(tensor)
        if mask is None:
            return self.pipeline(img).as_subclass(torch.Tensor), None
        if isinstance(mask, Image.Image):
            mask = np.asarray(mask) > 0
        m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
        if m.ndim == 3:
            m = m[0]
        if tuple(m.shape) != tuple(tensor.shape[-2:]):
            raise ValueError(
                f"mask is {tuple(m.shape)} (H, W) but the image is {tuple(tensor.shape[-2:])}"
            )
        out_img, out_mask = self.pipeline(img, tv_tensors.Mask((m > 0).to(torch.uint8)[None]))
        return out_img.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor).float()

    def __repr__(self) -> str:
        return (
            f"ImageTransform(img_size={self.img_size}, augment={self.augment!r}, "
            f"channels={self.channels}, interpolation={self.interpolation!r})"
        )


def build_transforms(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    augment: str = "none",
    channels: int = 3,
    interpolation: str = "bilinear",
) -> ImageTransform:
    """The preprocessing (and augmentation) of one split.

    * ``none`` (evaluation): resize to ``img_size`` x ``img_size``, scale to [0, 1], normalise.
    * ``default`` (the seeds' set): resize, horizontal and vertical flips, rotation up to 10
      degrees, shifts up to 10%, zoom 0.9-1.1, brightness and contrast +-20%.
    * ``strong``: random resized crop (60-100% of the area), flips, 90-degree turns, rotation up
      to 30 degrees, shifts 15%, zoom 0.8-1.25, shear, brightness and contrast +-40%, blur,
      autocontrast and Gaussian noise.

    ``mean``/``std`` with three values and ``channels=1`` are averaged into one.
    """
    return ImageTransform(img_size, mean, std, augment, channels, interpolation)


class ImageDataset:
    """Map-style data set over samples: ``(x, y)`` or, ``with_masks``, ``(x, y, mask)``.

    Images are read with :func:`fracturekit.io.read_image` (non-strict: the up-front check of
    :func:`load_dataset` already reported truncated files); masks with the image's EXIF
    orientation. A sample without a mask gets an all-zero mask. Plain attributes only, so it
    pickles into DataLoader worker processes.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[..., Any] | None,
        *,
        channels: int = 3,
        with_masks: bool = False,
    ):
        self.samples = list(samples)
        self.transform = transform
        self.channels = channels
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        import torch
        from torchvision.transforms.v2 import functional as F

        sample = self.samples[index]
        image = read_image(sample.path, channels=self.channels)
        mask = None
        if self.with_masks:
            if sample.mask is not None:
                orientation = image.info.get("orientation", 1)
                mask = read_mask(sample.mask, size=image.size, orientation=orientation)
            else:
                mask = np.zeros((image.height, image.width), dtype=bool)
        if self.transform is None:
            x = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
            m = torch.from_numpy(mask)[None].float() if mask is not None else None
        else:
            x, m = self.transform(image, mask)
        if self.with_masks:
            return x, sample.label, m
        return x, sample.label


# --------------------------------------------------------------------------------------------
# class imbalance


def class_counts(samples: Iterable[Sample]) -> dict[int, int]:
    """``{label: count}``, sorted by label (only labels present)."""
    counts = Counter(s.label for s in samples)
    return dict(sorted(counts.items()))


def class_weights(samples: Iterable[Sample], num_classes: int):
    """Inverse-frequency loss weights ``N / (K * n_c)`` (a float32 tensor of ``num_classes``):
    a balanced data set gets all ones, and the weights average to one per sample. A class with
    no sample gets weight 0."""
    import torch

    counts = class_counts(samples)
    total = sum(counts.values())
    present = sum(1 for c in range(num_classes) if counts.get(c))
    weights = [total / (present * counts[c]) if counts.get(c) else 0.0 for c in range(num_classes)]
    return torch.tensor(weights, dtype=torch.float32)


def make_sampler(samples: Sequence[Sample], seed: int = 0):
    """A ``WeightedRandomSampler`` drawing every class equally often (with replacement),
    ``len(samples)`` draws an epoch, seeded."""
    import torch
    from torch.utils.data import WeightedRandomSampler

    counts = class_counts(samples)
    weights = torch.tensor([1.0 / counts[s.label] for s in samples], dtype=torch.double)
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(
        weights, num_samples=len(samples), replacement=True, generator=generator
    )


def undersample(samples: Sequence[Sample], ratio: float, seed: int = 0) -> list[Sample]:
    """Keep every sample of the smallest class and at most ``ratio`` times as many of each other
    class (a seeded random choice), in the original order (seed 5's balancing)."""
    if ratio < 1:
        raise ValueError(f"ratio={ratio}: must be >= 1")
    counts = class_counts(samples)
    if not counts:
        return []
    cap = int(ratio * min(counts.values()))
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for label in sorted(counts):
        idx = [i for i, s in enumerate(samples) if s.label == label]
        if len(idx) > cap:
            idx = [idx[j] for j in sorted(rng.choice(len(idx), size=cap, replace=False))]
        keep.update(idx)
    return [s for i, s in enumerate(samples) if i in keep]
