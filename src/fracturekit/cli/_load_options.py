"""Flags generated from ``data.LoadOptions``: one flag a field, its help from the field.

A command that reads a data set calls :func:`add_load_flags` with the defaults it wants shown
(``inspect`` carves no split unless asked) and :func:`load_options` to get them back, so a
new loading option is one field of ``LoadOptions`` and every such command offers it.
"""

from __future__ import annotations

import argparse
from typing import Any

from fracturekit.data import LoadOptions
from fracturekit.data._options import cli_fields, option_types


def add_load_flags(
    parser: argparse.ArgumentParser,
    defaults: LoadOptions,
    *,
    title: str = "data loading options",
) -> None:
    """Add ``--<field>`` for every command-line field of LoadOptions, defaulting to ``defaults``."""
    group = parser.add_argument_group(title)
    types = option_types()
    for f in cli_fields():
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = f.metadata["help"].replace("%", "%%")
        kw: dict[str, Any] = {"dest": f.name, "default": default}
        if types[f.name] is bool:
            # BooleanOptionalAction adds "(default: ...)" itself, and a --no-<flag> twin.
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=text, **kw)
            continue
        shown = f.metadata["shown_default"] if default is None else default
        kw["help"] = f"{text} (default: {'none' if shown in (None, '') else shown})"
        if f.metadata["choices"]:
            kw["choices"] = f.metadata["choices"]
        else:
            kw["type"] = types[f.name] if types[f.name] in (int, float) else str
            kw["metavar"] = f.metadata["metavar"] or f.name.upper()
        group.add_argument(flag, **kw)


def load_options(args: argparse.Namespace, defaults: LoadOptions) -> LoadOptions:
    """The LoadOptions the parsed flags give (``defaults`` for the fields that are not flags)."""
    return defaults.updated(**{f.name: getattr(args, f.name) for f in cli_fields()})
