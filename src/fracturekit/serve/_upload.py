"""Reading one multipart upload into memory, with a hard size limit.

Starlette's own form parser spools file parts over 1 MB to temporary files on disk; the service
promises to write nothing uploaded to disk (unless asked), so the body is parsed here, in
memory, with python-multipart's streaming parser. Bytes are counted as they arrive: a body larger
than the limit is refused as soon as the limit is passed (or at once from its Content-Length),
never buffered whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

# python-multipart logs a warning for every malformed part before raising; the client gets the
# reason in its 400 answer, so the server log need not repeat it for each bad request.
logging.getLogger("python_multipart").setLevel(logging.ERROR)

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
MAX_PARTS = 16
MAX_FIELD_BYTES = 64 * 1024  # a non-file field (the page sends none; clients may)


class UploadError(Exception):
    """A request the service refuses; ``status`` is the HTTP status, ``str()`` the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


async def read_file_part(request: Request, field_name: str, max_bytes: int) -> Part:
    """Read a ``multipart/form-data`` body and return its part named ``field_name``.

    Raises:
        UploadError: 415 not multipart; 413 over ``max_bytes``; 400 a malformed body or a
            disconnected client; 422 no part named ``field_name`` (the message lists the names
            that were sent).
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
    declared = request.headers.get("content-length")
    if declared is not None:
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
    collector = _Collector(max_bytes)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
    except ValueError as exc:
        raise UploadError(400, f"malformed multipart boundary ({exc})") from None
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise UploadError(
                    413,
                    f"upload is over the limit of {_mb(max_bytes)} "
                    "(fracturekit serve --max-upload-mb)",
                )
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except ClientDisconnect:
        raise UploadError(400, "the client disconnected before the upload was complete") from None
    except Exception as exc:  # python-multipart raises its own error types on malformed bodies
        raise UploadError(400, f"malformed multipart body ({exc})") from None
    for part in collector.parts:
        if part.name == field_name:
            return part
    names = ", ".join(f"'{p.name}'" for p in collector.parts) or "none"
    raise UploadError(
        422,
        f"no form field named '{field_name}' (fields sent: {names}); send the image as "
        f"'{field_name}'",
    )
