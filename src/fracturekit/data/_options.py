"""``LoadOptions``: how a data set is read, split and downloaded, declared once.

``load_dataset``, ``inspection.inspect_dataset`` and ``fracturekit inspect`` take the same
options; every field carries its command-line help in ``metadata`` so the flags are generated
from the fields (a field with ``cli=False`` is library-only).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from fracturekit.config import LAYOUTS
from fracturekit.data._records import DatasetError

DEFAULT_DOWNLOAD_TIMEOUT = 30.0
DEFAULT_DOWNLOAD_DEADLINE = 300.0
DEFAULT_MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024


def _option(
    default: Any,
    help: str,
    *,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    shown_default: str | None = None,
    cli: bool = True,
) -> Any:
    """A field with its flag's help text, metavar, choices and the default to show when the
    field's own (None) stands for another; ``cli=False`` keeps it off the command line."""
    meta = {
        "help": help,
        "metavar": metavar,
        "choices": choices,
        "shown_default": shown_default,
        "cli": cli,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class LoadOptions:
    """Options of :func:`fracturekit.data.load_dataset` (see its docstring for each)."""

    layout: str = _option(LAYOUTS[0], "force a layout instead of detecting it", choices=LAYOUTS)
    val: str | os.PathLike[str] | None = _option(
        None, "a separate validation data set (any layout)", metavar="PATH"
    )
    test: str | os.PathLike[str] | None = _option(
        None, "a separate test data set (any layout)", metavar="PATH"
    )
    val_fraction: float = _option(
        0.2, "carve a validation split of this share when the data have none", metavar="F"
    )
    test_fraction: float = _option(
        0.0, "carve a test split of this share when the data have none", metavar="F"
    )
    seed: int = _option(0, "seed of the carved splits (and of other random picks)", metavar="N")
    image_column: str | None = _option(
        None, "CSV manifests: the column of image paths or URLs", metavar="NAME"
    )
    label_column: str | None = _option(
        None, "CSV manifests: the column of labels (plain or JSON)", metavar="NAME"
    )
    label_key: str | None = _option(
        None,
        "dotted key path to the class name in a JSON label column, e.g. labels.0",
        metavar="KEY",
    )
    group_column: str | None = _option(
        None,
        "CSV column of groups (patient, source photo): carved splits keep groups whole",
        metavar="NAME",
    )
    strict: bool = _option(False, "count truncated files as unusable (default: load them and warn)")
    cache_dir: str | os.PathLike[str] | None = _option(
        None,
        "download cache for URL manifests",
        metavar="DIR",
        shown_default="$FRACTUREKIT_CACHE/downloads or ~/.cache/fracturekit/downloads",
    )
    check: bool = _option(True, "decode every image and mask up front", cli=False)
    max_pixels: int | None = _option(
        None,
        "refuse images over N pixels (0: no limit)",
        metavar="N",
        shown_default="$FRACTUREKIT_MAX_PIXELS or 100000000",
    )
    download_timeout: float = _option(
        DEFAULT_DOWNLOAD_TIMEOUT,
        "URL manifests: seconds to connect and to wait for each read",
        metavar="S",
    )
    download_deadline: float = _option(
        DEFAULT_DOWNLOAD_DEADLINE,
        "URL manifests: seconds one download may take in all",
        metavar="S",
    )
    max_download_bytes: int = _option(
        DEFAULT_MAX_DOWNLOAD_BYTES, "URL manifests: refuse larger downloads", metavar="N"
    )
    # Only for tests and trusted local servers: downloads never reach loopback, private,
    # link-local or cloud-metadata addresses otherwise (a redirect there is refused too).
    allow_private_hosts: bool = _option(
        False, "download from loopback and private addresses", cli=False
    )

    def updated(self, **changes: Any) -> LoadOptions:
        """A copy with ``changes``; an unknown name is a ``TypeError`` naming it."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown data-loading option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def validate(self) -> LoadOptions:
        """Check the enumerated and numeric options; raise DatasetError naming the bad one."""
        if self.layout not in LAYOUTS:
            raise DatasetError(f"layout={self.layout!r} is not one of {', '.join(LAYOUTS)}")
        fractions = (self.val_fraction, self.test_fraction)
        if not all(0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
            raise DatasetError("val_fraction and test_fraction must lie in [0, 1) and sum below 1")
        if self.download_timeout <= 0 or self.download_deadline <= 0:
            raise DatasetError("download_timeout and download_deadline must be > 0 seconds")
        if self.max_download_bytes < 1:
            raise DatasetError("max_download_bytes must be >= 1")
        return self


def cli_fields() -> list[dataclasses.Field]:
    """The LoadOptions fields that are command-line flags, in declaration order."""
    return [f for f in dataclasses.fields(LoadOptions) if f.metadata["cli"]]


def option_types() -> dict[str, type]:
    """``{field name: type}`` of LoadOptions, ``X | None`` and ``str | PathLike`` reduced to
    their first type (what a flag's text becomes)."""
    import typing

    out = {}
    for name, tp in typing.get_type_hints(LoadOptions).items():
        args = typing.get_args(tp)
        out[name] = args[0] if args else tp
    return out
