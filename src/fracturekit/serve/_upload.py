"""Reading one multipart upload into memory, with limits on size, time and memory.

Starlette's own form parser spools file parts over 1 MB to temporary files on disk; the service
promises to write nothing uploaded to disk (unless asked), so the body is parsed here, in
memory, with python-multipart's streaming parser. Bytes are counted as they arrive: a body larger
than the limit is refused as soon as the limit is passed (or at once from its Content-Length),
never buffered whole. A body must keep arriving at ``MIN_RATE`` bytes/s after ``GRACE_S``
seconds (a client trickling one byte every few seconds is cut off, 408), and the bodies being
received together share one byte budget (``ReceiveBudget``: past it, 503 with Retry-After).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

# python-multipart logs a warning for every malformed part before raising; the client gets the
# reason in its 400 answer, so the server log need not repeat it for each bad request.
logging.getLogger("python_multipart").setLevel(logging.ERROR)

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
MAX_PARTS = 16
MAX_FIELD_BYTES = 64 * 1024  # a non-file field (the page sends none; clients may)
UPLOAD_TIMEOUT_S = 120.0  # longest time to receive one upload's body, however fast it comes
GRACE_S = 10.0  # a body may take this long to get going...
MIN_RATE = 64 * 1024  # ...then it must have arrived at this many bytes/s on average
RETRY_AFTER_S = 2  # what a client told "busy" (503) should wait before trying again


class UploadError(Exception):
    """A request the service refuses; ``status`` is the HTTP status, ``str()`` the message,
    ``headers`` extra response headers (``Retry-After`` on 503)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def busy(message: str) -> UploadError:
    """The 503 of a full server: the client should retry after ``RETRY_AFTER_S`` seconds."""
    return UploadError(503, message, {"Retry-After": str(RETRY_AFTER_S)})


class ReceiveBudget:
    """The uploads being received at once and the bytes they hold, across requests.

    Counting bytes rather than slots lets slow or idle clients, which hold almost nothing, stay
    connected without blocking anyone; the memory of bodies in flight stays under ``max_bytes``.
    Used from the event loop only (no lock needed).
    """

    def __init__(self, max_bytes: int, max_uploads: int) -> None:
        self.max_bytes = max_bytes
        self.max_uploads = max_uploads
        self.bytes = 0
        self.uploads = 0

    def open(self) -> _Held:
        """Start receiving one body (503 when ``max_uploads`` are already arriving)."""
        if self.uploads >= self.max_uploads:
            raise busy(f"the server is receiving {self.uploads} uploads; retry shortly")
        self.uploads += 1
        return _Held(self)


class _Held:
    """One body's share of a ``ReceiveBudget``; ``close()`` gives it back."""

    def __init__(self, budget: ReceiveBudget) -> None:
        self.budget = budget
        self.n = 0
        self.closed = False

    def add(self, n: int) -> None:
        if self.budget.bytes + n > self.budget.max_bytes:
            raise busy("the server holds too many uploads in memory; retry shortly")
        self.budget.bytes += n
        self.n += n

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.budget.bytes -= self.n
            self.budget.uploads -= 1


@dataclass
class Part:
    """One part of a multipart form."""

    name: str
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


class _Collector:
    """python-multipart callbacks that collect parts in memory, with limits."""

    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.parts: list[Part] = []
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise UploadError(400, f"too many parts in the form (at most {MAX_PARTS})")
        self._headers = {}
        self.parts.append(Part(name=""))

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        part = self.parts[-1]
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise UploadError(400, "a form part has no name (Content-Disposition: name=...)")
        part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            part.filename = options[b"filename"].decode("utf-8", "replace")
        ctype = self._headers.get(b"content-type")
        part.content_type = ctype.decode("latin-1") if ctype else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.data += data[start:end]
        if part.filename is None and len(part.data) > MAX_FIELD_BYTES:
            raise UploadError(
                413,
                f"form field '{part.name}' is over {MAX_FIELD_BYTES // 1024} KB; send the "
                "image as a file part",
            )
        if len(part.data) > self.max_file_bytes:
            raise UploadError(
                413,
                f"upload is larger than the limit of {_mb(self.max_file_bytes)} "
                "(fracturekit serve --max-upload-mb)",
            )


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    """The body's chunks, each awaited no longer than the transfer rate allows (408 past it)."""
    stream = request.stream().__aiter__()
    start = time.monotonic()
    received = 0
    while True:
        elapsed = time.monotonic() - start
        # By now the body may have taken GRACE_S plus its size at MIN_RATE, and never more
        # than UPLOAD_TIMEOUT_S: a trickle runs out of time, a steady upload never does.
        allowed = min(UPLOAD_TIMEOUT_S, GRACE_S + received / MIN_RATE)
        try:
            with anyio.fail_after(max(allowed - elapsed, 0.0)):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadError(
                408,
                f"the upload arrived too slowly ({received} bytes in {elapsed:.0f} s; send at "
                f"least {MIN_RATE // 1024} KB/s, the whole body within {UPLOAD_TIMEOUT_S:g} s)",
            ) from None
        received += len(chunk)
        yield chunk


def _check_length(request: Request, limit: int, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        declared_n = int(declared)
    except ValueError:
        raise UploadError(400, f"invalid Content-Length {declared!r}") from None
    if declared_n > limit:
        raise UploadError(
            413,
            f"upload is {_mb(declared_n)}, over the limit of {_mb(max_bytes)} "
            "(fracturekit serve --max-upload-mb)",
        )


async def read_file_part(
    request: Request, field_name: str, max_bytes: int, held: _Held | None = None
) -> Part:
    """Read a ``multipart/form-data`` body and return its part named ``field_name``.

    Args:
        request: the request whose body is read.
        field_name: the form field that holds the file.
        max_bytes: largest file part.
        held: this body's share of the server's ``ReceiveBudget`` (bytes are added to it as
            they arrive); None counts nothing.

    Raises:
        UploadError: 415 not multipart; 413 over ``max_bytes``; 408 too slow; 503 the budget
            is spent; 400 a malformed or unfinished body, or a disconnected client; 422 no part
            named ``field_name`` (the message lists the names that were sent).
    """
    ctype = request.headers.get("content-type", "")
    kind, options = parse_options_header(ctype)
    if kind != b"multipart/form-data":
        raise UploadError(
            415,
            f"send the image as multipart/form-data in a field named '{field_name}' (got "
            f"content type '{ctype or 'none'}'), e.g. curl -F {field_name}=@image.png URL",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart body without a boundary in its Content-Type")
    limit = max_bytes + MULTIPART_OVERHEAD
    _check_length(request, limit, max_bytes)
    collector = _Collector(max_bytes)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
    except ValueError as exc:
        raise UploadError(400, f"malformed multipart boundary ({exc})") from None
    received = 0
    try:
        async for chunk in _chunks(request):
            received += len(chunk)
            if received > limit:
                raise UploadError(
                    413,
                    f"upload is over the limit of {_mb(max_bytes)} "
                    "(fracturekit serve --max-upload-mb)",
                )
            if held is not None:
                held.add(len(chunk))
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except ClientDisconnect:
        raise UploadError(400, "the client disconnected before the upload was complete") from None
    except Exception as exc:  # python-multipart raises its own error types on malformed bodies
        raise UploadError(400, f"malformed multipart body ({exc})") from None
    if parser.state != MultipartState.END:
        # A body cut before its closing boundary may hold a truncated file that still decodes.
        end = boundary.decode("latin-1")
        raise UploadError(400, f"the multipart body ends before its closing boundary '--{end}--'")
    for part in collector.parts:
        if part.name == field_name:
            return part
    names = ", ".join(f"'{p.name}'" for p in collector.parts) or "none"
    raise UploadError(
        422,
        f"no form field named '{field_name}' (fields sent: {names}); send the image as "
        f"'{field_name}'",
    )
