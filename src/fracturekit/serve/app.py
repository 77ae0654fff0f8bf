"""The FastAPI application: ``create_app(checkpoint_or_predictor) -> FastAPI``.

Routes:

* ``GET /`` — the web page (plain HTML/JS/CSS from ``static/``, no build step, no CDN).
* ``GET /health`` — liveness and the loaded model's name.
* ``GET /model`` — ``Predictor.describe()``: classes, backbone, input size, threshold, metrics.
* ``POST /predict`` — one image as multipart field ``file``: label, confidence, probabilities,
  threshold, timings (and ``?preview=true``: the image as the model read it, as a base64 PNG).
* ``POST /explain`` — the class-activation overlay as PNG, or ``?format=json`` with the
  prediction, a base64 PNG and, when a crack is found, its width summary.
* ``GET /docs``, ``GET /openapi.json`` — the OpenAPI description.

Robustness: the body is read in memory with a byte count (``_upload``), so an upload over the
limit is refused with 413 as soon as the limit is passed; images are decoded by
``fracturekit.io.read_image_bytes`` (pixel limit against decompression bombs, truncated files
refused); every refusal is a JSON ``{"detail": "<message>"}`` with a 4xx status. Decoding and
inference run on a small thread pool (``WORK_THREADS``), never on the event loop; the model is
used by one thread at a time (PyTorch already spreads one forward pass over every core, and CAM
hooks must not see another request's forward pass). Nothing uploaded touches the disk unless
``save_uploads`` names a folder.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from fracturekit import __version__
from fracturekit._files import atomic_write_bytes
from fracturekit.calibration import parse_prior
from fracturekit.io import ImageReadError, read_image_bytes
from fracturekit.predict import Prediction, Predictor
from fracturekit.serve._upload import UploadError, read_file_part

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("fracturekit.serve")

FIELD = "file"
STATIC = Path(__file__).resolve().parent / "static"
PREVIEW_MAX_SIDE = 512  # previews and overlays: enough for the page, small to send
MAX_IN_FLIGHT = 8  # uploads being received at once; more wait in the socket buffers
WORK_THREADS = 2  # decode + inference threads; each holds at most one decoded image
UPLOAD_TIMEOUT_S = 120.0  # longest time to receive one upload's body
ENV_CHECKPOINT = "FRACTUREKIT_SERVE_CHECKPOINT"
ENV_BACKEND = "FRACTUREKIT_SERVE_BACKEND"
ENV_MAX_UPLOAD_MB = "FRACTUREKIT_SERVE_MAX_UPLOAD_MB"
ENV_SAVE_UPLOADS = "FRACTUREKIT_SERVE_SAVE_UPLOADS"
ENV_PRIOR = "FRACTUREKIT_SERVE_PRIOR"


# --------------------------------------------------------------------------------------------
# Response schemas (mirroring fracturekit.predict.Prediction)


class ErrorResponse(BaseModel):
    """Every refusal: a message that says what was wrong and what to send instead."""

    detail: str


class HealthResponse(BaseModel):
    status: Literal["ok"]
    version: str
    model: str | None = Field(description="the loaded model's backbone")
    backend: str


class ModelResponse(BaseModel):
    """``Predictor.describe()`` plus what this service accepts."""

    backbone: str | None
    classes: list[str]
    positive: str | None
    img_size: int
    in_chans: int
    mean: list[float]
    std: list[float]
    threshold: float | None
    prior: float | dict[str, float] | None = Field(
        None, description="prevalence decided for (--prior): positive share, or per class"
    )
    temperature: float
    tta: int = Field(1, description="flipped views whose logits are averaged per image")
    pretrained: str | None
    backend: str
    metrics: dict[str, float]
    max_upload_mb: float
    explain_methods: list[str] = Field(description="CAM methods of /explain; empty when off")


class ImageSize(BaseModel):
    width: int
    height: int


class Timing(BaseModel):
    """Milliseconds spent in the server on this request."""

    decode_ms: float
    inference_ms: float
    total_ms: float


class PredictionResponse(BaseModel):
    """One image's result: the fields of ``fracturekit.predict.Prediction`` plus context."""

    path: str = Field(description="the uploaded file's name")
    label: str
    confidence: float = Field(description="probability of the predicted label")
    probabilities: dict[str, float] = Field(description="calibrated probability per class")
    threshold: float | None = Field(description="decision threshold on the positive class")
    error: str | None = None
    positive: str | None = Field(None, description="the positive class of a binary model")
    image: ImageSize
    timing_ms: Timing
    preview_png: str | None = Field(
        None, description="base64 PNG of the image as decoded (with ?preview=true)"
    )


class WidthSummary(BaseModel):
    """The crack found in the heat-map region, measured along its skeleton."""

    n_cracks: int
    length_px: float
    max_width_px: float
    mean_width_px: float
    median_width_px: float
    p95_width_px: float
    px_per_mm: float | None = None
    length_mm: float | None = None
    max_width_mm: float | None = None
    mean_width_mm: float | None = None
    severity: str | None = None


class ExplainResponse(PredictionResponse):
    method: str
    target: str = Field(description="the class the heat map explains")
    overlay_png: str = Field(description="base64 PNG: the image with the heat map over it")
    width: WidthSummary | None = Field(None, description="set when a crack was measured")


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed multipart body"},
    408: {"model": ErrorResponse, "description": "the upload did not arrive in time"},
    413: {"model": ErrorResponse, "description": "upload or image dimensions over the limit"},
    415: {"model": ErrorResponse, "description": "the body is not multipart/form-data"},
    422: {"model": ErrorResponse, "description": "no 'file' field, or not a readable image"},
    503: {"model": ErrorResponse, "description": "the model is not loaded"},
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "the image: PNG, JPEG, TIFF, BMP or DICOM",
                        }
                    },
                }
            }
        },
    }
}


# --------------------------------------------------------------------------------------------
# The model, shared by the request threads


class _Engine:
    """The predictor, a lock around its model, and the per-image work of the routes."""

    def __init__(self, predictor: Predictor, *, max_pixels: int | None, save_dir: Path | None):
        self.predictor = predictor
        self.max_pixels = max_pixels
        self.save_dir = save_dir
        self.lock = threading.Lock()

    def save(self, data: bytes, name: str) -> None:
        if self.save_dir is None:
            return
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[-80:] or "upload"
        atomic_write_bytes(self.save_dir / f"{stamp}-{uuid.uuid4().hex[:12]}-{safe}", data)

    def decode(self, data: bytes, name: str) -> Image.Image:
        """The upload as an 8-bit RGB image, or an ``UploadError`` saying what is wrong."""
        if not data:
            raise UploadError(422, f"{name}: the file is empty (0 bytes)")
        try:
            return read_image_bytes(
                data, name=name, channels=3, strict=True, max_pixels=self.max_pixels
            )
        except ImageReadError as exc:
            # io's pixel-limit refusal reports the size in megapixels: 413, as for the body.
            status = 413 if "megapixels" in exc.reason else 422
            raise UploadError(status, str(exc)) from None
        except Exception as exc:  # a decoder bug must still be the client's 422, not a 500
            log.warning("decoding %s failed unexpectedly", name, exc_info=True)
            raise UploadError(
                422, f"{name}: not a readable image ({type(exc).__name__}: {exc})"
            ) from None

    def classify(self, image: Image.Image, name: str) -> Prediction:
        with self.lock:
            return self.predictor.predict_images([image], [name])[0]


def _display_name(filename: str | None) -> str:
    """The upload's base name (no folders, no control characters), for messages and logs."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:200].strip()
    return name or "upload"


def _png_b64(image: Image.Image, max_side: int = PREVIEW_MAX_SIDE) -> str:
    return base64.b64encode(_png_bytes(image, max_side)).decode("ascii")


def _downsized(image: Image.Image, max_side: int = PREVIEW_MAX_SIDE) -> Image.Image:
    """``image`` itself when small, else a copy whose longer side is ``max_side`` (resized
    directly: a full-size copy of a 100-megapixel upload first would cost 300 MB)."""
    from PIL import Image as PILImage

    w, h = image.size
    if max(w, h) <= max_side:
        return image
    f = max_side / max(w, h)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return image.resize(size, PILImage.Resampling.LANCZOS, reducing_gap=3.0)


def _png_bytes(image: Image.Image, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    buf = io.BytesIO()
    _downsized(image, max_side).save(buf, format="PNG")
    return buf.getvalue()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def _result(
    pred: Prediction, predictor: Predictor, image: Image.Image, timing: dict[str, float]
) -> dict[str, Any]:
    return {
        "path": pred.path,
        "label": pred.label,
        "confidence": pred.confidence,
        "probabilities": pred.probabilities,
        "threshold": pred.threshold,
        "error": pred.error,
        "positive": predictor.positive,
        "image": {"width": image.width, "height": image.height},
        "timing_ms": {k: _ms(v) for k, v in timing.items()},
    }


def _predict_sync(
    engine: _Engine, data: bytes, name: str, preview: bool, start: float
) -> dict[str, Any]:
    engine.save(data, name)
    t0 = time.perf_counter()
    image = engine.decode(data, name)
    t1 = time.perf_counter()
    pred = engine.classify(image, name)
    t2 = time.perf_counter()
    timing = {"decode_ms": t1 - t0, "inference_ms": t2 - t1, "total_ms": t2 - start}
    out = _result(pred, engine.predictor, image, timing)
    if preview:
        out["preview_png"] = _png_b64(image)
    return out


# --------------------------------------------------------------------------------------------
# Explain: the CAM overlay and, when a crack is found, its width


# /explain's default method: fracturekit.explain.EXPLAIN_METHOD (the service imports explain
# only when a heat map is asked for; a test keeps the two equal). Heat maps use its
# EXPLAIN_LAYER, as `fracturekit explain` does.
EXPLAIN_METHOD = "hirescam"


def explain_methods(predictor: Predictor | None) -> list[str]:
    """The CAM methods ``/explain`` offers: empty when ``fracturekit.explain`` is absent or the
    model runs on ONNX Runtime (CAMs need PyTorch's gradients)."""
    if predictor is None or predictor.backend != "torch" or not _explain_available():
        return []
    from fracturekit.explain import CAM_METHODS

    return sorted(CAM_METHODS)


def _explain_available() -> bool:
    return importlib.util.find_spec("fracturekit.explain") is not None


def _width_summary(cracks: list[Any], scale: float) -> dict[str, Any] | None:
    """The longest measured crack, in pixels of the uploaded image (``scale`` = uploaded width
    / measured width), with the count of cracks found."""
    if not cracks:
        return None
    main = max(cracks, key=lambda c: c.length_px)

    def num(v: float | None, factor: float = 1.0) -> float | None:
        return None if v is None or not math.isfinite(v) else round(float(v) * factor, 3)

    return {
        "n_cracks": len(cracks),
        "length_px": num(main.length_px, scale),
        "max_width_px": num(main.max_width_px, scale),
        "mean_width_px": num(main.mean_width_px, scale),
        "median_width_px": num(main.median_width_px, scale),
        "p95_width_px": num(main.p95_width_px, scale),
        "px_per_mm": None if main.px_per_mm is None else round(main.px_per_mm * scale, 6),
        "length_mm": num(main.length_mm),
        "max_width_mm": num(main.max_width_mm),
        "mean_width_mm": num(main.mean_width_mm),
        "severity": main.severity,
    }


def _explain_sync(
    engine: _Engine,
    data: bytes,
    name: str,
    method: str,
    target: str | None,
    width: bool,
    px_per_mm: float | None,
    start: float,
) -> tuple[dict[str, Any], bytes]:
    """Prediction, heat-map overlay and (binary models predicting the positive class, or any
    multi-class model) the width of the crack derived inside the heat-map region.

    Heat maps and widths are computed on the image downsized to at most ``PREVIEW_MAX_SIDE``
    px (the page shows no more; full-size derivation of a large photo would take seconds and
    gigabytes); widths and lengths are reported in pixels of the uploaded image, so they are
    reliable from about 2 px of the downsized image up.
    """
    from fracturekit.explain import (
        EXPLAIN_LAYER,
        compute_cams,
        derive_crack_mask,
        overlay,
        resolve_target,
    )
    from fracturekit.width import measure_mask

    engine.save(data, name)
    predictor = engine.predictor
    t0 = time.perf_counter()
    image = engine.decode(data, name)
    shown = _downsized(image)
    scale = image.width / shown.width
    t1 = time.perf_counter()
    classes = predictor.classes
    with engine.lock:
        pred = predictor.predict_images([image], [name])[0]
        # Default target (explain's rule): a binary model's positive class, else the prediction.
        index = resolve_target(
            target, classes=classes, positive=predictor.positive, n_out=len(classes)
        )
        target_name = pred.label if index is None else classes[index]
        binary = len(classes) == 2
        measure = width and (not binary or pred.label == classes[_positive(predictor)])
        derived = None
        if measure:
            derived = derive_crack_mask(predictor, shown, method=method)
        if derived is not None and binary and target_name == classes[_positive(predictor)]:
            cam = derived.cam  # the same heat map (positive class, same method): reuse it
        else:
            cam = compute_cams(
                predictor.model,
                predictor.preprocess(image)[None],
                method=method,
                layer=EXPLAIN_LAYER,
                target=classes.index(target_name),
            )[0]
    t2 = time.perf_counter()
    png = _png_bytes(overlay(shown, cam))
    summary = None
    if derived is not None and derived.mask.any():
        cracks = measure_mask(
            derived.mask, px_per_mm=None if px_per_mm is None else px_per_mm / scale
        )
        summary = _width_summary(cracks, scale)
    timing = {
        "decode_ms": t1 - t0,
        "inference_ms": t2 - t1,
        "total_ms": time.perf_counter() - start,
    }
    out = _result(pred, predictor, image, timing)
    out.update(method=method, target=target_name, width=summary)
    return out, png


def _positive(predictor: Predictor) -> int:
    """Index of a binary model's positive class (index 1 when none is named)."""
    classes = predictor.classes
    return classes.index(predictor.positive) if predictor.positive in classes else 1


def _warm_up(predictor: Predictor) -> None:
    """One prediction on a blank image at start-up, so the first request does not pay for the
    lazy imports and first-run kernel set-up (seconds on a small CPU)."""
    from PIL import Image as PILImage

    size = predictor.img_size
    predictor.predict_images([PILImage.new("RGB", (size, size))], ["warm-up"])


# --------------------------------------------------------------------------------------------
# The application


def create_app(
    checkpoint_or_predictor: str | Path | Predictor,
    *,
    max_upload_mb: float = 25,
    save_uploads: str | Path | None = None,
    backend: str = "torch",
    max_pixels: int | None = None,
    prior: float | dict[str, float] | None = None,
) -> FastAPI:
    """Build the service around a checkpoint (loaded once, in the app's lifespan) or a
    ready :class:`~fracturekit.predict.Predictor`.

    Args:
        checkpoint_or_predictor: ``model.pt`` / ``model.onnx``, or a ``Predictor``.
        max_upload_mb: largest accepted upload in MiB (the body is refused with 413 as soon as
            it passes this size).
        save_uploads: a folder to keep every upload in (unique names, atomic writes); by
            default nothing uploaded is written to disk.
        backend: ``"torch"`` or ``"onnx"`` when a path is given.
        max_pixels: largest image in pixels (default: ``fracturekit.io``'s limit, 100 MP or
            ``$FRACTUREKIT_MAX_PIXELS``); larger images get 413.
        prior: decide at this prevalence (``Predictor.from_checkpoint(prior=...)``) when a path
            is given.

    Returns:
        The FastAPI app; serve it with uvicorn. The model is available once the lifespan has
        started (``with TestClient(app)`` in tests).
    """
    if not (isinstance(max_upload_mb, int | float) and max_upload_mb > 0):
        raise ValueError(f"max_upload_mb={max_upload_mb!r}: must be a positive number")
    save_dir = None
    if save_uploads is not None:
        save_dir = Path(save_uploads).expanduser()
        if save_dir.exists() and not save_dir.is_dir():
            raise NotADirectoryError(f"--save-uploads {save_dir}: not a folder")
        save_dir.mkdir(parents=True, exist_ok=True)
    max_bytes = int(max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(checkpoint_or_predictor, Predictor):
            predictor = checkpoint_or_predictor
        else:
            predictor = await anyio.to_thread.run_sync(
                partial(Predictor.from_checkpoint, checkpoint_or_predictor, backend, prior=prior)
            )
        await anyio.to_thread.run_sync(_warm_up, predictor)
        app.state.engine = _Engine(predictor, max_pixels=max_pixels, save_dir=save_dir)
        app.state.limiter = anyio.CapacityLimiter(WORK_THREADS)
        app.state.in_flight = anyio.Semaphore(MAX_IN_FLIGHT)
        app.state.methods = explain_methods(predictor)
        log.info(
            "fracturekit serve: %s (%s, %s backend), classes %s",
            predictor.source or "model",
            predictor.meta.get("backbone"),
            predictor.backend,
            ", ".join(predictor.classes),
        )
        try:
            yield
        finally:
            app.state.engine = None

    app = FastAPI(
        title="fracturekit",
        version=__version__,
        description="Find fractures and cracks in images: classify an upload (POST /predict), "
        "see where the model looks (POST /explain). Send images as multipart field "
        f"'{FIELD}'; uploads up to {max_upload_mb:g} MB.",
        lifespan=lifespan,
    )
    app.state.engine = None
    app.state.max_bytes = max_bytes
    app.state.max_upload_mb = max_upload_mb

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); see the server log"},
            status_code=500,
        )

    def engine_of(request: Request) -> _Engine:
        engine = request.app.state.engine
        if engine is None:
            raise UploadError(503, "the model is not loaded yet; retry in a moment")
        return engine

    async def run_upload(
        request: Request, work: Callable[[_Engine, bytes, str, float], Any]
    ) -> Any:
        """Receive the upload (bounded in number and size), then run ``work`` on a thread."""
        start = time.perf_counter()
        engine = engine_of(request)
        async with request.app.state.in_flight:
            # A client trickling its body must not hold one of the few upload slots forever.
            try:
                with anyio.fail_after(UPLOAD_TIMEOUT_S):
                    part = await read_file_part(request, FIELD, request.app.state.max_bytes)
            except TimeoutError:
                raise UploadError(
                    408, f"the upload took longer than {UPLOAD_TIMEOUT_S:g} s to arrive"
                ) from None
            data, name = bytes(part.data), _display_name(part.filename)
            del part
            return await anyio.to_thread.run_sync(
                partial(work, engine, data, name, start), limiter=request.app.state.limiter
            )

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            headers={
                # The page is self-contained: no script, style or image from anywhere else.
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", response_model=HealthResponse, responses={503: _ERRORS[503]})
    async def health(request: Request) -> dict[str, Any]:
        """Liveness: 200 once the model is loaded."""
        engine = engine_of(request)
        return {
            "status": "ok",
            "version": __version__,
            "model": engine.predictor.meta.get("backbone"),
            "backend": engine.predictor.backend,
        }

    @app.get("/model", response_model=ModelResponse, responses={503: _ERRORS[503]})
    async def model(request: Request) -> dict[str, Any]:
        """The loaded model: classes, backbone, input size, threshold, metrics summary."""
        engine = engine_of(request)
        return {
            **engine.predictor.describe(),
            "max_upload_mb": request.app.state.max_upload_mb,
            "explain_methods": request.app.state.methods,
        }

    @app.post(
        "/predict",
        response_model=PredictionResponse,
        responses=_ERRORS,
        openapi_extra=_UPLOAD_BODY,
    )
    async def predict(
        request: Request,
        preview: bool = Query(False, description="also return the decoded image as base64 PNG"),
    ) -> dict[str, Any]:
        """Classify one image sent as multipart field ``file``."""
        return await run_upload(
            request, lambda e, data, name, start: _predict_sync(e, data, name, preview, start)
        )

    @app.post(
        "/explain",
        response_model=None,
        responses={
            200: {
                "model": ExplainResponse,
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                "description": "the overlay as PNG, or JSON with ?format=json",
            },
            **_ERRORS,
            501: {"model": ErrorResponse, "description": "heat maps are not available"},
        },
        openapi_extra=_UPLOAD_BODY,
    )
    async def explain(
        request: Request,
        format: Literal["png", "json"] = Query("png", description="png: the overlay image"),
        method: str = Query(EXPLAIN_METHOD, description="CAM method (see GET /model)"),
        target: str | None = Query(None, description="class to explain (default: predicted)"),
        width: bool = Query(True, description="measure the crack in the heat-map region"),
        px_per_mm: float | None = Query(None, gt=0, description="scale, for widths in mm"),
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
            raise UploadError(422, f"method {method!r} is not one of {', '.join(methods)}")
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

    return app


def create_app_from_env() -> FastAPI:
    """The app for uvicorn's ``--factory`` mode (several worker processes): the checkpoint and
    options come from ``FRACTUREKIT_SERVE_*`` environment variables set by ``fracturekit serve``.
    """
    ckpt = os.environ.get(ENV_CHECKPOINT)
    if not ckpt:
        raise RuntimeError(f"{ENV_CHECKPOINT} is not set; start the service with fracturekit serve")
    return create_app(
        ckpt,
        max_upload_mb=float(os.environ.get(ENV_MAX_UPLOAD_MB, "25")),
        save_uploads=os.environ.get(ENV_SAVE_UPLOADS) or None,
        backend=os.environ.get(ENV_BACKEND, "torch"),
        prior=parse_prior(os.environ[ENV_PRIOR]) if os.environ.get(ENV_PRIOR) else None,
    )
