"""The FastAPI application: ``create_app(checkpoint_or_predictor) -> FastAPI``.

Routes (``_routes``):

* ``GET /`` — the web page (plain HTML/JS/CSS from ``static/``, no build step, no CDN).
* ``GET /health`` — liveness and the loaded model's name.
* ``GET /model`` — ``Predictor.describe()``: classes, backbone, input size, threshold, metrics.
* ``POST /predict`` — one image as multipart field ``file``: label, confidence, probabilities,
  threshold, timings (and ``?preview=true``: the image as the model read it, as a base64 PNG).
* ``POST /explain`` — the class-activation overlay as PNG, or ``?format=json`` with the
  prediction, a base64 PNG and, when a crack is found, its width summary (a segmentation model:
  its pixel probability map over the image).
* ``POST /segment`` — a segmentation model's mask: JSON (label, score, crack fraction, widths,
  outlines, ``?overlay=true`` the mask over the image) or, with ``?format=png``, the mask PNG.
  A classifier answers 409. ``/predict`` on a segmentation model answers the image-level
  decision of its mask, so classifier clients keep working.
* ``GET /openapi.json`` — the OpenAPI description; ``GET /docs`` (Swagger UI, loaded from a CDN)
  only with ``docs=True``.

The parts: ``_security`` (Host, Origin and API key checks in front of every route), ``_upload``
(the body, read in memory with limits on size, transfer rate and the bytes held at once),
``_engine`` (decoding with ``fracturekit.io.read_image_bytes`` under a pixel limit, the model
behind a lock, a bounded work queue), ``_segment`` (a segmentation model's work), ``_schemas`` (the JSON answers). Every refusal is a JSON
``{"detail": "<message>"}`` with a 4xx status (503 with Retry-After when busy). Nothing
uploaded touches the disk unless ``save_uploads`` names a folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles

from fracturekit import __version__
from fracturekit.calibration import parse_prior
from fracturekit.contracts import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_SAVE_MAX,
    ENV_ALLOWED_HOSTS,
    ENV_API_KEY,
    ENV_BACKEND,
    ENV_BATCH_SIZE,
    ENV_BATCH_WAIT_MS,
    ENV_CHECKPOINT,
    ENV_DOCS,
    ENV_EXPLAIN_METHODS,
    ENV_MAX_PIXELS,
    ENV_MAX_UPLOAD_MB,
    ENV_PRIOR,
    ENV_SAVE_MAX,
    ENV_SAVE_UPLOADS,
    EXPLAIN_METHOD,
    LOOPBACK_HOSTS,
    split_list,
)
from fracturekit.predict import Predictor
from fracturekit.serve import _engine as engine_module
from fracturekit.serve import _routes
from fracturekit.serve._batch import MAX_BATCH, MAX_WAIT_S
from fracturekit.serve._engine import (
    PREVIEW_MAX_SIDE,
    WORK_THREADS,
    WorkQueue,
    _Engine,
    _explain_available,
    _warm_up,
    explain_methods,
    load_predictors,
)
from fracturekit.serve._schemas import (
    _ERRORS,
    _UPLOAD_BODY,
    FIELD,
    ErrorResponse,
    ExplainResponse,
    HealthResponse,
    ImageSize,
    MaskPolygon,
    MaskWidth,
    ModelResponse,
    PredictionResponse,
    SegmentResponse,
    Timing,
    WidthSummary,
)
from fracturekit.serve._security import Guard
from fracturekit.serve._upload import UPLOAD_TIMEOUT_S, ReceiveBudget, UploadError

__all__ = [
    "EXPLAIN_METHOD",
    "FIELD",
    "PREVIEW_MAX_SIDE",
    "STATIC",
    "UPLOAD_TIMEOUT_S",
    "WORK_THREADS",
    "ENV_ALLOWED_HOSTS",
    "ENV_API_KEY",
    "ENV_BACKEND",
    "ENV_CHECKPOINT",
    "ENV_DOCS",
    "ENV_EXPLAIN_METHODS",
    "ENV_MAX_PIXELS",
    "ENV_MAX_UPLOAD_MB",
    "ENV_SAVE_MAX",
    "ENV_SAVE_UPLOADS",
    "ErrorResponse",
    "ExplainResponse",
    "HealthResponse",
    "ImageSize",
    "MaskPolygon",
    "MaskWidth",
    "ModelResponse",
    "PredictionResponse",
    "SegmentResponse",
    "Timing",
    "WidthSummary",
    "create_app",
    "create_app_from_env",
    "explain_methods",
]

log = logging.getLogger("fracturekit.serve")

STATIC = _routes.STATIC
RECEIVING_UPLOADS = 64  # bodies arriving at once (idle ones hold almost no memory)
RECEIVING_BODIES = 8  # ...and the bytes they hold together: this many full-size uploads


def _png_or_json(model: type, description: str, status: int, refusal: str) -> dict:
    """OpenAPI responses of a route answering JSON or a PNG, with its own refusal."""
    png = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
    return {
        200: {"model": model, "content": png, "description": description},
        **_ERRORS,
        status: {"model": ErrorResponse, "description": refusal},
    }


_EXPLAIN_RESPONSES = _png_or_json(
    ExplainResponse,
    "the overlay as PNG, or JSON with ?format=json",
    501,
    "heat maps are not available",
)
_SEGMENT_RESPONSES = _png_or_json(
    SegmentResponse,
    "JSON, or the mask (0/255 PNG, the image's size) with ?format=png",
    409,
    "the model is a classifier: use /predict",
)
# The routes that take an upload: (path, route function, response model, OpenAPI responses).
_UPLOAD_ROUTES = (
    ("/predict", _routes.predict, PredictionResponse, _ERRORS),
    ("/explain", _routes.explain, None, _EXPLAIN_RESPONSES),
    ("/segment", _routes.segment, None, _SEGMENT_RESPONSES),
)


def _save_dir(save_uploads: str | Path | None) -> Path | None:
    if save_uploads is None:
        return None
    save_dir = Path(save_uploads).expanduser()
    if save_dir.exists() and not save_dir.is_dir():
        raise NotADirectoryError(f"--save-uploads {save_dir}: not a folder")
    save_dir.mkdir(parents=True, exist_ok=True)
    return save_dir


def _lifespan(
    checkpoint_or_predictor: str | Path | Predictor,
    backend: str,
    engine: Callable[[Predictor], _Engine],
    methods: list[str] | tuple[str, ...] | None,
    prior: float | dict[str, float] | None = None,
):
    """The app's lifespan: load the model (off the event loop), warm it up, set
    ``app.state.engine`` and ``app.state.methods``; the engine is dropped at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        fast = None
        if isinstance(checkpoint_or_predictor, Predictor):
            predictor = checkpoint_or_predictor
        else:
            predictor, fast = await anyio.to_thread.run_sync(
                partial(load_predictors, checkpoint_or_predictor, backend, prior)
            )
        for one in {id(p): p for p in (predictor, fast) if p is not None}.values():
            await anyio.to_thread.run_sync(_warm_up, one)
        app.state.engine = engine(predictor, fast=fast).start()
        app.state.methods = engine_module.explain_methods(predictor, methods)
        log.info(
            "fracturekit serve: %s (%s %s, /predict on %s, /explain on %s), classes %s",
            predictor.source or "model",
            predictor.task,
            predictor.meta.get("backbone"),
            (fast or predictor).backend,
            predictor.backend,
            ", ".join(predictor.classes),
        )
        try:
            yield
        finally:
            app.state.engine.close()
            app.state.engine = None

    return lifespan


def create_app(
    checkpoint_or_predictor: str | Path | Predictor,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    save_uploads: str | Path | None = None,
    backend: str = "auto",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    api_key: str | None = None,
    allowed_hosts: list[str] | tuple[str, ...] | None = LOOPBACK_HOSTS,
    explain_methods: list[str] | tuple[str, ...] | None = None,
    docs: bool = False,
    save_max: int = DEFAULT_SAVE_MAX,
    prior: float | dict[str, float] | None = None,
    batch_size: int = MAX_BATCH,
    batch_wait_ms: float = MAX_WAIT_S * 1000,
) -> FastAPI:
    """Build the service around a checkpoint (loaded once, in the app's lifespan) or a
    ready :class:`~fracturekit.predict.Predictor`.

    Args:
        checkpoint_or_predictor: ``model.pt`` / ``model.onnx``, or a ``Predictor``.
        max_upload_mb: largest accepted upload in MiB (the body is refused with 413 as soon as
            it passes this size).
        save_uploads: a folder to keep uploads in once they decoded (unique names, atomic
            writes); by default nothing uploaded is written to disk.
        backend: when a path is given, ``"auto"`` (``/predict`` and ``/segment`` on ONNX
            Runtime, ``/explain`` on PyTorch: ``_engine.load_predictors``), ``"torch"`` or
            ``"onnx"`` (one runtime for every route).
        max_pixels: largest image in pixels (default 40 MP; None: ``fracturekit.io``'s limit);
            larger images get 413.
        api_key: when set, every route but the page and ``/health`` needs it
            (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; 401 otherwise).
        allowed_hosts: the names the ``Host`` header may carry (default: the loopback names;
            ``["*"]`` or None: any).
        explain_methods: the CAM methods ``/explain`` offers (default: all but the costly
            Score-CAM).
        docs: serve Swagger UI at ``/docs`` (it loads its scripts from a CDN).
        save_max: the most files ``save_uploads`` holds; later uploads are not kept.
        prior: decide at this prevalence (``Predictor.from_checkpoint(prior=...)``) when a path
            is given.
        batch_size: a classifier's ``/predict`` requests arriving together run as batches of
            up to this many images (1: no batching).
        batch_wait_ms: how long the first request of a batch waits for more (0-1000 ms).

    Returns:
        The FastAPI app; serve it with uvicorn. The model is available once the lifespan has
        started (``with TestClient(app)`` in tests).
    """
    if not (isinstance(max_upload_mb, int | float) and max_upload_mb > 0):
        raise ValueError(f"max_upload_mb={max_upload_mb!r}: must be a positive number")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels={max_pixels!r}: must be a positive number")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size={batch_size!r}: must be a whole number >= 1")
    if not 0 <= batch_wait_ms <= 1000:
        raise ValueError(f"batch_wait_ms={batch_wait_ms!r}: must be between 0 and 1000")
    if explain_methods is not None and _explain_available():
        explain_methods = engine_module.check_methods(explain_methods)  # unknown names: now
    save_dir = _save_dir(save_uploads)
    max_bytes = int(max_upload_mb * 2**20)

    app = FastAPI(
        title="fracturekit",
        version=__version__,
        description="Find fractures and cracks in images: classify an upload (POST /predict), "
        "see where the model looks (POST /explain), a segmentation model's crack mask "
        "(POST /segment). Send images as multipart field "
        f"'{FIELD}'; uploads up to {max_upload_mb:g} MB.",
        lifespan=_lifespan(
            checkpoint_or_predictor,
            backend,
            partial(
                _Engine,
                max_pixels=max_pixels,
                save_dir=save_dir,
                save_max=save_max,
                batch_size=batch_size,
                batch_wait_s=batch_wait_ms / 1000,
            ),
            explain_methods,
            prior,
        ),
        docs_url="/docs" if docs else None,
        redoc_url=None,
    )
    app.state.engine = None
    app.state.max_bytes = max_bytes
    app.state.max_upload_mb = max_upload_mb
    app.state.work = WorkQueue()
    app.state.receiving = ReceiveBudget(RECEIVING_BODIES * max_bytes, RECEIVING_UPLOADS)
    app.add_exception_handler(UploadError, _routes.upload_error)
    app.add_exception_handler(RequestValidationError, _routes.validation_error)
    app.add_exception_handler(Exception, _routes.internal_error)

    route = app.add_api_route
    route("/", _routes.index, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    route("/health", _routes.health, response_model=HealthResponse, responses={503: _ERRORS[503]})
    route("/model", _routes.model, response_model=ModelResponse, responses={503: _ERRORS[503]})
    for path, endpoint, response_model, responses in _UPLOAD_ROUTES:
        route(
            path,
            endpoint,
            methods=["POST"],
            response_model=response_model,
            responses=responses,
            openapi_extra=_UPLOAD_BODY,
        )
    app.add_middleware(Guard, api_key=api_key, allowed_hosts=allowed_hosts)
    return app


def create_app_from_env() -> FastAPI:
    """The app for uvicorn's ``--factory`` mode (several worker processes): the checkpoint and
    options come from the ``FRACTUREKIT_SERVE_*`` environment variables (and
    ``FRACTUREKIT_API_KEY``) set by ``fracturekit serve``.
    """
    env = os.environ
    ckpt = env.get(ENV_CHECKPOINT)
    if not ckpt:
        raise RuntimeError(f"{ENV_CHECKPOINT} is not set; start the service with fracturekit serve")
    methods = env.get(ENV_EXPLAIN_METHODS)
    hosts = env.get(ENV_ALLOWED_HOSTS)
    return create_app(
        ckpt,
        max_upload_mb=float(env.get(ENV_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MB)),
        save_uploads=env.get(ENV_SAVE_UPLOADS) or None,
        save_max=int(env.get(ENV_SAVE_MAX, DEFAULT_SAVE_MAX)),
        backend=env.get(ENV_BACKEND, "auto"),
        max_pixels=int(env.get(ENV_MAX_PIXELS, DEFAULT_MAX_PIXELS)),
        api_key=env.get(ENV_API_KEY) or None,
        allowed_hosts=LOOPBACK_HOSTS if hosts is None else split_list(hosts),
        explain_methods=None if methods is None else split_list(methods),
        docs=env.get(ENV_DOCS) == "1",
        prior=parse_prior(env[ENV_PRIOR]) if env.get(ENV_PRIOR) else None,
        batch_size=int(env.get(ENV_BATCH_SIZE, MAX_BATCH)),
        batch_wait_ms=float(env.get(ENV_BATCH_WAIT_MS, MAX_WAIT_S * 1000)),
    )
