"""Serve a model as a REST API with a web page (FastAPI under uvicorn).

Open http://HOST:PORT/ for the page (drag an image in: PNG, JPEG, TIFF or DICOM) and
http://HOST:PORT/docs for the API: GET /health, GET /model, POST /predict and POST /explain
(multipart field `file`). The model is loaded once per worker process when it starts. Uploads
stay in memory and are never written to disk unless --save-uploads DIR is given.

The default host 127.0.0.1 accepts connections from this machine only; use --host 0.0.0.0 to
listen on every network interface (put the service behind a proxy with TLS for that).

Example:
  fracturekit serve runs/demo/model.pt --port 8000
  curl -F file=@photo.jpg http://127.0.0.1:8000/predict
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fracturekit.cli.predict import add_prior_argument, parse_prior_argument


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="model.pt (or model.onnx)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes, each with its own copy of the model (default 1)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=25.0,
        metavar="MB",
        help="largest accepted upload; bigger bodies get HTTP 413 (default 25)",
    )
    parser.add_argument(
        "--save-uploads",
        metavar="DIR",
        help="keep a copy of every upload in DIR (unique names); by default nothing is written",
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="torch (default) or onnx (the .onnx file from `fracturekit export`; no heat maps)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn log level (default info; warning hides the per-request log)",
    )
    add_prior_argument(parser)


# The app is started by uvicorn from this import string (in every worker process when
# --workers > 1), so the options travel as environment variables; cli and serve share a level
# and do not import each other. tests/test_serve.py checks the names against serve.app.
APP_FACTORY = "fracturekit.serve.app:create_app_from_env"
ENV_CHECKPOINT = "FRACTUREKIT_SERVE_CHECKPOINT"
ENV_BACKEND = "FRACTUREKIT_SERVE_BACKEND"
ENV_MAX_UPLOAD_MB = "FRACTUREKIT_SERVE_MAX_UPLOAD_MB"
ENV_SAVE_UPLOADS = "FRACTUREKIT_SERVE_SAVE_UPLOADS"
ENV_PRIOR = "FRACTUREKIT_SERVE_PRIOR"


def run(args: argparse.Namespace) -> int:
    import uvicorn

    ckpt = Path(args.checkpoint).expanduser()
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: must be at least 1")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: must be in 0..65535")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb {args.max_upload_mb}: must be positive")
    save = Path(args.save_uploads).expanduser().resolve() if args.save_uploads else None
    if save is not None and save.exists() and not save.is_dir():
        raise NotADirectoryError(f"--save-uploads {save}: not a folder")
    # Check the model here, so that a wrong file is a one-line error, not a failed start-up.
    if args.backend == "torch" and ckpt.suffix.lower() != ".onnx":
        from fracturekit.models import read_checkpoint

        read_checkpoint(ckpt)
    else:
        from fracturekit.predict import Predictor

        Predictor.from_checkpoint(ckpt, args.backend)
    if args.prior is not None:  # a prior the checkpoint cannot decide at fails here, not later
        from fracturekit.predict import Predictor

        Predictor.from_checkpoint(ckpt, args.backend, prior=parse_prior_argument(args.prior))
    os.environ[ENV_PRIOR] = args.prior or ""
    os.environ[ENV_CHECKPOINT] = str(ckpt.resolve())
    os.environ[ENV_BACKEND] = args.backend
    os.environ[ENV_MAX_UPLOAD_MB] = repr(float(args.max_upload_mb))
    if save is not None:
        os.environ[ENV_SAVE_UPLOADS] = str(save)
    else:
        os.environ.pop(ENV_SAVE_UPLOADS, None)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0
