"""Inference speed: ONNX Runtime vs PyTorch eager (contiguous and channels_last), side by side.

Builds ``efficientnet_lite0`` (embedded ImageNet weights) at 224 px, writes a checkpoint,
exports it with ``fracturekit.export.export_onnx`` (parity-checked), then times the forward pass
(logits of a preprocessed batch, as ``Predictor.predict_proba`` runs it) at batch sizes 1 and 32
for each runtime in the same process, with 1 thread and with every core (``--threads``), and
prints a table of images per second. (On a busy machine PyTorch's OpenMP threads wait for each
other at every layer, so one thread can beat two; the table shows both.)

Run:
    .venv/bin/python benchmarks/export_speed.py [--seconds 6] [--threads 1,2]

The runtimes are timed in interleaved rounds (each runtime once per round, at least 3 rounds,
about ``--seconds`` per runtime and batch size) and each cell is the median round, so other
processes on the machine slow every runtime alike; the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path


def _interleaved(fns: dict, batch: int, seconds: float) -> dict[str, float]:
    """Images/s per runtime: rounds that time each runtime once in turn, so a change in the
    machine's load during the run hits every runtime alike; the median round counts."""
    for fn in fns.values():  # warm-up: lazy initialisation, kernel selection
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    deadline = time.perf_counter() + seconds * len(fns)
    rounds = 0
    while rounds < 3 or (time.perf_counter() < deadline and rounds < 200):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        rounds += 1
    return {name: batch / statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timing budget per cell")
    parser.add_argument(
        "--threads",
        default=",".join(str(t) for t in sorted({1, os.cpu_count() or 1})),
        help="comma-separated thread counts, each a block of rows (default: 1 and all cores)",
    )
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]

    import numpy as np
    import onnxruntime as ort
    import torch

    from fracturekit.export import export_onnx
    from fracturekit.models import build_model, save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model("efficientnet_lite0", 2, pretrained=True)
        ckpt = save_checkpoint(Path(tmp) / "model.pt", model, {"img_size": args.img_size})
        report = export_onnx(ckpt, Path(tmp) / "model.onnx")
        model = model.eval()
        model_cl = build_model("efficientnet_lite0", 2, pretrained=False)
        model_cl.load_state_dict(model.state_dict())
        model_cl = model_cl.eval().to(memory_format=torch.channels_last)

        for threads in thread_counts:
            torch.set_num_threads(threads)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3
            session = ort.InferenceSession(
                str(report.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            for batch in (1, 32):
                x = torch.randn(batch, 3, args.img_size, args.img_size)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                x_np = x.numpy().astype(np.float32)

                def eager(x=x):
                    with torch.inference_mode():
                        model(x)

                def channels_last(x_cl=x_cl):
                    with torch.inference_mode():
                        model_cl(x_cl)

                def onnxruntime(x_np=x_np, session=session):
                    session.run(["logits"], {"input": x_np})

                runtimes = {
                    "PyTorch eager": eager,
                    "PyTorch channels_last": channels_last,
                    "ONNX Runtime": onnxruntime,
                }
                rows.append((threads, batch, _interleaved(runtimes, batch, args.seconds)))

    print(
        f"\nefficientnet_lite0, {args.img_size} px, float32; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"export parity: max |p_onnx - p_torch| = {report.max_abs_diff:.1e} on "
        f"{report.n_images} synthetic images\n"
    )
    names = list(rows[0][2])
    print("| threads | batch | " + " | ".join(f"{n} (img/s)" for n in names) + " | ONNX / eager |")
    print("|---:|---:|" + "---:|" * (len(names) + 1))
    for threads, batch, cells in rows:
        ratio = cells["ONNX Runtime"] / cells["PyTorch eager"]
        values = " | ".join(f"{cells[n]:.1f}" for n in names)
        print(f"| {threads} | {batch} | {values} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
