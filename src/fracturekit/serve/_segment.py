"""The per-image work of a segmentation model: ``POST /segment`` (the mask as PNG, or JSON with
the crack fraction, widths, outlines and an overlay) and ``POST /explain`` (the pixel
probability map over the image). Run on the work queue like ``/predict``, through the same
``_Engine`` (decode under the pixel limit, the model behind its lock).

The mask is decided at the uploaded image's size (``Predictor.probability_maps`` +
``masks_from_maps``), so the label, the crack fraction and the PNG agree with ``fracturekit
predict``. Widths and outlines are measured on that mask when the image's longer side is at most
``MEASURE_MAX_SIDE``; a larger image is measured on its probability map reduced to that side
(the model saw ``img_size`` pixels: the full-size map holds no finer detail) and reported in
the uploaded image's pixels.
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from fracturekit.masks import (
    mask_png,
    mask_polygons,
    width_summary,
)
from fracturekit.predict import Predictor
from fracturekit.render import mask_overlay, overlay, resize_map
from fracturekit.serve._engine import (
    PREVIEW_MAX_SIDE,
    SEGMENT_EXPLAIN_METHOD,
    _downsized,
    _Engine,
    _ms,
    _png_bytes,
    _result,
    _width_summary,
)

if TYPE_CHECKING:
    from PIL import Image

MEASURE_MAX_SIDE = 2048  # widths and outlines of larger images: on the map reduced to this
POLYGON_LIMIT = 200  # outlines answered at most (the largest pieces)
PROBABILITY_COLORMAP = "inferno"  # as `fracturekit explain` draws a segmenter's map


def measured_mask(
    predictor: Predictor,
    prob: np.ndarray,
    mask: np.ndarray,
    max_side: int | None = None,
) -> tuple[np.ndarray, float]:
    """The mask to measure and outline, and the uploaded image's pixels per mask pixel.

    ``mask`` itself when the image's longer side is at most ``max_side`` (default
    ``MEASURE_MAX_SIDE``); else the mask decided (same threshold, ``min_area`` scaled) on the
    probability map reduced to that side.
    """
    max_side = max_side or MEASURE_MAX_SIDE
    h, w = prob.shape
    if max(w, h) <= max_side or not mask.any():  # nothing to measure: no need to reduce
        return mask, 1.0
    f = max_side / max(w, h)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = predictor.masks_from_maps([resize_map(prob, size)])[0]
    return small, w / size[0]


def _scaled_widths(summary: dict[str, Any], scale: float) -> dict[str, Any]:
    """``masks.width_summary`` of a reduced mask, in the uploaded image's pixels (its mm values
    were measured at the reduced scale already)."""
    if scale == 1.0:
        return summary

    def px(key: str, value: Any) -> Any:
        if not key.endswith("_px") or value in (None, ""):
            return value
        number = float(value) * scale
        return f"{number:.3f}" if isinstance(value, str) else round(number, 3)

    out = {k: px(k, v) for k, v in summary.items() if k != "rows"}
    out["rows"] = [{k: px(k, v) for k, v in row.items()} for row in summary["rows"]]
    return out


def segment_answer(
    predictor: Predictor,
    name: str,
    prob: np.ndarray,
    mask: np.ndarray,
    *,
    px_per_mm: float | None,
) -> dict[str, Any]:
    """The JSON fields of ``/segment`` but the overlay and timings (``SegmentResponse``)."""
    pred = predictor.segment_record(name, prob, mask, keep_mask=True)
    mask = pred.mask  # empty when a prior decides the image negative
    grid, scale = measured_mask(predictor, prob, mask)
    widths = width_summary(grid, px_per_mm=None if px_per_mm is None else px_per_mm / scale)
    widths = {**_scaled_widths(widths, scale), "px_per_mm": px_per_mm}
    # One more than answered tells whether the list was cut.
    limit = POLYGON_LIMIT
    polygons = mask_polygons(grid, scale=scale, limit=limit + 1)
    return {
        "path": name,
        "label": pred.label,
        "score": pred.probabilities[predictor.positive],
        "positive": predictor.positive,
        "crack_fraction": pred.crack_fraction,
        "threshold": predictor.threshold,
        "image_threshold": pred.threshold,
        "min_area": predictor.min_area,
        "width_px": int(mask.shape[1]),
        "height_px": int(mask.shape[0]),
        "width": widths,
        "polygons": polygons[:limit],
        "polygons_truncated": len(polygons) > limit,
    }


def _decode_and_segment(
    engine: _Engine, data: bytes, name: str
) -> tuple[Image.Image, np.ndarray, np.ndarray, dict[str, float]]:
    """The decoded upload, its probability map and mask, and the seconds each step took."""
    t0 = time.perf_counter()
    image = engine.decode(data, name)
    engine.save(data, name)
    t1 = time.perf_counter()
    prob, mask = engine.segment(image)
    return image, prob, mask, {"decode_ms": t1 - t0, "inference_ms": time.perf_counter() - t1}


def _segment_sync(
    engine: _Engine,
    data: bytes,
    name: str,
    want_png: bool,
    px_per_mm: float | None,
    with_overlay: bool,
    start: float,
) -> dict[str, Any] | tuple[bytes, dict[str, Any]]:
    """``/segment``: the mask PNG (0/255, the image's size) with the image-level answer, or the
    JSON answer."""
    image, prob, mask, timing = _decode_and_segment(engine, data, name)
    predictor = engine.fast
    if want_png:
        pred = predictor.segment_record(name, prob, mask, keep_mask=True)
        return mask_png(pred.mask), {
            "label": pred.label,
            "score": pred.probabilities[predictor.positive],
            "crack_fraction": pred.crack_fraction,
        }
    out = segment_answer(predictor, name, prob, mask, px_per_mm=px_per_mm)
    out["overlay"] = None
    if with_overlay:
        shown = _downsized(image)
        if out["label"] != predictor.positive:  # decided negative at a prior: nothing drawn
            mask = np.zeros_like(mask)
        png = _png_bytes(mask_overlay(shown, mask))
        out["overlay"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    timing["total_ms"] = time.perf_counter() - start
    out["timing_ms"] = {k: _ms(v) for k, v in timing.items()}
    return out


def _explain_segment_sync(
    engine: _Engine, data: bytes, name: str, width: bool, px_per_mm: float | None, start: float
) -> tuple[dict[str, Any], bytes]:
    """``/explain`` on a segmentation model: its pixel probability map over the image (what
    ``fracturekit explain`` draws for a segmenter) and, with ``width``, the longest crack of the
    mask, measured at most ``PREVIEW_MAX_SIDE`` px like the classifier's heat-map crack."""
    from fracturekit.width import measure_mask

    predictor = engine.fast
    image, prob, mask, timing = _decode_and_segment(engine, data, name)
    pred = predictor.segment_record(name, prob, mask, keep_mask=True)
    mask = pred.mask
    shown = _downsized(image)
    png = _png_bytes(
        overlay(shown, resize_map(prob, shown.size), alpha=0.5, colormap=PROBABILITY_COLORMAP)
    )
    summary = None
    if width and mask.any():
        grid, scale = measured_mask(predictor, prob, mask, PREVIEW_MAX_SIDE)
        per_mm = None if px_per_mm is None else px_per_mm / scale
        summary = _width_summary(measure_mask(grid, px_per_mm=per_mm), scale)
    timing["total_ms"] = time.perf_counter() - start
    out = _result(pred, predictor, image.size, timing)
    out.update(
        crack_fraction=pred.crack_fraction,
        method=SEGMENT_EXPLAIN_METHOD,
        target=predictor.positive,
        width=summary,
    )
    return out, png
