"""The options of ``fracturekit serve`` as environment variables, declared once.

uvicorn starts the app from an import string in every worker process, so ``cli.serve`` writes
the options into these variables and ``serve.app.create_app_from_env`` reads them back. ``cli``
and ``serve`` share a level and do not import each other: both import the names and the
service's defaults from this module, which imports nothing.
"""

from __future__ import annotations

ENV_CHECKPOINT = "FRACTUREKIT_SERVE_CHECKPOINT"
ENV_BACKEND = "FRACTUREKIT_SERVE_BACKEND"
ENV_MAX_UPLOAD_MB = "FRACTUREKIT_SERVE_MAX_UPLOAD_MB"
ENV_MAX_PIXELS = "FRACTUREKIT_SERVE_MAX_PIXELS"
ENV_SAVE_UPLOADS = "FRACTUREKIT_SERVE_SAVE_UPLOADS"
ENV_SAVE_MAX = "FRACTUREKIT_SERVE_SAVE_MAX"
ENV_EXPLAIN_METHODS = "FRACTUREKIT_SERVE_EXPLAIN_METHODS"  # comma-separated
ENV_ALLOWED_HOSTS = "FRACTUREKIT_SERVE_ALLOWED_HOSTS"  # comma-separated; "*" allows any
ENV_DOCS = "FRACTUREKIT_SERVE_DOCS"  # "1": serve /docs
# The key is also read by `fracturekit serve` itself, so that it need not be typed on a command
# line (where every user of the machine can read it in the process list).
ENV_API_KEY = "FRACTUREKIT_API_KEY"

DEFAULT_MAX_UPLOAD_MB = 25.0
# A service decodes what strangers send: 40 MP covers a 12 MP phone photo and a large X-ray
# with room to spare, at less than half the command line's 100 MP limit.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_SAVE_MAX = 1000  # files kept by --save-uploads before it stops saving
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def split_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (the encoding of list options)."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]
