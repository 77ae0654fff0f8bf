"""Atomic writes: final mode, durability (fsync), and the cleanup of orphaned temp files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from fracturekit import _files
from fracturekit._files import (
    STALE_AGE_S,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    current_umask,
    remove_stale_temporaries,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes and pids")


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@posix_only
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_file_gets_the_mode_of_a_plain_open(tmp_path, umask, mask: int) -> None:
    umask(mask)
    plain = tmp_path / "plain.txt"
    with open(plain, "w") as f:
        f.write("x")
    assert current_umask() == mask
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_bytes(tmp_path / "b.bin", b"x")
    atomic_write(tmp_path / "c.bin", lambda p: p.write_bytes(b"x"), durable=False)
    for name in ("a.txt", "b.bin", "c.bin"):
        assert _mode(tmp_path / name) == _mode(plain) == 0o666 & ~mask, name


@posix_only
def test_umask_fallback_without_proc(tmp_path, umask, monkeypatch) -> None:
    umask(0o027)
    monkeypatch.setattr(_files, "_proc_umask", lambda: None)
    monkeypatch.setattr(_files, "_umask_fallback", None)
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # read and restored, not left changed
    atomic_write_text(tmp_path / "a.txt", "x")
    assert _mode(tmp_path / "a.txt") == 0o640


@posix_only
def test_overwrite_keeps_the_existing_mode(tmp_path, umask) -> None:
    umask(0o022)
    target = tmp_path / "shared.csv"
    target.write_text("old")
    os.chmod(target, 0o664)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o664


@posix_only
def test_fsync_file_before_rename_and_folder_after(tmp_path, monkeypatch) -> None:
    real_fsync, real_replace = os.fsync, os.replace
    events: list[tuple[str, str]] = []

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        events.append(("fsync", kind, st.st_ino))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "model.pt"
    atomic_write_bytes(target, b"weights")
    file_ino, dir_ino = os.stat(target).st_ino, os.stat(tmp_path).st_ino
    assert events == [("fsync", "file", file_ino), ("replace", file_ino), ("fsync", "dir", dir_ino)]
    events.clear()
    atomic_write_bytes(tmp_path / "scratch.bin", b"x")
    atomic_write(tmp_path / "cheap.bin", lambda p: p.write_bytes(b"x"), durable=False)
    assert [e[0] for e in events] == ["fsync", "replace", "fsync", "replace"]


def test_fsync_unsupported_by_the_filesystem_is_tolerated(tmp_path, monkeypatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "fsync", fsync)
    assert atomic_write_text(tmp_path / "a.txt", "x").read_text() == "x"


def test_failed_write_leaves_no_temp_and_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def write(p) -> None:
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, write)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_temp_name_carries_pid_and_host(tmp_path) -> None:
    seen = []
    atomic_write(tmp_path / "last.pt", lambda p: seen.append(p.name) or p.write_bytes(b""))
    match = _files._TEMP_RE.match(seen[0])
    assert seen[0].startswith(".last.pt.fk-") and match is not None
    assert int(match["pid"]) == os.getpid() and match["host"] == _files._host_tag()
    long_name = "é" * 120 + ".png"  # 244 bytes: the temp name must still fit 255
    atomic_write_bytes(tmp_path / long_name, b"x")
    assert (tmp_path / long_name).read_bytes() == b"x"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp(folder, name: str, pid: int, host: str, age_s: float = 0.0):
    path = folder / f".{name}.fk-{pid}-{host}-abcd1234.tmp"
    path.write_bytes(b"partial")
    if age_s:
        old = time.time() - age_s
        os.utime(path, (old, old))
    return path


@posix_only
def test_stale_temporaries_removed_live_and_foreign_kept(tmp_path) -> None:
    here, other = _files._host_tag(), "0123abcd" if _files._host_tag() != "0123abcd" else "fedc4321"
    dead = _temp(tmp_path, "last.pt", _dead_pid(), here)
    live = _temp(tmp_path, "last.pt", os.getpid(), here, age_s=2 * STALE_AGE_S)
    remote_new = _temp(tmp_path, "best.pt", 1, other, age_s=60)
    remote_old = _temp(tmp_path, "model.pt", 1, other, age_s=2 * STALE_AGE_S)
    users = [tmp_path / n for n in (".last.pt.abcd1234.tmp", "last.pt.fk-1-x.tmp", "notes.tmp")]
    users.append(tmp_path / f"last.pt.fk-{_dead_pid()}-{here}-abcd1234.tmp.keep")
    for p in users:
        p.write_text("mine")
    (tmp_path / f".x.fk-{_dead_pid()}-{here}-abcd1234.tmp").mkdir()  # a folder: not ours
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([dead, remote_old])
    assert not dead.exists() and not remote_old.exists()
    assert live.exists() and remote_new.exists() and all(p.exists() for p in users)


@posix_only
def test_first_write_into_a_folder_removes_orphans(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(_files, "_cleaned", set())
    orphan = _temp(tmp_path, "last.pt", _dead_pid(), _files._host_tag())
    atomic_write_bytes(tmp_path / "last.pt", b"new")
    assert not orphan.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@posix_only
def test_killed_writer_leaves_a_temp_the_next_write_removes(tmp_path, monkeypatch) -> None:
    code = (
        "import os, signal, sys\n"
        "from fracturekit._files import atomic_write\n"
        "def write(p):\n"
        "    p.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "last.pt")], check=False)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".last.pt.fk-")
    monkeypatch.setattr(_files, "_cleaned", set())
    atomic_write_bytes(tmp_path / "last.pt", b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_concurrent_writers_into_one_folder(tmp_path) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                atomic_write_text(tmp_path / f"f{i}.txt", f"{i}-{j}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f{i}.txt" for i in range(4)]


def test_unwritable_folder_error_names_the_target(tmp_path, monkeypatch) -> None:
    def mkstemp(**kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".out.csv.fk-1-x.tmp"))

    monkeypatch.setattr(_files.tempfile, "mkstemp", mkstemp)
    with pytest.raises(PermissionError) as info:
        atomic_write_text(tmp_path / "out.csv", "x")
    assert info.value.filename == str(tmp_path / "out.csv")
