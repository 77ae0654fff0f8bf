"""The command line's error handling: system and library failures are one line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fracturekit.cli import main

SYNTH = ["--n", "2", "--size", "32", "--seed", "0"]


def test_os_error_is_one_line_without_traceback(tmp_path) -> None:
    out = tmp_path / ("x" * 300) / "data"  # a name longer than any filesystem allows
    proc = subprocess.run(
        [sys.executable, "-m", "fracturekit", "synth", str(out), *SYNTH],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fracturekit synth: error: ")
    assert "name too long" in lines[0]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores modes")
def test_read_only_folder_is_one_line(tmp_path, capsys) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(["synth", str(folder / "data"), *SYNTH]) == 1
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and str(folder) in err


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (PermissionError(13, "Permission denied", "/data/out/model.pt"), "/data/out/model.pt"),
        (OSError(28, "No space left on device"), "No space left on device"),
        (RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB"), "memory. Tried to"),
        (RuntimeError(), "RuntimeError"),
    ],
)
def test_runtime_and_os_errors_are_reported(monkeypatch, capsys, exc, expected: str) -> None:
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr("fracturekit.synthetic.generate_dataset", fail)
    assert main(["synth", "out", *SYNTH]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fracturekit synth: error: ") and expected in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("exc", [NotImplementedError("todo"), RecursionError(), TypeError("bug")])
def test_programming_errors_keep_their_traceback(monkeypatch, exc) -> None:
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr("fracturekit.synthetic.generate_dataset", fail)
    with pytest.raises(type(exc)):
        main(["synth", "out", *SYNTH])
