"""The plain records a loaded data set is made of: ``Sample``, ``DatasetSplits``, ``DatasetError``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fracturekit.io import ImageIssue


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
