"""``load_dataset``: read a layout, check every file, settle the classes, carve the splits."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracturekit.data._layouts import AUTO, read_layout
from fracturekit.data._options import LoadOptions
from fracturekit.data._records import DatasetError, DatasetSplits, Sample
from fracturekit.data._splits import split_samples
from fracturekit.io import ImageIssue, check_images

log = logging.getLogger("fracturekit.data")


@dataclass
class _Gathered:
    """What was read before the split: the data's own samples, the separate val/test sets
    (``extra``), and the problems met so far."""

    layout: str
    samples: list[Sample]
    extra: dict[str, list[Sample]]
    dropped: list[ImageIssue]
    ignored: list[Path]
    warnings: list[ImageIssue] = field(default_factory=list)

    def everything(self) -> list[Sample]:
        return self.samples + [s for part in self.extra.values() for s in part]

    def leave_out(self, ids: set[int]) -> None:
        """Drop the samples whose ``id`` is in ``ids`` (samples are values: ids tell copies)."""
        self.samples = [s for s in self.samples if id(s) not in ids]
        self.extra = {k: [s for s in v if id(s) not in ids] for k, v in self.extra.items()}


def _listing(issues: Sequence[Any], limit: int = 30) -> str:
    lines = [f"  {i}" for i in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"  ... and {len(issues) - limit} more")
    return "\n".join(lines)


def _gather(root: Path, options: LoadOptions) -> _Gathered:
    dropped: list[ImageIssue] = []
    ignored: list[Path] = []
    samples, layout = read_layout(root, options.layout, options, dropped, ignored)
    extra: dict[str, list[Sample]] = {}
    for split, other in (("val", options.val), ("test", options.test)):
        if other is None:
            continue
        if any(s.split == split for s in samples):
            raise DatasetError(
                f"{root} already has a {split} split; drop --{split} or its {split} part"
            )
        other_samples, _ = read_layout(Path(other), AUTO, options, dropped, ignored)
        extra[split] = [dataclasses.replace(s, split=split) for s in other_samples]
    return _Gathered(layout, samples, extra, dropped, ignored)


def _check_files(root: Path, data: _Gathered, options: LoadOptions) -> None:
    """Decode every image and mask once: unusable samples are left out (strict: an error)."""
    if not options.check:
        if options.strict and data.dropped:
            raise DatasetError(
                f"{root}: {len(data.dropped)} unusable row(s):\n{_listing(data.dropped)}"
            )
        return
    everything = data.everything()
    files = [s.path for s in everything] + [s.mask for s in everything if s.mask is not None]
    report = check_images(files, strict=options.strict, max_pixels=options.max_pixels)
    bad = {Path(issue.path): issue for issue in report.errors}
    url_of = {s.path: s.url for s in everything if s.url}
    data.warnings = [ImageIssue(url_of.get(w.path, w.path), w.reason) for w in report.warnings]
    if options.strict and (bad or data.dropped):
        issues = [*data.dropped, *report.errors]
        raise DatasetError(
            f"{root}: {len(issues)} unusable file(s) (strict mode refuses them, truncated "
            f"files included):\n{_listing(issues)}"
        )
    left_out: set[int] = set()
    for s in everything if bad else ():
        issue = bad.get(s.path) or (bad.get(s.mask) if s.mask is not None else None)
        if issue is not None:
            what = "" if issue.path == s.path else f"its mask {issue.path}: "
            data.dropped.append(ImageIssue(s.url or s.path, what + issue.reason))
            left_out.add(id(s))
    data.leave_out(left_out)


def _classes(root: Path, data: _Gathered) -> list[str]:
    """The training classes, sorted; a val/test class that training lacks is an error."""
    classes = sorted({s.class_name for s in data.samples if s.split in (None, "train")})
    if not classes:
        raise DatasetError(f"{root}: no usable training samples left\n{_listing(data.dropped)}")
    unknown = sorted({s.class_name for s in data.everything()} - set(classes))
    if unknown:
        raise DatasetError(
            f"{root}: class(es) {', '.join(unknown)} appear in val/test but not in train "
            f"(train classes: {', '.join(classes)})"
        )
    return classes


def _carve(data: _Gathered, options: LoadOptions) -> dict[str, list[Sample]]:
    """``{train, val, test}``: the data's own splits, then fractions carved from the rest."""
    parts = {
        split: [s for s in data.samples if s.split == split] + data.extra.get(split, [])
        for split in ("val", "test")
    }
    pool = sorted(
        (s for s in data.samples if s.split in (None, "train")),
        key=lambda s: (s.class_name, str(s.path)),
    )
    carved = 0.0  # share of the pool already given to test
    if not parts["test"] and options.test_fraction > 0:
        pool, parts["test"] = split_samples(pool, options.test_fraction, options.seed)
        carved = options.test_fraction
    if not parts["val"] and options.val_fraction > 0:
        # val_fraction is a share of the whole; after carving test, of what is left.
        fraction = options.val_fraction / (1 - carved)
        pool, parts["val"] = split_samples(pool, fraction, options.seed + 1)
    return {"train": pool, **parts}


def _with_labels(samples: Iterable[Sample], classes: list[str], split: str) -> list[Sample]:
    index = {c: i for i, c in enumerate(classes)}
    return [
        dataclasses.replace(s, label=index[s.class_name], split=split)
        for s in sorted(samples, key=lambda s: (s.class_name, str(s.path)))
    ]


def load_dataset(
    path: str | os.PathLike[str], options: LoadOptions | None = None, **kwargs: Any
) -> DatasetSplits:
    """Load a data set of any supported layout, check every file, and split it.

    Args:
        path: a folder or a CSV manifest.
        options: how to read it (default ``LoadOptions()``); keyword arguments override its
            fields, so ``load_dataset(path, layout="csv", seed=1)`` works as well.

    Keyword Args:
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
        download_timeout, download_deadline, max_download_bytes: per-URL limits for URL
            manifests: seconds per read, seconds in all, size.
        allow_private_hosts: let URLs reach loopback and private addresses (tests, trusted
            local servers); off, such URLs and redirects to them are refused.

    Raises:
        DatasetError: no layout, bad manifest rows, an unknown class in val/test, nothing left,
            or (strict) any unusable or truncated file.
        TypeError: an unknown option.
    """
    opts = (options or LoadOptions()).updated(**kwargs).validate()
    root = Path(path)
    data = _gather(root, opts)
    _check_files(root, data, opts)
    classes = _classes(root, data)
    parts = _carve(data, opts)
    result = DatasetSplits(
        classes=classes,
        **{split: _with_labels(samples, classes, split) for split, samples in parts.items()},
        layout=data.layout,
        warnings=data.warnings,
        dropped=data.dropped,
        ignored=data.ignored,
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
