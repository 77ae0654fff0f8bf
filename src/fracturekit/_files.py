"""File helpers shared by every level: atomic, durable writes and the cleanup of their leftovers.

``atomic_write`` writes a temp file in the target's folder, gives it the mode a plain
``open(path, "w")`` would (``mkstemp`` creates 0600 whatever the umask), flushes it to disk,
renames it onto the target and flushes the folder, so neither a crash nor a power loss leaves
half a file (or an empty one) at the target.

Temp names are ``.<name>.fk-<pid>-<host>-<random>.tmp``: a writer killed mid-write (SIGKILL,
power loss) leaves one behind, and the pid and host tag let ``remove_stale_temporaries`` tell an
orphan from the temp file of a writer that is still running. The first write into a folder
removes the orphans there.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

# A temp file of another host's writer is removed only when older than this: its pid cannot be
# checked from here, and no single atomic write runs for a day.
STALE_AGE_S = 24 * 3600.0

_TEMP_RE = re.compile(r"\A\..*\.fk-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[A-Za-z0-9_]{6,16}\.tmp\Z")
_NAME_BYTES = 180  # room for the tag within the usual 255-byte name limit
_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}

_umask_lock = threading.Lock()
_umask_fallback: int | None = None
_cleaned_lock = threading.Lock()
_cleaned: set[str] = set()


@functools.cache
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _proc_umask() -> int | None:
    """The umask from ``/proc/self/status`` (Linux 4.7+), or None where it is not there."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_umask() -> int:
    """The process umask, read without a window in which it is wrong where possible.

    ``os.umask`` can only be read by setting it, which races with other threads creating files;
    so it is read from ``/proc`` where available, else once (under a lock, with the strictest
    value in the window so a racing file is never made more open) and remembered.
    """
    value = _proc_umask()
    if value is not None:
        return value
    global _umask_fallback
    with _umask_lock:
        if _umask_fallback is None:
            _umask_fallback = os.umask(0o077)
            os.umask(_umask_fallback)
        return _umask_fallback


def _final_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` would leave: the existing file's, else 0666-umask."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode) & 0o777
    return 0o666 & ~current_umask()


def _pid_alive(pid: int) -> bool | None:
    """Whether process ``pid`` exists on this machine; None where that cannot be asked safely."""
    if os.name != "posix":
        return None  # os.kill on Windows terminates the process instead of probing it
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return None
    return True


def _is_stale(name: str, mtime: float, now: float) -> bool:
    match = _TEMP_RE.match(name)
    if match is None:
        return False
    if match["host"] == _host_tag():
        alive = _pid_alive(int(match["pid"]))
        if alive is not None:
            return not alive
    return now - mtime > STALE_AGE_S


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temp files ``atomic_write`` left in ``folder`` when its writer died.

    Only names of ``atomic_write``'s own pattern are considered; of those, one whose writer ran
    on this host is removed when that process no longer exists, one from another host when
    older than ``STALE_AGE_S``. A live writer's temp file and every other file are kept.
    Best effort: files that cannot be removed are left. Returns the removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.endswith(".tmp") or ".fk-" not in entry.name:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if _is_stale(entry.name, entry.stat(follow_symlinks=False).st_mtime, now):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # vanished meanwhile, or not ours to remove
    return removed


def _clean_once(folder: Path) -> None:
    """``remove_stale_temporaries`` on the first write into ``folder`` in this process."""
    key = os.path.abspath(folder)
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    remove_stale_temporaries(folder)


def _temp_prefix(name: str) -> str:
    raw = name.encode("utf-8", "surrogateescape")[:_NAME_BYTES]
    short = raw.decode("utf-8", "ignore") if len(raw) == _NAME_BYTES else name
    return f".{short}.fk-{os.getpid()}-{_host_tag()}-"


def _fsync_path(path: Path, *, directory: bool = False, mode: int | None = None) -> None:
    """fsync ``path`` (setting ``mode`` first); filesystems that cannot sync are tolerated."""
    if directory and os.name != "posix":
        return  # folders cannot be opened for syncing on Windows
    flags = os.O_RDONLY if os.name == "posix" else os.O_RDWR
    if directory:
        flags |= getattr(os, "O_DIRECTORY", 0)
    if mode is not None and not hasattr(os, "fchmod"):
        os.chmod(path, mode)
        mode = None
    fd = os.open(path, flags)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None], *, durable: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``.

    A crash mid-write leaves the previous file (or nothing) at ``path``, never half a file. The
    file gets the mode ``open(path, "w")`` would give it (the existing file's, else
    ``0o666 & ~umask``). With ``durable`` (the default) the file is fsynced before the rename
    and its folder after it, so a power loss cannot leave an empty file either; pass False only
    for files that are cheap to regenerate.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the caller asked for, not the temp name
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        mode = _final_mode(path)
        if durable:
            _fsync_path(tmp_path, mode=mode)
        else:
            os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    if durable:
        _fsync_path(path.parent, directory=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data), durable=durable)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"), durable=durable)
