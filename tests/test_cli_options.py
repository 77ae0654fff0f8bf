"""The options and progress bar that several commands share."""

from __future__ import annotations

import argparse
import io

import pytest
from rich.console import Console

from fracturekit.cli._options import add_backend, add_batch_size, add_overwrite
from fracturekit.progress import progress_bar


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    add_overwrite(parser)
    add_backend(parser)
    add_batch_size(parser, 16)
    return parser


def test_shared_options_parse_and_default():
    args = _parser().parse_args([])
    assert (args.overwrite, args.backend, args.batch_size) == (False, "torch", 16)
    args = _parser().parse_args(["--overwrite", "--backend", "onnx", "--batch-size", "3"])
    assert (args.overwrite, args.backend, args.batch_size) == (True, "onnx", 3)


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_batch_size_below_one_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--batch-size", value])
    assert exc.value.code == 2
    assert "--batch-size" in capsys.readouterr().err


def test_progress_bar_starts_on_first_update_and_stops():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80)
    with progress_bar("working", console=console, transient=False) as bar:
        assert not bar._started  # nothing drawn before the first update
        for done in range(4):
            bar(done, 3)
        assert bar._started
    assert not bar._started
    assert "working" in out.getvalue() and "3/3" in out.getvalue()
