"""INT8 vs FP32: images/s and validation ROC AUC / F1, ONNX Runtime and OpenVINO side by side.

Exports a checkpoint with ``fracturekit.export.export_onnx`` (FP32) and
``fracturekit.quantize.export_int8`` (static QDQ, calibrated on its training images), then times
the forward pass of each runtime at batch sizes 1 and 32 in the same process (interleaved
rounds, the median counts, as in ``export_speed.py``) and scores each on the checkpoint's
validation images. OpenVINO rows appear when ``openvino`` is installed (it reads both ONNX
files; its FP32 row is pinned to f32 precision so bf16 hardware does not blur the comparison).

Run:
    .venv/bin/python benchmarks/int8.py --ckpt runs/c500/model.pt [--threads 2] [--seconds 4]

Without ``--ckpt`` an ``efficientnet_lite0`` (embedded ImageNet weights, untrained head) at
224 px is used with ``$FRACTUREKIT_SHARED_DATA/crack500_patches`` as its data: the speeds are
real, but its AUC/F1 only show how far INT8 moves an untrained model's scores.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np

from export_speed import _interleaved


def _default_checkpoint(tmp: Path, img_size: int) -> Path:
    from fracturekit.models import build_model, save_checkpoint

    data = Path(os.environ.get("FRACTUREKIT_SHARED_DATA", "data")) / "crack500_patches"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("efficientnet_lite0", 2, pretrained=True)
    meta = {
        "img_size": img_size,
        "classes": ["crack", "no_crack"],
        "positive": "crack",
        "threshold": 0.5,
        "config": {"data": str(data), "layout": "folders", "val_fraction": 0.2, "seed": 0},
    }
    return save_checkpoint(tmp / "model.pt", model, meta)


def _openvino(path: Path, threads: int, batch: int, shape: tuple[int, ...], f32: bool):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([batch, *shape])
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(model, "CPU", config)
    return lambda x: compiled(x)[0]


def _ort(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0]


def _validation_batch(fp32_path: Path, samples, limit: int):
    from fracturekit.io import read_image
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(fp32_path)
    index = {c: i for i, c in enumerate(predictor.classes)}
    xs, ys = [], []
    for s in samples[:limit]:
        try:
            image = read_image(s.path, channels=predictor.in_chans)
        except (ValueError, OSError):
            continue
        xs.append(np.asarray(predictor.preprocess(image)))
        ys.append(index[s.class_name])
    return predictor, np.stack(xs).astype(np.float32), np.asarray(ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a trained checkpoint whose data is reachable")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing budget per cell")
    parser.add_argument("--img-size", type=int, default=224, help="without --ckpt")
    parser.add_argument("--max-val", type=int, default=400, help="validation images scored")
    parser.add_argument("--calibration", type=int, default=128, help="calibration images")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from fracturekit.export import export_onnx
    from fracturekit.models import logits_to_proba, read_checkpoint
    from fracturekit.quantize import checkpoint_splits, export_int8, scores

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt = Path(args.ckpt) if args.ckpt else _default_checkpoint(tmp, args.img_size)
        meta = read_checkpoint(ckpt)["meta"]
        fp32_path, int8_path = tmp / "fp32.onnx", tmp / "int8.onnx"
        export_onnx(ckpt, fp32_path)
        report = export_int8(
            ckpt, int8_path, n_calibration=args.calibration, max_auc_drop=1, max_f1_drop=1
        )
        val = checkpoint_splits(meta, ckpt).val
        predictor, x_val, y_val = _validation_batch(fp32_path, list(val), args.max_val)
        shape = tuple(x_val.shape[1:])
        runtimes = {"ORT FP32": (fp32_path, None), "ORT INT8 (QDQ)": (int8_path, None)}
        try:
            import openvino

            runtimes |= {"OpenVINO FP32": (fp32_path, True), "OpenVINO INT8": (int8_path, False)}
            ov_version = openvino.__version__
        except ImportError:
            ov_version = "not installed"

        def runner(name: str, batch: int):
            path, f32 = runtimes[name]
            if f32 is None:
                return _ort(path, args.threads)
            return _openvino(path, args.threads, batch, shape, f32)

        speed: dict[int, dict[str, float]] = {}
        for batch in (1, 32):
            x = np.ascontiguousarray(np.resize(x_val, (batch, *shape)))
            fns = {n: (lambda f=runner(n, batch), x=x: f(x)) for n in runtimes}
            speed[batch] = _interleaved(fns, batch, args.seconds)
        quality = {}
        for name in runtimes:
            run_batch = runner(name, 32)
            logits = []
            for start in range(0, len(x_val), 32):
                chunk = x_val[start : start + 32]
                pad = np.resize(chunk, (32, *shape))  # static-shape runtimes take full batches
                logits.append(run_batch(pad)[: len(chunk)])
            proba = logits_to_proba(torch.from_numpy(np.concatenate(logits)), predictor.temperature)
            quality[name] = scores(
                y_val, proba.numpy(), predictor.classes, predictor.positive, predictor.threshold
            )

    print(
        f"\n{meta['backbone']}, {meta['img_size']} px; {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} cores, {args.threads} thread(s); onnxruntime {ort.__version__}, "
        f"openvino {ov_version}; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"export_int8: calibrated on {report.n_calibration} image(s) of "
        f"{report.calibration_source}; {report.summary()}; "
        f"{report.fp32_size_bytes / 1e6:.1f} MB -> {report.size_bytes / 1e6:.1f} MB\n"
    )
    print("| runtime | img/s b1 | img/s b32 | vs ORT FP32 b1 | vs ORT FP32 b32 | ROC AUC | F1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = {b: speed[b]["ORT FP32"] for b in speed}
    for name in runtimes:
        q = quality[name]
        print(
            f"| {name} | {speed[1][name]:.1f} | {speed[32][name]:.1f} | "
            f"{speed[1][name] / base[1]:.2f}x | {speed[32][name] / base[32]:.2f}x | "
            f"{q['roc_auc']:.4f} | {q['f1']:.4f} |"
        )
    print(f"(ROC AUC / F1 on {len(y_val)} validation image(s))")


if __name__ == "__main__":
    main()
