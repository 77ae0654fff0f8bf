"""Names shared across levels, declared once.

A name that more than one module (or the command line and the library) must agree on lives
here, so no module re-types it and no test is needed to keep copies equal. Importing this
module is free: it holds constants only.
"""

from __future__ import annotations

# Synthetic surfaces (``fracturekit synth --kind``, ``fracturekit demo --kind``). ``mixed``
# draws one of MIXED_KINDS per image; X-rays are a domain of their own.
SYNTH_KINDS: tuple[str, ...] = ("concrete", "asphalt", "rock", "masonry", "xray", "mixed")
MIXED_KINDS: tuple[str, ...] = ("concrete", "asphalt", "rock", "masonry")


# --------------------------------------------------------------------------------------------
# Heat maps: what `fracturekit explain`, the report gallery, localisation scores, `width
# --model` and the service's /explain use. HiResCAM (element-wise gradient x activation, faithful
# at intermediate layers: Draelos & Carin) at the "fine" layers (the last stride-16 block and
# the next one, fused); it localised best in benchmarks/localisation.py.
EXPLAIN_METHOD = "hirescam"
EXPLAIN_LAYER = "fine"
# CAM methods a server offers only when told to: Score-CAM runs one forward pass per channel.
COSTLY_CAM_METHODS: frozenset[str] = frozenset({"scorecam"})

# --------------------------------------------------------------------------------------------
# The key of the ONNX metadata entry that carries a checkpoint's whole meta as JSON (written
# by export, read by predict).
ONNX_META_KEY = "fracturekit_meta"
# Where a model runs (predict, serve and their --backend flag): auto picks per file and route.
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx", "openvino")

# --------------------------------------------------------------------------------------------
# `fracturekit serve`'s options as environment variables. uvicorn starts the app from an import
# string in every worker process, so the command line writes the options into these variables
# and ``serve.app.create_app_from_env`` reads them back (cli and serve do not import each other).
ENV_CHECKPOINT = "FRACTUREKIT_SERVE_CHECKPOINT"
ENV_BACKEND = "FRACTUREKIT_SERVE_BACKEND"
ENV_MAX_UPLOAD_MB = "FRACTUREKIT_SERVE_MAX_UPLOAD_MB"
ENV_MAX_PIXELS = "FRACTUREKIT_SERVE_MAX_PIXELS"
ENV_SAVE_UPLOADS = "FRACTUREKIT_SERVE_SAVE_UPLOADS"
ENV_SAVE_MAX = "FRACTUREKIT_SERVE_SAVE_MAX"
ENV_EXPLAIN_METHODS = "FRACTUREKIT_SERVE_EXPLAIN_METHODS"  # comma-separated
ENV_ALLOWED_HOSTS = "FRACTUREKIT_SERVE_ALLOWED_HOSTS"  # comma-separated; "*" allows any
ENV_DOCS = "FRACTUREKIT_SERVE_DOCS"  # "1": serve /docs
ENV_PRIOR = "FRACTUREKIT_SERVE_PRIOR"  # --prior as typed: "P" or "CLASS=P,..."
ENV_BATCH_SIZE = "FRACTUREKIT_SERVE_BATCH_SIZE"  # --batch-size: largest micro-batch
ENV_BATCH_WAIT_MS = "FRACTUREKIT_SERVE_BATCH_WAIT_MS"  # --batch-wait-ms
# The key is also read by `fracturekit serve` itself, so that it need not be typed on a command
# line (where every user of the machine can read it in the process list).
ENV_API_KEY = "FRACTUREKIT_API_KEY"
# Files fracturekit can rebuild (a service's ONNX export of its checkpoint).
ENV_CACHE = "FRACTUREKIT_CACHE"
# "0": ONNX Runtime's threads do not spin while waiting (its default, "1", is kept).
ENV_ORT_SPINNING = "FRACTUREKIT_ORT_SPINNING"

DEFAULT_MAX_UPLOAD_MB = 25.0
# A service decodes what strangers send: 40 MP covers a 12 MP phone photo and a large X-ray
# with room to spare, at less than half the command line's 100 MP limit.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_SAVE_MAX = 1000  # files kept by --save-uploads before it stops saving
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def split_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (the encoding of list options)."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


# --------------------------------------------------------------------------------------------
# A run folder: the files training writes and the ones evaluation and the report add beside
# them (``fracturekit train --overwrite`` removes exactly these).
MODEL_FILE = "model.pt"
LAST_FILE = "last.pt"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
RUN_FILES = (
    MODEL_FILE,
    LAST_FILE,
    "config.yaml",
    "splits.csv",
    "test.csv",
    "history.csv",
    "curves.png",
    METRICS_FILE,
    REPORT_FILE,
    "classification_report.txt",
    "predictions.csv",
    "confusion_matrix.png",
    "roc.png",
    "pr.png",
    "reliability.png",
    "mistakes.png",
)
