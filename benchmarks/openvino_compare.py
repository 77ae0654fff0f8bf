"""ONNX Runtime against OpenVINO on the same exported model, same inputs, same machine.

Exports ``efficientnet_lite0`` (embedded ImageNet weights, 224 px, untrained head) and a
segmenter (U-Net small over the same encoder, random decoder) with ``fracturekit export``
(parity-checked), then runs each ``.onnx`` file on

* ONNX Runtime (CPU provider, its default threads, as ``fracturekit`` opens it), and
* OpenVINO (``openvino.Core().compile_model(path, "CPU")``: it reads the ONNX file itself; the
  LATENCY hint, one request on all cores, as ``Predictor`` runs it), at its default inference precision
  (bfloat16 on CPUs that have it) and forced to float32 (``INFERENCE_PRECISION_HINT: f32``)

on the same preprocessed batches, rounds interleaved, the median of ``--rounds``. Reported:
images/s, OpenVINO / ONNX Runtime, and the largest difference of the outputs (probabilities).
OpenVINO is not a dependency of fracturekit: ``pip install openvino`` to run this.

Run:
    .venv/bin/python benchmarks/openvino_compare.py [--rounds 5] [--seconds 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _models(folder: Path) -> dict[str, Path]:
    import torch

    from fracturekit.export import export_onnx
    from fracturekit.models import build_model, build_segmenter, save_checkpoint

    torch.manual_seed(0)
    clf = build_model("efficientnet_lite0", 2, pretrained=True)
    meta = {"classes": ["crack", "no_crack"], "positive": "crack", "img_size": 224}
    ckpt = save_checkpoint(folder / "clf.pt", clf, {**meta, "threshold": 0.5})
    seg = build_segmenter("efficientnet_lite0", decoder="unet_small", pretrained=True)
    seg_ckpt = save_checkpoint(folder / "seg.pt", seg, {**meta, "threshold": 0.5, "min_area": 0})
    return {
        "classifier": export_onnx(ckpt, folder / "clf.onnx").path,
        "segmenter (U-Net small)": export_onnx(seg_ckpt, folder / "seg.onnx").path,
    }


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _rate(run, x: np.ndarray, seconds: float) -> float:
    run(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(x)
        n += len(x)
    return n / (time.perf_counter() - t0)


def _ort(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _openvino(path: Path, batch: int, precision: str | None = None):
    import openvino as ov

    core = ov.Core()
    # As fracturekit's backend: one synchronous request on all cores (LATENCY). The THROUGHPUT
    # hint splits the cores into streams that a single request cannot fill.
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    out = compiled.output(0)
    return lambda x: request.infer({0: x})[out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    import openvino as ov

    load0 = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in _models(Path(tmp)).items():
            for batch in (1, 32 if name == "classifier" else 8):
                x = rng.normal(0, 1, (batch, 3, 224, 224)).astype(np.float32)
                ort_run = _ort(path)
                ov_default, ov_f32 = _openvino(path, batch), _openvino(path, batch, "f32")
                ref = _sigmoid(ort_run(x))
                diffs = [float(np.abs(ref - _sigmoid(r(x))).max()) for r in (ov_default, ov_f32)]
                rates: list[list[float]] = [[], [], []]
                for _ in range(args.rounds):
                    for rate, run in zip(rates, (ort_run, ov_default, ov_f32), strict=True):
                        rate.append(_rate(run, x, args.seconds))
                a, b, c = (statistics.median(r) for r in rates)
                rows.append((name, batch, a, b, c, *diffs))
    print(
        f"\nONNX Runtime vs OpenVINO {ov.__version__}; {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}; load average {load0:.2f} -> "
        f"{os.getloadavg()[0]:.2f}; median of {args.rounds} interleaved rounds of {args.seconds:g} s\n"
    )
    print(
        "| model | batch | ONNX Runtime img/s | OpenVINO (its default precision) | vs ORT | "
        "max prob. diff | OpenVINO f32 | vs ORT | max prob. diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, batch, a, b, c, db, dc in rows:
        print(
            f"| {name} | {batch} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {db:.1e} | {c:.1f} | "
            f"{c / a:.2f}x | {dc:.1e} |"
        )


if __name__ == "__main__":
    main()
