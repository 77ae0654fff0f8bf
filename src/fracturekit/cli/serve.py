"""`fracturekit serve` (being written)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("fracturekit serve is not implemented yet")
