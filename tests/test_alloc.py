"""The command line's allocator setting (fracturekit._alloc)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from fracturekit import _alloc

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# A fresh process allocates, touches and frees a 64 MiB tensor, then allocates and touches a
# 32 MiB one (as the next, smaller batch does) and reports that second allocation's page faults.
CHILD = r"""
import json, resource, torch
from fracturekit._alloc import keep_freed_memory
applied = keep_freed_memory()
a = torch.ones(16 << 20)
del a
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = torch.ones(8 << 20)
print(json.dumps({"applied": applied,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}))
"""


def _child(**env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.slow
def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    default = _child(FRACTUREKIT_MALLOC="0")
    tuned = _child(FRACTUREKIT_MALLOC="1")
    assert default["applied"] is False and tuned["applied"] is True
    # 32 MiB is 8,192 pages: glibc's defaults map them afresh and fault each one in.
    assert default["faults"] > 8_000
    assert tuned["faults"] < default["faults"] / 10


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRACTUREKIT_MALLOC", "0")
    assert _alloc.keep_freed_memory() is False


def test_the_command_line_applies_it_before_running_a_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from fracturekit import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main([]) == 2 and calls == []  # no command: help only
    assert cli.main(["synth", str(tmp_path / "s"), "--n", "2", "--size", "32"]) == 0
    assert calls == [1] and (tmp_path / "s" / "crack").is_dir()
