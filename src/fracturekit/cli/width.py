"""`fracturekit width` (being written)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("fracturekit width is not implemented yet")
