"""Content and URL hashes: identical files share a digest; a URL names its cached file."""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

from fracturekit.io import IMAGE_EXTENSIONS


def _blake2b() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


def content_digest(path: str | os.PathLike[str]) -> str:
    """A hash of a file's bytes: identical files have identical digests."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, _blake2b).hexdigest()


def bytes_digest(data: bytes) -> str:
    """:func:`content_digest` of bytes already in memory (the same digest as the file's)."""
    digest = _blake2b()
    digest.update(data)
    return digest.hexdigest()


def cache_name(url: str) -> str:
    """The download cache's file name for ``url``: its hash, plus the URL's image extension."""
    suffix = Path(urllib.parse.urlparse(url).path).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        suffix = ""
    return bytes_digest(url.encode("utf-8")) + suffix
