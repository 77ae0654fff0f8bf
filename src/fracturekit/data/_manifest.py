"""CSV manifests and labelling-tool exports: columns, JSON labels, paths, downloads."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fracturekit.data._download import default_cache_dir, download_images
from fracturekit.data._folders import SPLIT_NAMES, masks_beside
from fracturekit.data._options import LoadOptions
from fracturekit.data._records import DatasetError, Sample
from fracturekit.io import IMAGE_EXTENSIONS, ImageIssue

IMAGE_COLUMNS = ("path", "image", "file", "filename", "image_path", "filepath", "img")
LABEL_COLUMNS = ("label", "class", "class_name", "target", "category")
JSON_LABEL_KEYS = ("labels", "label", "choices", "choice", "class")


class _BadRow(ValueError):
    """A row the manifest cannot hold (every such row is listed in one DatasetError)."""


class _Unlabelled(ValueError):
    """A row without a usable label: left out and named in ``DatasetSplits.dropped``."""


def read_csv(path: Path) -> tuple[list[dict[str, str]], list[str]]:
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


def pick_column(
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


def is_url(value: str) -> bool:
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
            raise _BadRow(f"{name!r} matches several files: {', '.join(map(str, hits))}")
    return path  # does not exist: the up-front check names it


@dataclass(frozen=True)
class _Manifest:
    """What reading one row needs: the manifest's columns and folder, and its lookups."""

    path: Path
    image: str
    label: str
    group: str | None
    split: str | None
    mask: str | None
    label_key: str | None
    stems: _StemIndex
    masks: dict[str, Path]

    @property
    def base(self) -> Path:
        return self.path.parent


def _manifest(path: Path, header: list[str], options: LoadOptions) -> _Manifest:
    lower = {h.lower(): h for h in header}
    if options.group_column:
        group = pick_column(path, header, options.group_column, (), "group")
    else:
        group = lower.get("group")
    return _Manifest(
        path=path,
        image=pick_column(path, header, options.image_column, IMAGE_COLUMNS, "image"),
        label=pick_column(path, header, options.label_column, LABEL_COLUMNS, "label"),
        group=group,
        split=lower.get("split"),
        mask=lower.get("mask"),
        label_key=options.label_key,
        stems=_StemIndex(),
        masks=masks_beside(path.parent),
    )


def _row_label(raw: str, label_key: str | None) -> str:
    if label_key or raw.startswith(("{", "[")):
        return _json_label(raw, label_key)
    if raw:
        return raw
    raise ValueError("no label")


def _row_sample(row: dict[str, str], m: _Manifest) -> Sample:
    image = row.get(m.image, "")
    if not image:
        raise _BadRow(f"empty {m.image!r}")
    try:
        label = _row_label(row.get(m.label, ""), m.label_key)
    except ValueError as exc:
        raise _Unlabelled(str(exc)) from None
    url = image if is_url(image) else None
    file = Path(image) if url else _resolve_path(m.base, image, label, m.stems)  # _BadRow
    split = None
    if m.split and row.get(m.split):
        split = SPLIT_NAMES.get(row[m.split].lower())
        if split is None:
            raise _BadRow(f"split {row[m.split]!r} is not train, val or test")
    if m.mask and row.get(m.mask):
        mask: Path | None = Path(row[m.mask])
        mask = mask if mask.is_absolute() else m.base / mask
    else:
        mask = None if url else m.masks.get(file.stem)
    group = (row.get(m.group) or None) if m.group else None
    return Sample(file, -1, label, mask=mask, group=group, split=split, url=url)


def _read_rows(rows: list[dict[str, str]], m: _Manifest, dropped: list[ImageIssue]) -> list[Sample]:
    """Every row's sample (nothing downloaded yet); unlabelled rows go to ``dropped``."""
    samples, bad_rows = [], []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"{m.path.name} row {number}"
        try:
            samples.append(_row_sample(row, m))
        except _Unlabelled as exc:
            dropped.append(ImageIssue(row.get(m.image, ""), f"{where}: {exc}"))
        except _BadRow as exc:
            bad_rows.append(f"{where}: {exc}")
    if bad_rows:
        shown = "\n  ".join(bad_rows[:20])
        more = f"\n  ... and {len(bad_rows) - 20} more" if len(bad_rows) > 20 else ""
        raise DatasetError(f"{m.path}: {len(bad_rows)} bad manifest row(s):\n  {shown}{more}")
    return samples


def _download(
    samples: list[Sample], options: LoadOptions, dropped: list[ImageIssue]
) -> list[Sample]:
    """Download the URLs once into the cache; a failed URL drops its rows (named)."""
    urls = sorted({s.url for s in samples if s.url})
    if not urls:
        return samples
    local_of, failed = download_images(
        urls,
        options.cache_dir if options.cache_dir is not None else default_cache_dir(),
        timeout=options.download_timeout,
        max_bytes=options.max_download_bytes,
        deadline=options.download_deadline,
        allow_private_hosts=options.allow_private_hosts,
        max_pixels=options.max_pixels,
    )
    dropped.extend(failed)
    return [
        dataclasses.replace(s, path=local_of[s.url]) if s.url else s
        for s in samples
        if not s.url or s.url in local_of
    ]


def load_csv(path: Path, options: LoadOptions, dropped: list[ImageIssue]) -> list[Sample]:
    """The samples of a CSV manifest or labelling-tool export (URLs downloaded)."""
    rows, header = read_csv(path)
    if not rows:
        raise DatasetError(f"{path}: the manifest has no rows")
    samples = _download(
        _read_rows(rows, _manifest(path, header, options), dropped), options, dropped
    )
    if not samples:
        reasons = "\n  ".join(str(d) for d in dropped[:10])
        raise DatasetError(f"{path}: no usable rows. First problems:\n  {reasons}")
    return samples
