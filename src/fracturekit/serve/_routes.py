"""The routes of the service and its error handlers, as plain functions over
``request.app.state`` (set up by ``create_app`` and its lifespan)."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response

from fracturekit import __version__
from fracturekit.contracts import EXPLAIN_METHOD
from fracturekit.serve._engine import (
    SEGMENT_EXPLAIN_METHOD,
    _display_name,
    _Engine,
    _explain_sync,
    _predict_sync,
)
from fracturekit.serve._schemas import FIELD, ExplainResponse, SegmentResponse
from fracturekit.serve._segment import _explain_segment_sync, _segment_sync
from fracturekit.serve._upload import UploadError, read_file_part

log = logging.getLogger("fracturekit.serve")

STATIC = Path(__file__).resolve().parent / "static"
# The page is self-contained: no script, style or image from anywhere else.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
RUNTIME_NAMES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}
# The scale query of /explain and /segment: pixels per millimetre, for widths in mm.
PxPerMm = Annotated[
    float | None,
    Query(gt=0, le=1e6, allow_inf_nan=False, description="scale, for widths in mm"),
]


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
        "model": engine.fast.meta.get("backbone"),
        "backend": engine.fast.backend,
    }


async def model(request: Request) -> dict[str, Any]:
    """The loaded model: classes, backbone, input size, threshold, metrics summary."""
    engine = engine_of(request)
    batcher = engine.batcher
    return {
        **engine.fast.describe(),
        "explain_backend": engine.predictor.backend,
        "batching": None
        if batcher is None
        else {
            "max_batch": batcher.max_batch,
            "max_wait_ms": round(batcher.max_wait_s * 1000, 3),
            "batches": batcher.batches,
            "mean_batch": round(batcher.mean_batch, 3),
        },
        "max_upload_mb": request.app.state.max_upload_mb,
        "max_pixels": engine.max_pixels or 0,
        "explain_methods": request.app.state.methods,
    }


async def predict(
    request: Request,
    preview: bool = Query(False, description="also return the decoded image as base64 PNG"),
) -> dict[str, Any]:
    """Classify one image sent as multipart field ``file`` (a segmentation model: the image-level
    answer of its mask, with ``crack_fraction``). A classifier's requests arriving together run
    as one batch."""
    engine = engine_of(request)
    if engine.batcher is None:
        return await run_upload(
            request, lambda e, data, name, start: _predict_sync(e, data, name, preview, start)
        )
    prepared = await run_upload(
        request, lambda e, data, name, start: e.prepare(data, name, preview, start)
    )
    return await engine.classify(prepared)


def _explain_method(request: Request, engine: _Engine, method: str | None) -> str:
    """The method ``/explain`` runs (default: ``EXPLAIN_METHOD``; a segmenter's probability
    map), or a 501/422 saying why it cannot."""
    methods = request.app.state.methods
    segmenter = engine.predictor.task == "segment"
    if not methods:
        reason = (
            f"the model runs on {RUNTIME_NAMES.get(engine.predictor.backend, 'another runtime')} "
            "(an exported graph, no gradients); serve the PyTorch checkpoint for heat maps"
            if engine.predictor.backend != "torch"
            else "heat maps need fracturekit.explain, which this installation lacks"
        )
        raise UploadError(501, f"/explain is not available: {reason}")
    method = method or (SEGMENT_EXPLAIN_METHOD if segmenter else EXPLAIN_METHOD)
    if method not in methods:
        why = (
            "a segmentation model shows its pixel probability map; POST /segment for its mask"
            if segmenter
            else "the server's --explain-methods"
        )
        raise UploadError(422, f"method {method!r} is not one of {', '.join(methods)} ({why})")
    return method


def _check_target(engine: _Engine, target: str | None) -> None:
    predictor = engine.predictor
    if target is None:
        return
    if predictor.task == "segment" and target != predictor.positive:
        raise UploadError(
            422,
            f"target {target!r}: a segmentation model's map is of its positive class "
            f"{predictor.positive!r}",
        )
    if target not in predictor.classes:
        raise UploadError(
            422,
            f"target {target!r} is not a class of this model ({', '.join(predictor.classes)})",
        )


async def explain(
    request: Request,
    format: Literal["png", "json"] = Query("png", description="png: the overlay image"),
    method: str | None = Query(
        None,
        description=f"CAM method (see GET /model; default {EXPLAIN_METHOD}); a segmentation "
        f"model: {SEGMENT_EXPLAIN_METHOD}",
    ),
    target: str | None = Query(None, description="class to explain (default: predicted)"),
    width: bool = Query(True, description="measure the crack in the heat-map region"),
    px_per_mm: PxPerMm = None,
) -> Response:
    """Where the model looks: the class-activation heat map over the image (a segmentation
    model: its pixel probability map)."""
    engine = engine_of(request)
    method = _explain_method(request, engine, method)
    _check_target(engine, target)
    if engine.predictor.task == "segment":
        work = partial(_explain_segment_sync, width=width, px_per_mm=px_per_mm)
    else:
        work = partial(
            _explain_sync, method=method, target=target, width=width, px_per_mm=px_per_mm
        )
    out, png = await run_upload(
        request, lambda e, data, name, start: work(e, data, name, start=start)
    )
    if format == "png":
        return _png_answer(png, out["label"], {"Confidence": out["confidence"]})
    return JSONResponse(
        ExplainResponse(**out, overlay_png=base64.b64encode(png).decode("ascii")).model_dump()
    )


def _png_answer(png: bytes, label: str, values: dict[str, float]) -> Response:
    """A PNG answer with the decision in ``X-Fracturekit-Label`` and ``X-Fracturekit-<name>``
    headers (6 decimals)."""
    # Headers are latin-1: class names travel percent-encoded (UTF-8).
    headers = {"X-Fracturekit-Label": quote(label)}
    headers.update({f"X-Fracturekit-{name}": f"{value:.6f}" for name, value in values.items()})
    return Response(png, media_type="image/png", headers=headers)


def _wants_png(request: Request, format: str | None) -> bool:
    """``?format=png``, or no ``format`` and an ``Accept`` header asking for PNG (not JSON)."""
    if format is not None:
        return format == "png"
    accept = request.headers.get("accept", "").lower()
    return "image/png" in accept and "application/json" not in accept


async def segment(
    request: Request,
    format: Literal["json", "png"] | None = Query(
        None,
        description="png: the mask (0/255, the image's size); json (default). Without it, "
        "`Accept: image/png` asks for the PNG",
    ),
    px_per_mm: PxPerMm = None,
    overlay: bool = Query(False, description="JSON: also the mask over the image (PNG data URL)"),
) -> Response:
    """A segmentation model's crack mask of one image sent as multipart field ``file``."""
    engine = engine_of(request)
    if engine.predictor.task != "segment":
        raise UploadError(
            409,
            f"this model is a classifier ({', '.join(engine.predictor.classes)}), not a "
            "segmentation model; use POST /predict (and POST /explain for its heat map)",
        )
    png = _wants_png(request, format)
    result = await run_upload(
        request,
        lambda e, data, name, start: _segment_sync(e, data, name, png, px_per_mm, overlay, start),
    )
    if png:
        mask, head = result
        values = {"Score": head["score"], "Crack-Fraction": head["crack_fraction"]}
        return _png_answer(mask, head["label"], values)
    return JSONResponse(SegmentResponse(**result).model_dump())
