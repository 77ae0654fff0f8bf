"""Downloads for URL manifests: each URL once into a cache, refused where it must not go.

A labelling-tool export names its images by URL, and those URLs (or their redirects) are
not ours to trust:

* **Where**: the host is resolved and every address checked; loopback, private, link-local,
  multicast, reserved, unspecified and cloud-metadata addresses are refused, and the
  connection goes to the addresses checked (a second lookup could answer otherwise: DNS
  rebinding). Redirects are followed here, at most ``MAX_REDIRECTS``, each hop checked again.
  ``allow_private_hosts=True`` lifts the address check (tests, trusted local servers).
* **How long**: ``timeout`` bounds connecting and each read; ``deadline`` bounds the whole
  download (a server dripping a byte at a time would otherwise hold it forever).
* **What is kept**: a body is cached only after it decodes completely as an image (decode,
  then write to a temp name and rename), so a partial or error body is never a cache hit; a
  cached file that does not decode (from an older cache) is fetched again.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fracturekit._files import atomic_write_bytes
from fracturekit.data._hashing import cache_name
from fracturekit.data._options import (
    DEFAULT_DOWNLOAD_DEADLINE,
    DEFAULT_DOWNLOAD_TIMEOUT,
    DEFAULT_MAX_DOWNLOAD_BYTES,
)
from fracturekit.io import ImageIssue, ImageReadError, open_image

MAX_REDIRECTS = 5
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Instance-metadata endpoints (they hand out cloud credentials): AWS/GCP/Azure, AWS over IPv6,
# Alibaba Cloud. The rows below refuse them anyway; named here so the refusal says why.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
# What a download may not reach, one row a kind of address; the first match names the refusal.
_REFUSED: tuple[tuple[str, Callable[[_Address], bool]], ...] = (
    ("cloud-metadata", lambda ip: ip in METADATA_ADDRESSES),
    ("loopback", lambda ip: ip.is_loopback),
    ("unspecified", lambda ip: ip.is_unspecified),
    ("link-local", lambda ip: ip.is_link_local),
    ("multicast", lambda ip: ip.is_multicast),
    ("reserved", lambda ip: ip.is_reserved),
    ("private", lambda ip: ip.is_private),
    ("non-public", lambda ip: not ip.is_global),
)


class DownloadError(Exception):
    """One URL could not be downloaded; the message says why (without the URL)."""


def address_refusal(address: str | _Address) -> str | None:
    """Why a download may not connect to ``address`` (``"loopback"``, ...), or None."""
    ip = ipaddress.ip_address(str(address).split("%", 1)[0])  # drop an IPv6 scope id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    for what, refused in _REFUSED:
        if refused(ip):
            return what
    return None


def _checked_addresses(host: str, port: int, allow_private: bool) -> list[str]:
    """Every address ``host`` resolves to; DownloadError when any of them is refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadError(f"cannot resolve host {host!r} ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            why = address_refusal(address)
            if why is not None:
                raise DownloadError(f"refused: {host} resolves to {address}, a {why} address")
    return addresses


class _Pinned:
    """Connect to the addresses that were checked, never to a fresh lookup of the host."""

    def __init__(self, *args, addresses: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._addresses = addresses
        # The connected socket, kept for the deadline's watchdog: http.client drops its own
        # reference once the response owns the connection.
        self.raw_socket: socket.socket | None = None
        self.expired = False
        # http.client opens its socket through this attribute (TLS then wraps it with the
        # host name, so certificates are checked against the name, not the address).
        self._create_connection = self._connect_checked

    def _connect_checked(self, address, timeout=None, source_address=None) -> socket.socket:
        error: OSError | None = None
        for ip in self._addresses:
            try:
                self.raw_socket = socket.create_connection(
                    (ip, address[1]), timeout, source_address
                )
            except OSError as exc:
                error = exc
            else:
                if self.expired:  # the watchdog fired while connecting
                    _shut(self.raw_socket)
                return self.raw_socket
        raise error or OSError("no address to connect to")


class _PinnedHTTP(_Pinned, http.client.HTTPConnection):
    pass


class _PinnedHTTPS(_Pinned, http.client.HTTPSConnection):
    pass


@dataclass(frozen=True)
class _Clock:
    """The limits of one download: ``timeout`` per operation, ``deadline`` in all."""

    timeout: float
    deadline: float
    end: float

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise DownloadError(f"took longer than the {self.deadline:g} s deadline")


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: nothing left to wake
        sock.shutdown(socket.SHUT_RDWR)


def _abort(conn: _Pinned) -> None:
    """The deadline's watchdog: shutting the socket down wakes a read blocked on it."""
    conn.expired = True
    if conn.raw_socket is not None:
        _shut(conn.raw_socket)


def _read_body(response: http.client.HTTPResponse, max_bytes: int, clock: _Clock) -> bytes:
    declared = response.getheader("Content-Length", "")
    size = int(declared) if declared.isdigit() else None
    if size is not None and size > max_bytes:
        raise DownloadError(f"{size} bytes, over the {max_bytes}-byte download cap")
    chunks, total = [], 0
    while chunk := response.read1(1 << 16):
        total += len(chunk)
        if total > max_bytes:
            raise DownloadError(f"over the {max_bytes}-byte download cap")
        chunks.append(chunk)
    clock.check()  # the watchdog ends a slow body early: that is not a whole file
    if size is not None and total != size:
        raise DownloadError(f"incomplete body: {total} of {size} bytes")
    if not total:
        raise DownloadError("empty response")
    return b"".join(chunks)


def _request(url: str, clock: _Clock, max_bytes: int, allow_private: bool) -> tuple[str, bytes]:
    """One GET: ``(redirect location, b"")`` or ``("", body)``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DownloadError(f"unsupported URL scheme {parts.scheme!r}")
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # a port that is not a number
        raise DownloadError(str(exc)) from None
    if not host:
        raise DownloadError("no host in the URL")
    addresses = _checked_addresses(host, port, allow_private)
    clock.check()
    cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    conn = cls(host, port, timeout=min(clock.timeout, clock.left()), addresses=addresses)
    watchdog = threading.Timer(max(0.0, clock.left()), _abort, (conn,))
    watchdog.daemon = True
    watchdog.start()
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    try:
        conn.request("GET", target, headers={"User-Agent": "fracturekit"})
        response = conn.getresponse()
        if response.status in _REDIRECT_CODES:
            location = response.getheader("Location")
            if not location:
                raise DownloadError(f"HTTP {response.status} redirect without a Location")
            return location, b""
        if response.status != 200:
            raise DownloadError(f"HTTP {response.status} {response.reason}")
        return "", _read_body(response, max_bytes, clock)
    except (OSError, http.client.HTTPException):
        clock.check()  # the watchdog's doing: say so rather than "connection reset"
        raise
    finally:
        watchdog.cancel()
        conn.close()


def fetch(
    url: str,
    *,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    deadline: float = DEFAULT_DOWNLOAD_DEADLINE,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    allow_private_hosts: bool = False,
) -> bytes:
    """The body of ``url``, following at most ``MAX_REDIRECTS`` redirects (each one checked).

    Raises:
        DownloadError: refused address, HTTP error, limit exceeded, too many redirects.
        OSError: the connection failed or a read timed out (``TimeoutError``).
    """
    clock = _Clock(timeout, deadline, time.monotonic() + deadline)
    for _ in range(MAX_REDIRECTS + 1):
        location, body = _request(url, clock, max_bytes, allow_private_hosts)
        if not location:
            return body
        url = urllib.parse.urljoin(url, location)
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects")


def default_cache_dir() -> Path:
    """``$FRACTUREKIT_CACHE`` or ``$XDG_CACHE_HOME/fracturekit`` (``~/.cache/fracturekit``),
    plus ``downloads``."""
    if os.environ.get("FRACTUREKIT_CACHE"):
        return Path(os.environ["FRACTUREKIT_CACHE"]) / "downloads"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fracturekit" / "downloads"


def _decodes(path: Path, max_pixels: int | None) -> bool:
    try:
        open_image(path, strict=True, max_pixels=max_pixels)
    except ImageReadError:
        return False
    return True


def _download_one(url: str, target: Path, fetch_options: dict, max_pixels: int | None) -> str:
    """Fetch ``url`` into ``target``; the reason it failed, or "" when it is cached."""
    if target.is_file():
        if _decodes(target, max_pixels):
            return ""
        target.unlink(missing_ok=True)  # a partial or error body: never a cache hit
    try:
        data = fetch(url, **fetch_options)
        # Strict: a truncated body cannot be told from a cut-off download.
        open_image(data, name=str(target), strict=True, max_pixels=max_pixels)
    except DownloadError as exc:
        return f"download failed: {exc}"
    except ImageReadError as exc:
        return f"download failed: {exc.reason}"
    except TimeoutError:
        return f"download failed: timed out after {fetch_options['timeout']:g} s"
    except (OSError, http.client.HTTPException) as exc:
        return f"download failed: {exc}"
    atomic_write_bytes(target, data)
    return ""


def download_images(
    urls: Iterable[str],
    cache_dir: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    workers: int = 8,
    deadline: float = DEFAULT_DOWNLOAD_DEADLINE,
    allow_private_hosts: bool = False,
    max_pixels: int | None = None,
) -> tuple[dict[str, Path], list[ImageIssue]]:
    """Download each URL once into ``cache_dir`` (a cached file that decodes is reused).

    Args:
        urls: http(s) URLs.
        cache_dir: where files go, named by a hash of the URL.
        timeout: seconds for connecting and for each read.
        max_bytes: refuse larger downloads (declared or actual size).
        workers: parallel downloads.
        deadline: seconds one download (redirects included) may take in all.
        allow_private_hosts: also reach loopback/private addresses (tests, trusted servers).
        max_pixels: pixel limit of the decode check (see :func:`fracturekit.io.open_image`).

    Returns:
        ``({url: local file}, [(url, reason) for each URL that failed])``.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(urls))
    fetch_options = {
        "timeout": timeout,
        "deadline": deadline,
        "max_bytes": max_bytes,
        "allow_private_hosts": allow_private_hosts,
    }

    def one(url: str) -> str:
        return _download_one(url, cache / cache_name(url), fetch_options, max_pixels)

    local: dict[str, Path] = {}
    failed: list[ImageIssue] = []
    if not unique:
        return local, failed
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique)))) as pool:
        for url, reason in zip(unique, pool.map(one, unique), strict=True):
            if reason:
                failed.append(ImageIssue(url, reason))  # type: ignore[arg-type]
            else:
                local[url] = cache / cache_name(url)
    return local, failed
