"""The JSON answers of the service (mirroring ``fracturekit.predict.Prediction``) and the
OpenAPI description of its errors and upload body."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

FIELD = "file"  # the multipart field that carries the image


class ErrorResponse(BaseModel):
    """Every refusal: a message that says what was wrong and what to send instead."""

    detail: str


class HealthResponse(BaseModel):
    status: Literal["ok"]
    version: str
    model: str | None = Field(description="the loaded model's backbone")
    backend: str


class BatchingInfo(BaseModel):
    max_batch: int = Field(description="the largest batch (--batch-size)")
    max_wait_ms: float = Field(description="how long a batch's first request waits for more")
    batches: int = Field(description="batches run so far")
    mean_batch: float = Field(description="their mean size")


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
    prior_support: dict[str, Any] | None = Field(
        None,
        description="with a binary --prior: the validation cases at or above its threshold and "
        "the precision at that prevalence they vouch for (calibration.prior_support)",
    )
    temperature: float
    tta: int = Field(1, description="flipped views whose logits are averaged per image")
    pretrained: str | None
    backend: str = Field(description="the runtime of /predict and /segment (onnx or torch)")
    explain_backend: str = Field(description="the runtime of /explain's heat maps")
    batching: BatchingInfo | None = Field(
        None, description="a classifier's /predict micro-batching (null: none)"
    )
    metrics: dict[str, float]
    max_upload_mb: float
    max_pixels: int = Field(description="largest image accepted, in pixels")
    explain_methods: list[str] = Field(
        description="CAM methods of /explain (a segmenter: 'probability'); empty when off"
    )
    task: Literal["classify", "segment"] = Field(
        "classify", description="classify: POST /predict; segment: POST /segment (a mask)"
    )
    min_area: int | None = Field(
        None,
        description="segmenters: pixels (at img_size x img_size) a predicted piece needs",
    )
    image_threshold: float | None = Field(
        None,
        description="segmenters: the image score at or above which an image is positive (the "
        "pixel threshold, or with --prior the one for that prevalence)",
    )
    members: int | None = Field(
        None,
        description="segmenters: how many trainings (seeds) the model averages (train --members)",
    )


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
    crack_fraction: float | None = Field(
        None, description="segmenters: the share of the image's pixels in the predicted mask"
    )


# The measures of the longest crack that /explain reports (``width.CrackMeasurement`` names),
# in the upload's pixels and, given a scale, in millimetres: ``WidthSummary``'s fields and what
# the engine copies into them.
WIDTH_PX_FIELDS = ("length_px", "max_width_px", "mean_width_px", "median_width_px", "p95_width_px")
WIDTH_MM_FIELDS = ("length_mm", "max_width_mm", "mean_width_mm")

WidthSummary = create_model(
    "WidthSummary",
    __doc__="The crack found in the heat-map region, measured along its skeleton.",
    n_cracks=(int, ...),
    **{name: (float, ...) for name in WIDTH_PX_FIELDS},
    px_per_mm=(float | None, None),
    **{name: (float | None, None) for name in WIDTH_MM_FIELDS},
    severity=(str | None, None),
)


class ExplainResponse(PredictionResponse):
    method: str
    target: str = Field(description="the class the heat map explains")
    overlay_png: str = Field(description="base64 PNG: the image with the heat map over it")
    width: WidthSummary | None = Field(None, description="set when a crack was measured")


class MaskWidth(BaseModel):
    """Widths and lengths of every crack of a predicted mask (``masks.width_summary``), in
    pixels of the uploaded image; millimetres with ``?px_per_mm=``."""

    cracks: int = Field(description="cracks measured (pieces of at least 10 px)")
    length_px: float = Field(description="total skeleton length of the cracks")
    mean_width_px: float | None = Field(description="mean over every point of every crack")
    max_width_px: float | None
    px_per_mm: float | None = None
    length_mm: float | None = None
    mean_width_mm: float | None = None
    max_width_mm: float | None = None
    rows: list[dict[str, Any]] = Field(description="each crack's widths.csv row")


class MaskPolygon(BaseModel):
    """One piece of the mask, outlined in pixels of the uploaded image."""

    id: int
    polygon: list[list[float]] = Field(description="[[x, y], ...] along the outer boundary")
    bbox: list[int] = Field(description="[x0, y0, x1, y1]")
    area_px: int


class SegmentResponse(BaseModel):
    """A segmentation model's answer for one image (``POST /segment``, JSON)."""

    path: str = Field(description="the uploaded file's name")
    label: str = Field(
        description="the positive class when the mask holds a piece (with --prior: and the score "
        "reaches image_threshold), else the other"
    )
    score: float = Field(
        description="max pixel probability; below the threshold when no piece of min_area"
    )
    positive: str | None
    crack_fraction: float = Field(description="the share of the image's pixels in the mask")
    threshold: float = Field(description="pixel probability at which a pixel is crack")
    image_threshold: float = Field(
        description="the score at or above which the image is positive: the pixel threshold, or "
        "with --prior the one for that prevalence"
    )
    min_area: int = Field(description="pixels (at img_size x img_size) a piece needs")
    width_px: int = Field(description="the uploaded image's width")
    height_px: int = Field(description="the uploaded image's height")
    width: MaskWidth
    polygons: list[MaskPolygon] = Field(description="the mask's pieces, largest first")
    polygons_truncated: bool = Field(description="more pieces than the polygons listed")
    overlay: str | None = Field(
        None, description="data:image/png;base64 URL: the mask over the image (?overlay=true)"
    )
    timing_ms: Timing


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed multipart body"},
    408: {"model": ErrorResponse, "description": "the upload did not arrive in time"},
    413: {"model": ErrorResponse, "description": "upload or image dimensions over the limit"},
    415: {"model": ErrorResponse, "description": "the body is not multipart/form-data"},
    422: {"model": ErrorResponse, "description": "no 'file' field, or not a readable image"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key (--api-key)"},
    403: {"model": ErrorResponse, "description": "a request from another web site (Origin)"},
    503: {
        "model": ErrorResponse,
        "description": "the model is not loaded, or the server is busy (see Retry-After)",
    },
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
