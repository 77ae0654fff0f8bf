"""The REST API and its web page: ``create_app(checkpoint_or_predictor) -> FastAPI``.

Importing this package is free; FastAPI loads with :mod:`fracturekit.serve.app`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from fracturekit.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'fracturekit.serve' has no attribute {name!r}")
