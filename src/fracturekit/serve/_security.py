"""Access control in front of every route, as ASGI middleware (``Guard``).

In order, each refusal a JSON ``{"detail": ...}``:

1. ``Host`` must name this server (``allowed_hosts``; 400 otherwise): a web page cannot reach
   a local service by pointing a name it controls at 127.0.0.1 (DNS rebinding).
2. A request with an ``Origin`` must come from the server's own page (403 otherwise): any web
   page the user visits can otherwise POST to a local service. Requests without ``Origin``
   (curl, scripts, the page's own GETs) pass.
3. With an API key, every route but the page (``/``, ``/static/...``) and ``/health`` needs it
   as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (401 otherwise), compared in
   constant time.

Every answer, refused or not, carries ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PUBLIC_PATHS = ("/", "/health")  # plus everything under /static/: the page and its files
DEFAULT_PORTS = (None, 80, 443)


def _host_port(netloc: str) -> tuple[str, int | None]:
    """``"Example.org:8000"`` -> ``("example.org", 8000)``; ``"[::1]"`` -> ``("::1", None)``."""
    try:
        parts = urlsplit("//" + netloc)
        return (parts.hostname or "").lower(), parts.port
    except ValueError:  # a port that is not a number, or out of range
        return "", None


def _same_origin(origin: str, host: str) -> bool:
    """Whether the ``Origin`` header names the server the request was sent to (``Host``).

    A missing port matches the other side's default port either way: behind a TLS proxy the
    page's origin is https (443) while the server sees plain http.
    """
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, file://) and anything else is foreign
    o_host, o_port = _host_port(parts.netloc)
    h_host, h_port = _host_port(host)
    if not o_host or o_host != h_host:
        return False
    return o_port == h_port or (o_port in DEFAULT_PORTS and h_port in DEFAULT_PORTS)


def _given_key(headers: Headers) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
    return headers.get("x-api-key")


class Guard:
    """The middleware: ``api_key`` None lets every request in; ``allowed_hosts`` None or
    holding ``"*"`` accepts any ``Host``."""

    def __init__(
        self, app: ASGIApp, *, api_key: str | None, allowed_hosts: list[str] | None
    ) -> None:
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None
        hosts = None if allowed_hosts is None or "*" in allowed_hosts else allowed_hosts
        self.hosts = None if hosts is None else {_host_port(h)[0] or h.lower() for h in hosts}

    def refusal(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        """(status, message, headers) of a refused request, or None."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.hosts is not None and _host_port(host)[0] not in self.hosts:
            return (
                400,
                f"this server does not answer to Host {host!r}; allowed: "
                f"{', '.join(sorted(self.hosts))} (fracturekit serve --allowed-hosts)",
                {},
            )
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host):
            return 403, f"requests from other web sites are refused (Origin {origin!r})", {}
        path = scope.get("path", "")
        if self.key is None or path in PUBLIC_PATHS or path.startswith("/static/"):
            return None
        given = _given_key(headers)
        if not given:
            message = "this server needs an API key: send 'Authorization: Bearer KEY'"
            return 401, message + " or 'X-API-Key: KEY'", {"WWW-Authenticate": "Bearer"}
        # Header values arrive as latin-1 text: back to the bytes sent, so a UTF-8 key matches.
        if not hmac.compare_digest(given.encode("latin-1", "replace"), self.key):
            return 401, "wrong API key", {"WWW-Authenticate": "Bearer"}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is not None:
            status, message, extra = refused
            headers = {**extra, "X-Content-Type-Options": "nosniff"}
            await JSONResponse({"detail": message}, status, headers=headers)(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, send_nosniff)
