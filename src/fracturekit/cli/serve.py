"""Serve a model as a REST API with a web page (FastAPI under uvicorn).

Open http://HOST:PORT/ for the page (drag an image in: PNG, JPEG, TIFF or DICOM); the API:
GET /health, GET /model, POST /predict and POST /explain (multipart field `file`), described at
/openapi.json (and by Swagger UI at /docs with --docs). A segmentation checkpoint (`train --task
segment`) also answers POST /segment: the crack mask as PNG (?format=png) or JSON with the crack
fraction, widths and outlines; its page shows the mask over the photo. The model is loaded once
per worker process when it starts. Uploads stay in memory and are never written to disk unless
--save-uploads DIR is given.

The default host 127.0.0.1 accepts connections from this machine only. To listen on a network
(--host 0.0.0.0), give an API key (--api-key or $FRACTUREKIT_API_KEY; clients send
`Authorization: Bearer KEY`, the page has a field for it) and put the service behind a proxy
with TLS. Requests from other web sites (a foreign Origin) and Host names not in
--allowed-hosts are refused.

Example:
  fracturekit serve runs/demo/model.pt --port 8000
  curl -F file=@photo.jpg http://127.0.0.1:8000/predict
  curl -F file=@photo.jpg 'http://127.0.0.1:8000/segment?format=png' -o mask.png   # segmenter
  FRACTUREKIT_API_KEY=s3cret fracturekit serve model.pt --host 0.0.0.0 --allowed-hosts lab.example
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from pathlib import Path

from fracturekit import contracts as env
from fracturekit.cli._options import add_backend, add_batch_size
from fracturekit.cli.predict import add_prior_argument, parse_prior_argument

# A service keeps the allocator's default (return freed memory to the system): the command
# line's tuning would keep every burst's peak resident for good.
KEEP_FREED_MEMORY = False
# The app is started by uvicorn from this import string (in every worker process when
# --workers > 1), so the options travel as the environment variables of fracturekit.contracts;
# cli and serve share a level and do not import each other.
APP_FACTORY = "fracturekit.serve.app:create_app_from_env"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
# The limits past which a request gets HTTP 413 (each must be positive): flag, type, default,
# metavar, help.
UPLOAD_LIMITS = (
    (
        "--max-upload-mb",
        float,
        env.DEFAULT_MAX_UPLOAD_MB,
        "MB",
        "largest accepted upload; bigger bodies get HTTP 413 (default 25)",
    ),
    (
        "--max-pixels",
        int,
        env.DEFAULT_MAX_PIXELS,
        "N",
        "largest image in pixels; bigger images get HTTP 413 (default 40,000,000)",
    ),
)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="model.pt of a classifier or a segmentation model (or a classifier's model.onnx)",
    )
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
    add_prior_argument(parser)
    for flag, kind, default, metavar, what in UPLOAD_LIMITS:
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=what)
    parser.add_argument(
        "--save-uploads",
        metavar="DIR",
        help="keep a copy of every upload that decoded in DIR (unique names); by default "
        "nothing is written",
    )
    parser.add_argument(
        "--save-max",
        type=int,
        default=env.DEFAULT_SAVE_MAX,
        metavar="N",
        help="stop keeping uploads once DIR holds N files (default %(default)s)",
    )
    add_backend(
        parser,
        default="auto",
        help="auto (default): /predict and /segment on OpenVINO when installed, else ONNX "
        "Runtime (the model.onnx exported beside the checkpoint, else one exported once into "
        "the cache, $FRACTUREKIT_CACHE or ~/.cache/fracturekit, with the parity check), "
        "/explain on PyTorch; torch, onnx or openvino: that runtime for every route (onnx, "
        "openvino: no heat maps)",
    )
    add_batch_size(
        parser,
        32,
        "a classifier's /predict requests arriving together run as one batch of up to N "
        "images (1: no batching);",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="how long the first request of a batch waits for more (default 0: a batch is "
        "what queued while the previous one ran)",
    )
    parser.add_argument(
        "--explain-methods",
        metavar="LIST",
        help="CAM methods /explain offers, comma-separated (default: every method but the "
        "costly scorecam, which runs one forward pass per channel)",
    )
    _register_access(parser)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn log level (default info; warning hides the per-request log)",
    )


def _register_access(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get(env.ENV_API_KEY) or None,
        help="require this key on every route but the page and /health (default: "
        f"${env.ENV_API_KEY}; the variable keeps the key out of the process list)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow listening on a non-loopback address without an API key",
    )
    parser.add_argument(
        "--allowed-hosts",
        metavar="LIST",
        help="names the Host header may carry, comma-separated; '*' any (default: "
        "localhost, 127.0.0.1, ::1 and --host; with --host 0.0.0.0 also this machine's name)",
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="serve Swagger UI at /docs (it loads its scripts and styles from a CDN)",
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to bind) reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def allowed_hosts(host: str, given: str | None) -> list[str]:
    """``--allowed-hosts``, or the loopback names plus the bound host (and this machine's
    names when binding every interface)."""
    if given is not None:
        return env.split_list(given)
    hosts = list(env.LOOPBACK_HOSTS)
    if host in WILDCARD_HOSTS:
        hosts += [socket.gethostname(), socket.getfqdn()]
    else:
        hosts.append(host.strip("[]"))
    return list(dict.fromkeys(h.lower() for h in hosts))


def _check(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: must be at least 1")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: must be in 0..65535")
    for flag, *_ in UPLOAD_LIMITS:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value <= 0:
            raise ValueError(f"{flag} {value}: must be positive")
    if args.save_max < 0:
        raise ValueError(f"--save-max {args.save_max}: must be 0 or more")
    if not 0 <= args.batch_wait_ms <= 1000:
        raise ValueError(f"--batch-wait-ms {args.batch_wait_ms}: must be between 0 and 1000")
    if not is_loopback(args.host) and not args.api_key and not args.insecure_no_auth:
        raise ValueError(
            f"--host {args.host} listens beyond this machine: give an API key (--api-key or "
            f"${env.ENV_API_KEY}), or --insecure-no-auth to serve without one"
        )
    if args.explain_methods is not None:
        from fracturekit.explain import CAM_METHODS

        unknown = set(env.split_list(args.explain_methods)) - set(CAM_METHODS)
        if unknown:
            raise ValueError(
                f"--explain-methods: unknown method(s) {', '.join(sorted(unknown))}; choose "
                f"from {', '.join(CAM_METHODS)}"
            )


def _fast_model(ckpt: Path, required: bool = False) -> None:
    """Find or export the checkpoint's ONNX model once, before the worker processes start (they
    find it in the cache); with ``--backend auto`` a failure only means /predict runs on
    PyTorch, with ``onnx``/``openvino`` it is the error."""
    from fracturekit.export import serving_onnx

    try:
        twin = serving_onnx(ckpt)
    except Exception as exc:  # onnxruntime missing, export or parity check failed
        if required:
            raise
        print(f"note: /predict runs on PyTorch: no ONNX model of {ckpt} ({exc})")
        return
    if twin.origin == "exported":
        print(f"exported {ckpt} to {twin.path} for /predict (parity check passed)")


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def run(args: argparse.Namespace) -> int:
    import uvicorn

    ckpt = Path(args.checkpoint).expanduser()
    _check(args)
    save = Path(args.save_uploads).expanduser().resolve() if args.save_uploads else None
    if save is not None and save.exists() and not save.is_dir():
        raise NotADirectoryError(f"--save-uploads {save}: not a folder")
    # Check the model here, so that a wrong file is a one-line error, not a failed start-up.
    from fracturekit.predict import Predictor

    onnx_file = ckpt.suffix.lower() == ".onnx"
    if onnx_file:
        Predictor.from_checkpoint(
            ckpt, "onnx" if args.backend in ("auto", "torch") else args.backend
        )
    else:
        from fracturekit.models import read_checkpoint

        read_checkpoint(ckpt)
    if args.prior is not None:  # a prior the checkpoint cannot decide at fails here, not later
        Predictor.from_checkpoint(
            ckpt, "onnx" if onnx_file else "torch", prior=parse_prior_argument(args.prior)
        )
    if not onnx_file and args.backend != "torch":
        _fast_model(ckpt, required=args.backend != "auto")
    _set_env(env.ENV_PRIOR, args.prior)
    _set_env(env.ENV_CHECKPOINT, str(ckpt.resolve()))
    _set_env(env.ENV_BACKEND, args.backend)
    _set_env(env.ENV_MAX_UPLOAD_MB, repr(float(args.max_upload_mb)))
    _set_env(env.ENV_MAX_PIXELS, str(args.max_pixels))
    _set_env(env.ENV_SAVE_UPLOADS, None if save is None else str(save))
    _set_env(env.ENV_SAVE_MAX, str(args.save_max))
    _set_env(env.ENV_EXPLAIN_METHODS, args.explain_methods)
    _set_env(env.ENV_ALLOWED_HOSTS, ",".join(allowed_hosts(args.host, args.allowed_hosts)))
    _set_env(env.ENV_DOCS, "1" if args.docs else None)
    _set_env(env.ENV_API_KEY, args.api_key)
    _set_env(env.ENV_BATCH_SIZE, str(args.batch_size))
    _set_env(env.ENV_BATCH_WAIT_MS, repr(float(args.batch_wait_ms)))
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0
