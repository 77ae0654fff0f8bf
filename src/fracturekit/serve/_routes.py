"""The routes of the service and its error handlers, as plain functions over
``request.app.state`` (set up by ``create_app`` and its lifespan)."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response

from fracturekit import __version__
from fracturekit.contracts import EXPLAIN_METHOD
from fracturekit.serve._engine import (
    _display_name,
    _Engine,
    _explain_sync,
    _predict_sync,
)
from fracturekit.serve._schemas import FIELD, ExplainResponse
from fracturekit.serve._upload import UploadError, read_file_part

log = logging.getLogger("fracturekit.serve")

STATIC = Path(__file__).resolve().parent / "static"
# The page is self-contained: no script, style or image from anywhere else.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


# --------------------------------------------------------------------------------------------
# Error handlers: every refusal is {"detail": "<message>"}


async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error ({type(exc).__name__}); see the server log"},
        status_code=500,
    )


# --------------------------------------------------------------------------------------------
# Receiving an upload, then running it on the work queue


def engine_of(request: Request) -> _Engine:
    engine = request.app.state.engine
    if engine is None:
        raise UploadError(503, "the model is not loaded yet; retry in a moment")
    return engine


async def run_upload(request: Request, work: Callable[[_Engine, bytes, str, float], Any]) -> Any:
    """Receive the upload (bounded in rate, size and the bytes held across requests), then run
    ``work`` on the work queue; 503 with Retry-After when the queue is full."""
    start = time.perf_counter()
    engine = engine_of(request)
    state = request.app.state
    state.work.check()  # no point receiving a body that could not be run
    held = state.receiving.open()
    try:
        part = await read_file_part(request, FIELD, state.max_bytes, held)
        data, name = bytes(part.data), _display_name(part.filename)
        del part
    finally:
        held.close()  # the upload's share is free before inference: the queue bounds the rest
    return await state.work.run(partial(work, engine, data, name, start))


# --------------------------------------------------------------------------------------------
# Routes


async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def health(request: Request) -> dict[str, Any]:
    """Liveness: 200 once the model is loaded."""
    engine = engine_of(request)
    return {
        "status": "ok",
        "version": __version__,
        "model": engine.predictor.meta.get("backbone"),
        "backend": engine.predictor.backend,
    }


async def model(request: Request) -> dict[str, Any]:
    """The loaded model: classes, backbone, input size, threshold, metrics summary."""
    engine = engine_of(request)
    return {
        **engine.predictor.describe(),
        "max_upload_mb": request.app.state.max_upload_mb,
        "max_pixels": engine.max_pixels or 0,
        "explain_methods": request.app.state.methods,
    }


async def predict(
    request: Request,
    preview: bool = Query(False, description="also return the decoded image as base64 PNG"),
) -> dict[str, Any]:
    """Classify one image sent as multipart field ``file``."""
    return await run_upload(
        request, lambda e, data, name, start: _predict_sync(e, data, name, preview, start)
    )


async def explain(
    request: Request,
    format: Literal["png", "json"] = Query("png", description="png: the overlay image"),
    method: str = Query(EXPLAIN_METHOD, description="CAM method (see GET /model)"),
    target: str | None = Query(None, description="class to explain (default: predicted)"),
    width: bool = Query(True, description="measure the crack in the heat-map region"),
    px_per_mm: float | None = Query(
        None, gt=0, le=1e6, allow_inf_nan=False, description="scale, for widths in mm"
    ),
) -> Response:
    """Where the model looks: the class-activation heat map over the image."""
    engine = engine_of(request)
    methods = request.app.state.methods
    if not methods:
        reason = (
            "the model runs on ONNX Runtime; serve the PyTorch checkpoint for heat maps"
            if engine.predictor.backend != "torch"
            else "heat maps need fracturekit.explain, which this installation lacks"
        )
        raise UploadError(501, f"/explain is not available: {reason}")
    if method not in methods:
        raise UploadError(
            422,
            f"method {method!r} is not one of {', '.join(methods)} "
            "(the server's --explain-methods)",
        )
    if target is not None and target not in engine.predictor.classes:
        raise UploadError(
            422,
            f"target {target!r} is not a class of this model "
            f"({', '.join(engine.predictor.classes)})",
        )
    out, png = await run_upload(
        request,
        lambda e, data, name, start: _explain_sync(
            e, data, name, method, target, width, px_per_mm, start
        ),
    )
    if format == "png":
        return Response(
            png,
            media_type="image/png",
            headers={
                # Headers are latin-1: class names travel percent-encoded (UTF-8).
                "X-Fracturekit-Label": quote(out["label"]),
                "X-Fracturekit-Confidence": f"{out['confidence']:.6f}",
            },
        )
    return JSONResponse(
        ExplainResponse(**out, overlay_png=base64.b64encode(png).decode("ascii")).model_dump()
    )
