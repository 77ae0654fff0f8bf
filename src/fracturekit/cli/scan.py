"""`fracturekit scan` (being written)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("fracturekit scan is not implemented yet")
