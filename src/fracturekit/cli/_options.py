"""Options that several commands share, declared once: each adds the flag with one wording."""

from __future__ import annotations

import argparse
from typing import Any

from fracturekit.contracts import BACKENDS


def passed(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """``{name: args.<name>}``: the flags a command hands to its library call under their own
    names (a flag's destination is the keyword it sets)."""
    return {name: getattr(args, name) for name in names}


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (else a usage error naming the value)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def add_overwrite(parser: argparse.ArgumentParser, what: str = "existing output files") -> None:
    """``--overwrite``: without it, a command refuses to replace what is already there."""
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_backend(
    parser: argparse.ArgumentParser,
    default: str = "torch",
    help: str = "",
    choices: tuple[str, ...] = BACKENDS,
) -> None:
    """``--backend torch|onnx`` (or ``choices``): which runtime runs the model."""
    parser.add_argument(
        "--backend",
        choices=choices,
        default=default,
        help=help or f"inference backend (default {default})",
    )


def add_batch_size(parser: argparse.ArgumentParser, default: int, what: str = "images") -> None:
    """``--batch-size N``: how many items go through the model at once."""
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=default,
        metavar="N",
        help=f"{what} per batch (default {default})",
    )
