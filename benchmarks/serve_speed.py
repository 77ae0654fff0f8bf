"""Throughput and latency of `fracturekit serve` under concurrent clients, against raw ONNX
Runtime on the same model in the same run.

For each service set-up, a real ``python -m fracturekit serve CKPT ...`` process on 127.0.0.1
answers ``--requests`` ``POST /predict`` calls (default 1,000) from ``--clients`` concurrent
clients (default 8; httpx async in this process, each client sends its next request when the
last is answered), each a 224 px JPEG of a synthetic concrete surface. Set-ups:

* ``default``: ``fracturekit serve CKPT`` with no flags: /predict on OpenVINO when installed,
  else ONNX Runtime (the checkpoint's ONNX export, made once into the cache), micro-batched (up
  to 32, 2 ms wait);
* ``nowait``: ``--batch-wait-ms 0`` (a batch is what is already waiting);
* ``onnx``: ``--backend onnx`` (ONNX Runtime, micro-batched); ``onnx1``: and ``--batch-size 1``;
* ``torch``: ``--backend torch --batch-size 1`` (the service before micro-batching).

The reference is raw ONNX Runtime on the same ONNX file: one session with its default threads,
preprocessed batches of 32 (and 8) run back to back, no decoding, no HTTP; raw OpenVINO
(float32) on the same batches is printed beside it when installed. Ratios of the
services' requests/s to it are the target (default >= 80% of batch 32). The load generator
shares the machine's cores with the server, as any client on the same machine would.

Default model: ``efficientnet_lite0`` with its embedded ImageNet weights at 224 px and an
untrained head (the speed does not depend on the head's training); ``--checkpoint`` to use
a trained one.

Run:
    .venv/bin/python benchmarks/serve_speed.py [--requests 1000] [--clients 8]
        [--setups default,nowait,onnx,onnx1,torch] [--checkpoint model.pt]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import (  # noqa: E402
    API_KEY,
    HOST,
    free_port,
    load,
    make_checkpoint,
    start_server,
    stop_server,
    wait_healthy,
)

SETUPS = {
    "default": ("default (no flags)", []),
    "nowait": ("default, `--batch-wait-ms 0`", ["--batch-wait-ms", "0"]),
    "onnx": ("`--backend onnx` (ONNX Runtime), micro-batched", ["--backend", "onnx"]),
    "onnx1": ("`--backend onnx --batch-size 1`", ["--backend", "onnx", "--batch-size", "1"]),
    "torch": ("`--backend torch --batch-size 1`", ["--backend", "torch", "--batch-size", "1"]),
}


def jpegs(n: int = 16, size: int = 224) -> list[bytes]:
    import numpy as np
    from PIL import Image

    from fracturekit.synthetic import render_sample

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        sample = render_sample(rng, size, "concrete", i % 2 == 0)
        Image.fromarray(sample.image).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def raw_rate(
    onnx_path: Path, images: list[bytes], batch: int, runtime: str = "onnx", seconds: float = 8.0
) -> float:
    """Images/s of the bare runtime (ONNX Runtime with its defaults, or OpenVINO at float32)
    on preprocessed batches of ``batch``."""
    import numpy as np
    from PIL import Image

    from fracturekit.predict import Predictor

    pred = Predictor.from_checkpoint(onnx_path)  # its preprocessing, outside the timing
    xs = [pred.preprocess(Image.open(io.BytesIO(b))) for b in images]
    x = np.stack([xs[i % len(xs)] for i in range(batch)]).astype(np.float32)
    if runtime == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run() -> None:
            session.run(None, {name: x})
    else:
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        request = ov.Core().compile_model(str(onnx_path), "CPU", config).create_infer_request()

        def run() -> None:
            request.infer({0: x})

    for _ in range(3):
        run()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run()
        n += batch
    return n / (time.perf_counter() - t0)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_service(ckpt: Path, flags: list[str], images: list[bytes], args) -> dict:
    import httpx

    port = free_port()
    url = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        proc = start_server(ckpt, port, log, tuple(flags))
        try:
            wait_healthy(url, proc, log, timeout=300)
            auth = {"Authorization": f"Bearer {API_KEY}"}
            for i in range(20):  # warm-up
                httpx.post(url + "/predict", files={"file": ("w.jpg", images[i % 8])}, headers=auth)
            result = asyncio.run(
                load(url, images, args.requests, args.clients, args.max_seconds, "/predict")
            )
            model = httpx.get(url + "/model", headers=auth).json()
            result["batching"] = model.get("batching")
            result["backend"] = model.get("backend")
        finally:
            stop_server(proc)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: efficientnet_lite0 at 224 px")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--setups", default=",".join(SETUPS), help=", ".join(SETUPS))
    args = parser.parse_args()

    from fracturekit.export import serving_onnx

    load0 = os.getloadavg()[0]
    images = jpegs()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or make_checkpoint(Path(tmp))
        onnx_path = serving_onnx(ckpt).path  # what the default service will find in the cache
        raw32 = raw_rate(onnx_path, images, 32)
        raw8 = raw_rate(onnx_path, images, 8)
        ov32 = raw_rate(onnx_path, images, 32, "openvino") if _has("openvino") else None
        results = {}
        for key in [s.strip() for s in args.setups.split(",") if s.strip()]:
            results[key] = run_service(ckpt, SETUPS[key][1], images, args)
        raw32_after = raw_rate(onnx_path, images, 32)

    name = "efficientnet_lite0 224 px" if args.checkpoint is None else str(args.checkpoint)
    print(
        f"\n`fracturekit serve` ({name}), {args.clients} concurrent clients, 224 px JPEG, "
        f"POST /predict; {os.cpu_count()} cores, {platform.machine()}, "
        f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}\n"
    )
    print(
        f"raw ONNX Runtime (same file, preprocessed batches): batch 32 {raw32:.1f} img/s "
        f"(again after the services: {raw32_after:.1f}), batch 8 {raw8:.1f} img/s"
    )
    if ov32 is not None:
        print(f"raw OpenVINO float32, batch 32: {ov32:.1f} img/s")
    print()
    ref = (raw32 + raw32_after) / 2
    print(
        "| set-up | /predict on | requests/s | of raw ORT batch 32 | p50 | p95 | p99 | "
        "mean batch | errors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, r in results.items():
        batching = r.get("batching") or {}
        print(
            f"| {SETUPS[key][0]} | {r['backend']} | {r['rps']:.1f} | {r['rps'] / ref:.0%} | {r['p50']:.0f} ms | "
            f"{r['p95']:.0f} ms | {r['p99']:.0f} ms | {batching.get('mean_batch', 1.0):.2f} | "
            f"{r['errors']} |"
        )
    if "default" in results:
        ratio = results["default"]["rps"] / ref
        verdict = "met" if ratio >= 0.8 else "NOT met"
        print(
            f"\ntarget default service >= 80% of raw ONNX Runtime at batch 32: {verdict} ({ratio:.0%})"
        )
        if ov32 is not None:
            print(
                f"the default service against raw OpenVINO at batch 32: {results['default']['rps'] / ov32:.0%}"
            )


if __name__ == "__main__":
    main()
