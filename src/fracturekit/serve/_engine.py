"""The inference engine of the service: decoding an upload, the model behind a lock, and the
per-image work of ``/predict`` and ``/explain``, run on worker threads (``WorkQueue``)
(``_segment`` holds the work of ``/segment`` and of ``/explain`` on a segmentation model).

Two predictors of one checkpoint: ``fast`` answers ``/predict`` and ``/segment`` (ONNX Runtime
by default), ``predictor`` (PyTorch) the heat maps of ``/explain``; both are the same object
when the service runs one backend. A classifier's ``/predict`` decodes and preprocesses on the
worker threads, then joins a micro-batch (``_batch.MicroBatcher``): requests arriving together
go through the model as one batch.

Decoding and inference run on a small thread pool (``WORK_THREADS``), never on the event loop,
with at most ``WORK_QUEUE`` requests waiting or running (more get 503 with Retry-After rather
than a queue without bound). The model is used by one thread at a time (PyTorch already spreads
one forward pass over every core, and CAM hooks must not see another request's forward pass).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import numpy as np

from fracturekit._files import atomic_write_bytes
from fracturekit.contracts import BACKENDS, COSTLY_CAM_METHODS
from fracturekit.io import ImageReadError, read_image_bytes
from fracturekit.masks import mask_polygons, width_summary
from fracturekit.predict import Prediction, Predictor, graph_runtime
from fracturekit.serve._batch import MAX_BATCH, MAX_WAIT_S, MicroBatcher
from fracturekit.serve._schemas import WIDTH_MM_FIELDS, WIDTH_PX_FIELDS
from fracturekit.serve._upload import UploadError, busy

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("fracturekit.serve")

PREVIEW_MAX_SIDE = 512  # previews and overlays: enough for the page, small to send
WORK_THREADS = 2  # decode + inference threads; each holds at most one decoded image
WORK_QUEUE = 8  # requests decoding, running or waiting for a thread; more get 503
DECODES_AT_ONCE = 1  # images being decoded at once (see _Engine.decode_gate)
# Score-CAM runs one forward pass per channel of the explained layer (hundreds): offered only
# when the server lists it (fracturekit serve --explain-methods).
COSTLY_METHODS = COSTLY_CAM_METHODS
# What /explain shows for a segmentation model: its pixel probability map (no CAM).
SEGMENT_EXPLAIN_METHOD = "probability"
T = TypeVar("T")


class WorkQueue:
    """At most ``depth`` jobs waiting for or running on ``threads`` worker threads; past that,
    ``run`` refuses at once with 503 (the event loop is the only caller: no lock needed)."""

    def __init__(self, threads: int = WORK_THREADS, depth: int = WORK_QUEUE) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.depth = depth
        self.pending = 0

    def check(self) -> None:
        """503 when the queue is full (before receiving a body that could not be run)."""
        if self.pending >= self.depth:
            raise busy(f"the server is busy ({self.pending} images in its queue); retry shortly")

    async def run(self, fn: Callable[[], T]) -> T:
        self.check()
        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self.limiter)
        finally:
            self.pending -= 1


class _Engine:
    """The predictor, a lock around its model, and the per-image work of the routes."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_pixels: int | None,
        save_dir: Path | None,
        save_max: int = 0,
        fast: Predictor | None = None,
        batch_size: int = MAX_BATCH,
        batch_wait_s: float = MAX_WAIT_S,
    ):
        self.predictor = predictor
        self.fast = fast if fast is not None else predictor
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.batcher: MicroBatcher | None = None  # classifiers, once start() ran
        self.max_pixels = max_pixels
        self.save_dir = save_dir
        # Files the folder may still take: it holds at most save_max, counting earlier runs'.
        self.save_left = 0
        if save_dir is not None:
            self.save_left = max(0, save_max - sum(1 for _ in save_dir.iterdir()))
        self.save_lock = threading.Lock()
        self.lock = threading.Lock()
        # Decoding is where a request's memory peaks (a full-size image and its converted
        # copies: hundreds of MB for a 16-bit 36 MP TIFF), inference runs at the model's size:
        # one decode at a time bounds the peak while the other thread keeps inferring.
        self.decode_gate = threading.Semaphore(DECODES_AT_ONCE)

    def start(self) -> _Engine:
        """Start the micro-batcher of a classifier's ``/predict``."""
        if self.fast.task != "segment" and self.batcher is None:
            self.batcher = MicroBatcher(
                self._classify_batch, max_batch=self.batch_size, max_wait_s=self.batch_wait_s
            ).start()
        return self

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None

    def _classify_batch(self, inputs: list[Any]) -> list[np.ndarray]:
        """Class probabilities of preprocessed images, one forward pass (the batcher's work).
        A PyTorch model shares the lock with ``/explain``'s heat maps."""
        batch = self.fast.stack(inputs)
        if self.fast is self.predictor:
            with self.lock:
                proba = self.fast.predict_proba(batch)
        else:
            proba = self.fast.predict_proba(batch)
        return list(proba)

    def save(self, data: bytes, name: str) -> None:
        """Keep a decoded upload in ``save_dir`` (called only once it decoded: empty, junk or
        truncated bodies are never written), until the folder holds ``save_max`` files."""
        if self.save_dir is None:
            return
        with self.save_lock:
            if self.save_left <= 0:
                return
            self.save_left -= 1
            if self.save_left == 0:
                log.warning("--save-uploads %s is full; no more uploads are kept", self.save_dir)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[-80:] or "upload"
        atomic_write_bytes(self.save_dir / f"{stamp}-{uuid.uuid4().hex[:12]}-{safe}", data)

    def decode(self, data: bytes, name: str) -> Image.Image:
        """The upload as an 8-bit RGB image, or an ``UploadError`` saying what is wrong."""
        if not data:
            raise UploadError(422, f"{name}: the file is empty (0 bytes)")
        try:
            with self.decode_gate:
                return read_image_bytes(
                    data, name=name, channels=3, strict=True, max_pixels=self.max_pixels
                )
        except ImageReadError as exc:
            # Over the pixel limit or the decoded-size budget: 413, as for the body.
            status = 413 if exc.kind == "too_large" else 422
            raise UploadError(status, str(exc)) from None
        except Exception as exc:  # a decoder bug must still be the client's 422, not a 500
            log.warning("decoding %s failed unexpectedly", name, exc_info=True)
            raise UploadError(
                422, f"{name}: not a readable image ({type(exc).__name__}: {exc})"
            ) from None

    def segment(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """A segmentation model's pixel probabilities and mask, both at the image's size."""
        with self.lock:
            prob = self.fast.probability_maps([image])[0]
        return prob, self.fast.masks_from_maps([prob])[0]

    def prepare(self, data: bytes, name: str, preview: bool, start: float) -> Prepared:
        """Decode, keep (``--save-uploads``) and preprocess one upload for a classifier's
        batch: only the model-sized input waits for the batch, not the decoded image."""
        t0 = time.perf_counter()
        image = self.decode(data, name)
        self.save(data, name)
        x = self.fast.preprocess(image)
        shown = _png_b64(image) if preview else None
        return Prepared(name, x, image.size, shown, start, time.perf_counter() - t0)

    async def classify(self, prepared: Prepared) -> dict[str, Any]:
        """``/predict``'s answer for a prepared upload, after its micro-batch ran."""
        assert self.batcher is not None, "start() the engine first"
        t1 = time.perf_counter()
        row = await self.batcher.submit(prepared.x)
        pred = self.fast._records([prepared.name], np.asarray(row)[None])[0]
        t2 = time.perf_counter()
        timing = {
            "decode_ms": prepared.decode_s,
            "inference_ms": t2 - t1,
            "total_ms": t2 - prepared.start,
        }
        out = _result(pred, self.fast, prepared.size, timing)
        out["crack_fraction"] = None
        if prepared.preview_png is not None:
            out["preview_png"] = prepared.preview_png
        return out


@dataclass
class Prepared:
    """An upload decoded and preprocessed, waiting for its batch."""

    name: str
    x: Any
    size: tuple[int, int]
    preview_png: str | None
    start: float
    decode_s: float


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
    pred: Prediction, predictor: Predictor, size: tuple[int, int], timing: dict[str, float]
) -> dict[str, Any]:
    return {
        "path": pred.path,
        "label": pred.label,
        "confidence": pred.confidence,
        "probabilities": pred.probabilities,
        "threshold": pred.threshold,
        "error": pred.error,
        "positive": predictor.positive,
        "image": {"width": size[0], "height": size[1]},
        "timing_ms": {k: _ms(v) for k, v in timing.items()},
    }


def _predict_sync(
    engine: _Engine, data: bytes, name: str, preview: bool, start: float
) -> dict[str, Any]:
    """``/predict`` on a segmentation model: the image-level decision of its mask."""
    t0 = time.perf_counter()
    image = engine.decode(data, name)
    engine.save(data, name)
    t1 = time.perf_counter()
    pred = engine.fast.segment_record(name, *engine.segment(image))
    t2 = time.perf_counter()
    timing = {"decode_ms": t1 - t0, "inference_ms": t2 - t1, "total_ms": t2 - start}
    out = _result(pred, engine.fast, image.size, timing)
    out["crack_fraction"] = pred.crack_fraction
    if preview:
        out["preview_png"] = _png_b64(image)
    return out


# --------------------------------------------------------------------------------------------
# Explain: the CAM overlay and, when a crack is found, its width


def explain_methods(
    predictor: Predictor | None, allowed: list[str] | tuple[str, ...] | None = None
) -> list[str]:
    """The CAM methods ``/explain`` offers: ``allowed`` (default: every method but the costly
    ones, ``COSTLY_METHODS``); empty when ``fracturekit.explain`` is absent or the model runs on
    ONNX Runtime (CAMs need PyTorch's gradients). A segmentation model offers its probability
    map only (``SEGMENT_EXPLAIN_METHOD``)."""
    if predictor is not None and predictor.task == "segment":
        return [SEGMENT_EXPLAIN_METHOD]
    if predictor is None or predictor.backend != "torch" or not _explain_available():
        return []
    return check_methods(allowed)


def check_methods(allowed: list[str] | tuple[str, ...] | None) -> list[str]:
    """``allowed`` as sorted CAM method names (default: the cheap ones), or a ValueError
    naming the unknown ones and the choices."""
    from fracturekit.explain import CAM_METHODS

    if allowed is None:
        return sorted(set(CAM_METHODS) - COSTLY_METHODS)
    names = {str(m).lower() for m in allowed}
    unknown = sorted(names - set(CAM_METHODS))
    if unknown:
        raise ValueError(
            f"--explain-methods: unknown CAM method(s) {', '.join(unknown)}; choose from "
            f"{', '.join(CAM_METHODS)}"
        )
    return sorted(names)


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
        **{name: num(getattr(main, name), scale) for name in WIDTH_PX_FIELDS},
        "px_per_mm": None if main.px_per_mm is None else round(main.px_per_mm * scale, 6),
        **{name: num(getattr(main, name)) for name in WIDTH_MM_FIELDS},
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
        crack_mask_from_image,
        overlay,
        resolve_target,
    )
    from fracturekit.width import measure_mask

    predictor = engine.predictor
    t0 = time.perf_counter()
    image = engine.decode(data, name)
    engine.save(data, name)
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
        pos = predictor.positive_index
        derived = None
        if width:
            derived = crack_mask_from_image(predictor, shown, prediction=pred, method=method)
        if derived is not None and pos is not None and target_name == classes[pos]:
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
    out = _result(pred, predictor, image.size, timing)
    out.update(method=method, target=target_name, width=summary)
    return out, png


def load_predictors(
    path: str | Path, backend: str = "auto", prior: float | dict[str, float] | None = None
) -> tuple[Predictor, Predictor | None]:
    """The service's predictors of one checkpoint: (the heat-map one, the fast one or None).

    ``auto`` (the default of ``fracturekit serve``): PyTorch for ``/explain``, and OpenVINO or
    ONNX Runtime (``predict.graph_runtime``) for ``/predict`` and ``/segment`` on the checkpoint's
    ONNX twin (``export.serving_onnx``:
    the exported file beside it, or one exported once into the cache with the parity check).
    When that cannot be had (onnxruntime missing, the export or its check failing) the log says
    why and PyTorch answers everything. ``torch`` / ``onnx`` / ``openvino``: one runtime for
    every route (``onnx``/``openvino`` with a ``model.pt``: its ONNX twin, which must be had;
    an ``.onnx`` path runs on ``graph_runtime()`` with ``auto``; no heat maps).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    path = Path(path)
    if path.suffix.lower() == ".onnx" or backend == "torch":
        one = graph_runtime() if backend == "auto" else backend
        return Predictor.from_checkpoint(path, one, prior=prior), None
    from fracturekit.export import serving_onnx

    if backend != "auto":
        twin = serving_onnx(path)
        return Predictor.from_checkpoint(twin.path, backend, prior=prior), None
    predictor = Predictor.from_checkpoint(path, "torch", prior=prior)
    try:
        twin = serving_onnx(path)
        fast = Predictor.from_checkpoint(twin.path, graph_runtime(), prior=prior)
    except Exception as exc:  # any failure leaves the service on PyTorch, with the reason
        log.warning("%s: answering /predict on PyTorch (no ONNX model: %s)", path, exc)
        return predictor, None
    log.info("%s: /predict on %s (%s, %s)", path, fast.backend, twin.path, twin.origin)
    return predictor, fast


def _warm_up(predictor: Predictor) -> None:
    """One prediction on a blank image at start-up, so the first request does not pay for the
    lazy imports and first-run kernel set-up (seconds on a small CPU)."""
    from PIL import Image as PILImage

    size = predictor.img_size
    blank = PILImage.new("RGB", (size, size))
    if predictor.task == "segment":
        predictor.masks_from_maps(predictor.probability_maps([blank]))
        # /segment's outlines and widths import scipy and scikit-image on first use.
        line = np.zeros((16, 16), bool)
        line[8, 2:14] = True
        mask_polygons(line)
        width_summary(line)
    else:
        predictor.predict_images([blank], ["warm-up"])
