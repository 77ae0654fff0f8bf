"""The data-set survey behind ``fracturekit inspect``: the seeds' EDA, done once for every set.

:func:`inspect_dataset` loads a data set with :func:`fracturekit.data.load_dataset` (any
layout) and decodes every image and mask once, on a thread pool, collecting:

* counts per class and split, and how many samples have a mask;
* image sizes (min/median/max width and height), stored pixel modes and formats;
* **errors**: unreadable files (corrupt, empty, not an image, over the pixel limit, failed
  downloads, unreadable masks; truncated files too with ``strict``) and **leakage**: identical
  files (same content hash, BLAKE2b of the bytes) in different splits, or a group (patient,
  source photo) in more than one split;
* **warnings**: truncated files that load, exact duplicates inside a split, identical files
  under different classes, masks whose size differs from their image's.

With ``out`` it also writes ``summary.json``, ``samples.png`` (a grid of sample images per
class) and ``histograms.png`` (per-class pixel-intensity histograms). ``report.exit_code`` is 0
when no error was found and 1 otherwise.

Splits are the ones the data defines (split folders, a ``split`` column, ``val``/``test``
paths); ``val_fraction``/``test_fraction`` default to 0 here so that nothing is split at
random. A data set without splits is reported as the single split ``all``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit._files import atomic_write, atomic_write_text
from fracturekit.data import LoadOptions, Sample, load_dataset
from fracturekit.io import ImageIssue, ImageReadError, open_image, read_mask

THUMB_PX = 160
# Inspection reports the data's own splits: nothing is carved at random unless asked.
INSPECT_DEFAULTS = LoadOptions(val_fraction=0.0)


@dataclass
class _Record:
    sample: Sample
    split: str
    digest: str | None = None
    size: tuple[int, int] | None = None
    mode: str | None = None
    format: str | None = None
    error: str | None = None
    warning: str | None = None
    mask_error: str | None = None
    mask_mismatch: str | None = None
    histogram: np.ndarray | None = None
    thumbnail: Any = None


@dataclass
class DuplicateGroup:
    """Files with identical bytes. ``entries`` are ``(path, split, class name)``."""

    digest: str
    entries: list[tuple[str, str, str]]

    @property
    def splits(self) -> set[str]:
        return {e[1] for e in self.entries}

    @property
    def classes(self) -> set[str]:
        return {e[2] for e in self.entries}

    def describe(self) -> str:
        return " = ".join(f"{p} ({s}/{c})" for p, s, c in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "files": [{"path": p, "split": s, "class": c} for p, s, c in self.entries],
        }


# The summary lines of a report: (attribute, what its entries are), in the order printed.
_ERROR_LINES = (
    ("unreadable", "unreadable file(s)"),
    ("cross_split_duplicates", "identical image(s) shared across splits (leakage)"),
    ("group_leaks", "group(s) in more than one split (leakage)"),
)
_WARNING_LINES = (
    ("truncated", "truncated file(s) loaded"),
    ("within_split_duplicates", "group(s) of exact duplicates within a split"),
    ("label_conflicts", "identical image(s) under different classes"),
    ("mask_mismatches", "mask(s) of a different size than the image"),
)


def _issue_dicts(issues: list[ImageIssue]) -> list[dict[str, str]]:
    return [{"path": str(i.path), "reason": i.reason} for i in issues]


@dataclass
class InspectionReport:
    """What :func:`inspect_dataset` found. ``errors`` decide the exit code."""

    root: str
    layout: str
    classes: list[str]
    splits: list[str]
    counts: dict[str, dict[str, int]]
    masks: dict[str, int]
    readable: int
    sizes: dict[str, dict[str, float]]
    modes: dict[str, int]
    formats: dict[str, int]
    unreadable: list[ImageIssue] = field(default_factory=list)
    truncated: list[ImageIssue] = field(default_factory=list)
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    cross_split_duplicates: list[DuplicateGroup] = field(default_factory=list)
    label_conflicts: list[DuplicateGroup] = field(default_factory=list)
    group_leaks: dict[str, list[str]] = field(default_factory=dict)
    mask_mismatches: list[ImageIssue] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    @property
    def within_split_duplicates(self) -> list[DuplicateGroup]:
        """Duplicate groups inside one split and one class (a warning, not leakage)."""
        return [g for g in self.duplicates if len(g.splits) == 1 and len(g.classes) == 1]

    def _count_lines(self, table: tuple[tuple[str, str], ...]) -> list[str]:
        """``"<count> <what>"`` for each ``(attribute, what)`` whose collection is non-empty."""
        return [f"{len(getattr(self, name))} {what}" for name, what in table if getattr(self, name)]

    @property
    def errors(self) -> list[str]:
        """One line per kind of error found (empty when clean)."""
        return self._count_lines(_ERROR_LINES)

    @property
    def one_class(self) -> bool:
        """Only one class: ``fracturekit train`` refuses such a data set."""
        return len(self.classes) == 1

    @property
    def warnings(self) -> list[str]:
        lines = []
        if self.one_class:
            lines.append(f"only one class ({self.classes[0]}); training needs two or more")
        return lines + self._count_lines(_WARNING_LINES)

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": self.classes,
            "splits": self.splits,
            "counts": self.counts,
            "total": self.total,
            "readable": self.readable,
            "masks": self.masks,
            "sizes": self.sizes,
            "modes": self.modes,
            "formats": self.formats,
            "errors": self.errors,
            "warnings": self.warnings,
            "unreadable": _issue_dicts(self.unreadable),
            "truncated": _issue_dicts(self.truncated),
            "duplicates": [g.to_dict() for g in self.duplicates],
            "cross_split_duplicates": [g.to_dict() for g in self.cross_split_duplicates],
            "label_conflicts": [g.to_dict() for g in self.label_conflicts],
            "group_leaks": self.group_leaks,
            "mask_mismatches": _issue_dicts(self.mask_mismatches),
            "ignored": self.ignored,
            "outputs": self.outputs,
            "exit_code": self.exit_code,
        }


def _examine(
    record: _Record, strict: bool, max_pixels: int | None, want_thumbnail: bool
) -> _Record:
    sample = record.sample
    name = str(sample.path)
    try:
        data = Path(sample.path).read_bytes()
    except FileNotFoundError:
        record.error = "no such file"
        return record
    except OSError as exc:
        record.error = f"cannot read file ({exc.strerror or exc})"
        return record
    record.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        image, info = open_image(data, name=name, strict=strict, max_pixels=max_pixels)
    except ImageReadError as exc:
        record.error = exc.reason
        return record
    record.size, record.mode, record.format, record.warning = (
        info.size,
        info.mode,
        info.format,
        info.warning,
    )
    gray = image if image.mode == "L" else image.convert("L")
    record.histogram = np.asarray(gray.histogram(), dtype=np.int64)
    if want_thumbnail:
        thumb = image.copy()
        thumb.thumbnail((THUMB_PX, THUMB_PX))
        record.thumbnail = thumb
    if sample.mask is not None:
        try:
            mask = read_mask(sample.mask, orientation=info.orientation, max_pixels=max_pixels)
        except ImageReadError as exc:
            record.mask_error = f"mask {exc}"
        else:
            if mask.shape[::-1] != tuple(info.size):
                record.mask_mismatch = (
                    f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]}, image is "
                    f"{info.size[0]}x{info.size[1]} (after EXIF orientation)"
                )
    return record


def _stats(values: Iterable[int]) -> dict[str, float]:
    arr = np.asarray(list(values), dtype=np.float64)
    if not arr.size:
        return {}
    return {"min": float(arr.min()), "median": float(np.median(arr)), "max": float(arr.max())}


def inspect_dataset(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    options: LoadOptions | None = None,
    *,
    samples_per_class: int = 8,
    workers: int | None = None,
    **load_options: Any,
) -> InspectionReport:
    """Survey a data set (see the module docstring); with ``out``, write the summary and plots.

    Args:
        path: a folder or a CSV manifest.
        out: where to write ``summary.json``, ``samples.png`` and ``histograms.png``.
        options: how to load it (default :data:`INSPECT_DEFAULTS`: no split carved);
            keyword arguments override its fields, as in
            :func:`fracturekit.data.load_dataset`. ``strict`` counts truncated files as
            unreadable.
        samples_per_class: images per class in ``samples.png``.
        workers: decoding threads (default: twice the CPUs, at most 16).

    Raises:
        DatasetError: only when the data set cannot be laid out at all (no layout, bad
            manifest).
    """
    opts = (options or INSPECT_DEFAULTS).updated(**load_options)
    # Every file is decoded below, once, with problems reported rather than left out.
    splits = load_dataset(path, opts.updated(strict=False, check=False))
    strict, max_pixels, seed = opts.strict, opts.max_pixels, opts.seed
    unsplit = not splits.val and not splits.test
    split_names = ["all"] if unsplit else [k for k, v in splits.splits().items() if v]
    records = [
        _Record(s, "all" if unsplit else name)
        for name, samples in splits.splits().items()
        for s in samples
    ]

    # Sample images for the grid: a seeded choice per class.
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_class[r.sample.class_name].append(i)
    chosen = {
        by_class[c][j]
        for c in by_class
        for j in rng.permutation(len(by_class[c]))[: max(0, samples_per_class) * 2]
    }  # twice as many as shown: unreadable picks are skipped

    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    if records:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fk-inspect") as pool:
            records = list(
                pool.map(
                    lambda ir: _examine(
                        ir[1], strict, max_pixels, out is not None and ir[0] in chosen
                    ),
                    enumerate(records),
                )
            )

    report = _summarise(splits, records, split_names)
    if out is not None:
        report.outputs = _write_outputs(Path(out), report, records, samples_per_class)
    return report


def _summarise(splits, records: list[_Record], split_names: list[str]) -> InspectionReport:
    classes = splits.classes
    counts = {name: dict.fromkeys(classes, 0) for name in split_names}
    masks = dict.fromkeys(classes, 0)
    for r in records:
        counts[r.split][r.sample.class_name] = counts[r.split].get(r.sample.class_name, 0) + 1
        if r.sample.mask is not None:
            masks[r.sample.class_name] += 1
    ok = [r for r in records if r.error is None]
    unreadable = [ImageIssue(str(i.path), i.reason) for i in splits.dropped]
    unreadable += [ImageIssue(r.sample.source, r.error) for r in records if r.error is not None]
    unreadable += [ImageIssue(r.sample.source, r.mask_error) for r in records if r.mask_error]

    by_digest: dict[str, list[_Record]] = defaultdict(list)
    for r in records:
        if r.digest is not None:
            by_digest[r.digest].append(r)
    duplicates = [
        DuplicateGroup(d, [(r.sample.source, r.split, r.sample.class_name) for r in rs])
        for d, rs in sorted(by_digest.items(), key=lambda kv: str(kv[1][0].sample.path))
        if len(rs) > 1
    ]
    group_splits: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.sample.group is not None:
            group_splits[r.sample.group].add(r.split)
    leaks = {g: sorted(s) for g, s in sorted(group_splits.items()) if len(s) > 1}

    return InspectionReport(
        root=str(splits.root),
        layout=splits.layout,
        classes=classes,
        splits=split_names,
        counts=counts,
        masks=masks,
        readable=len(ok),
        sizes={
            "width": _stats(r.size[0] for r in ok if r.size),
            "height": _stats(r.size[1] for r in ok if r.size),
        },
        modes=dict(Counter(r.mode for r in ok if r.mode).most_common()),
        formats=dict(Counter(r.format for r in ok if r.format).most_common()),
        unreadable=unreadable,
        truncated=[ImageIssue(r.sample.source, r.warning) for r in ok if r.warning],
        duplicates=duplicates,
        cross_split_duplicates=[g for g in duplicates if len(g.splits) > 1],
        label_conflicts=[g for g in duplicates if len(g.classes) > 1],
        group_leaks=leaks,
        mask_mismatches=[
            ImageIssue(r.sample.source, r.mask_mismatch) for r in ok if r.mask_mismatch
        ],
        ignored=[str(p) for p in splits.ignored],
    )


# --------------------------------------------------------------------------------------------
# outputs


def _save_figure(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _samples_figure(report: InspectionReport, records: list[_Record], per_class: int) -> Any:
    from matplotlib.figure import Figure

    classes = report.classes or ["(none)"]
    cols = max(1, per_class)
    fig = Figure(figsize=(1.6 * cols + 1.2, 1.7 * len(classes) + 0.4))
    thumbs: dict[str, list[_Record]] = defaultdict(list)
    for r in records:
        if r.thumbnail is not None and len(thumbs[r.sample.class_name]) < per_class:
            thumbs[r.sample.class_name].append(r)
    for row, name in enumerate(classes):
        for col in range(cols):
            ax = fig.add_subplot(len(classes), cols, row * cols + col + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
            picks = thumbs.get(name, [])
            if col < len(picks):
                thumb = picks[col].thumbnail
                ax.imshow(np.asarray(thumb), cmap="gray" if thumb.mode == "L" else None)
                ax.set_title(Path(picks[col].sample.path).name[:18], fontsize=6)
    fig.suptitle(f"{Path(report.root).name}: samples per class", fontsize=10)
    fig.tight_layout()
    return fig


def _histogram_figure(report: InspectionReport, records: list[_Record]) -> Any:
    from matplotlib.figure import Figure

    sums: dict[str, np.ndarray] = {}
    n: Counter[str] = Counter()
    for r in records:
        if r.histogram is None:
            continue
        name = r.sample.class_name
        sums[name] = sums.get(name, np.zeros(256, dtype=np.int64)) + r.histogram
        n[name] += 1
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    levels = np.arange(256)
    for name in report.classes:
        if name not in sums:
            continue
        density = sums[name] / max(1, sums[name].sum())
        mean = float((density * levels).sum())
        ax.plot(levels, density, label=f"{name} (n={n[name]}, mean {mean:.0f})")
    ax.set_xlim(0, 255)
    ax.set_xlabel("pixel intensity (8-bit gray)")
    ax.set_ylabel("fraction of pixels")
    ax.set_title(f"{Path(report.root).name}: pixel intensities per class")
    if sums:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _write_outputs(
    out: Path, report: InspectionReport, records: list[_Record], per_class: int
) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    outputs = {
        "summary": str(out / "summary.json"),
        "samples": str(out / "samples.png"),
        "histograms": str(out / "histograms.png"),
    }
    report.outputs = outputs
    _save_figure(_samples_figure(report, records, per_class), out / "samples.png")
    _save_figure(_histogram_figure(report, records), out / "histograms.png")
    atomic_write_text(out / "summary.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return outputs


# --------------------------------------------------------------------------------------------
# printing


def _fmt_stats(stats: dict[str, float]) -> str:
    if not stats:
        return "-"
    return " / ".join(f"{stats[k]:g}" for k in ("min", "median", "max"))


def _counts_table(report: InspectionReport) -> Any:
    from rich.table import Table

    table = Table(title="samples per class and split")
    table.add_column("class")
    for name in report.splits:
        table.add_column(name, justify="right")
    if len(report.splits) > 1:
        table.add_column("total", justify="right")
    table.add_column("with mask", justify="right")
    for name in report.classes:
        row = [report.counts[s].get(name, 0) for s in report.splits]
        cells = [str(v) for v in row] + ([str(sum(row))] if len(report.splits) > 1 else [])
        table.add_row(name, *cells, str(report.masks.get(name, 0)))
    totals = [sum(report.counts[s].values()) for s in report.splits]
    table.add_row(
        "total",
        *[str(v) for v in totals],
        *([str(sum(totals))] if len(report.splits) > 1 else []),
        str(sum(report.masks.values())),
        style="bold",
    )
    return table


def _info_table(report: InspectionReport) -> Any:
    from rich.table import Table

    info = Table(title=f"{report.readable} readable images", show_header=False)
    info.add_column("what")
    info.add_column("value")
    info.add_row("width  min / median / max", _fmt_stats(report.sizes.get("width", {})))
    info.add_row("height min / median / max", _fmt_stats(report.sizes.get("height", {})))
    info.add_row("modes", ", ".join(f"{k} {v}" for k, v in report.modes.items()) or "-")
    info.add_row("formats", ", ".join(f"{k} {v}" for k, v in report.formats.items()) or "-")
    return info


def _problem_blocks(report: InspectionReport) -> list[tuple[str, str, str, list[str]]]:
    """``(kind, style, title, lines)`` per kind of problem, errors first (empty lines: none)."""
    within = report.within_split_duplicates
    return [
        (
            "ERROR",
            "bold red",
            f"{len(report.unreadable)} unreadable file(s); they cannot be used:",
            [str(i) for i in report.unreadable],
        ),
        (
            "ERROR",
            "bold red",
            f"{len(report.cross_split_duplicates)} identical image(s) in more than one split "
            "(leakage: validation/test scores would be inflated):",
            [g.describe() for g in report.cross_split_duplicates],
        ),
        (
            "ERROR",
            "bold red",
            f"{len(report.group_leaks)} group(s) in more than one split (leakage):",
            [f"{g}: {', '.join(s)}" for g, s in report.group_leaks.items()],
        ),
        (
            "WARNING",
            "yellow",
            "one class only: a classifier needs two or more class folders (or labels):",
            report.classes if report.one_class else [],
        ),
        (
            "WARNING",
            "yellow",
            f"{len(report.truncated)} truncated file(s): loaded with the missing end filled in "
            "(--strict refuses them):",
            [str(i.path) for i in report.truncated],
        ),
        (
            "WARNING",
            "yellow",
            f"{len(report.label_conflicts)} identical image(s) filed under different classes:",
            [g.describe() for g in report.label_conflicts],
        ),
        (
            "WARNING",
            "yellow",
            f"{len(within)} group(s) of exact duplicates within one split (a random train/val "
            "split may put copies on both sides; consider removing them):",
            [g.describe() for g in within],
        ),
        (
            "WARNING",
            "yellow",
            f"{len(report.mask_mismatches)} mask(s) differ in size from their image:",
            [i.reason for i in report.mask_mismatches],
        ),
    ]


def print_report(report: InspectionReport, console: Any = None, *, limit: int = 50) -> None:
    """Print the report with rich: tables of counts and sizes, then every problem plainly."""
    from rich.console import Console

    console = console or Console()

    def say(text: str = "", style: str | None = None) -> None:
        console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    say(f"{report.root}  (layout: {report.layout})", style="bold")
    console.print(_counts_table(report))
    console.print(_info_table(report))

    def block(kind: str, style: str, title: str, lines: list[str]) -> None:
        if not lines:
            return
        say(f"{kind}: {title}", style=style)
        for line in lines[:limit]:
            say(f"  {line}")
        if len(lines) > limit:
            say(f"  ... and {len(lines) - limit} more (all in summary.json with --out)")

    for kind, style, title, lines in _problem_blocks(report):
        block(kind, style, title, lines)
    if report.ignored:
        say(f"note: {len(report.ignored)} non-image file(s) in class folders were ignored:")
        for p in report.ignored[:limit]:
            say(f"  {p}")
    for name, path in report.outputs.items():
        say(f"wrote {name}: {path}")
    if report.errors:
        say(f"found errors: {'; '.join(report.errors)} (exit code 1)", style="bold red")
    elif report.warnings:
        say(f"no errors; warnings: {'; '.join(report.warnings)}", style="yellow")
    else:
        say("clean: no unreadable files, no duplicates, no leakage", style="green")
