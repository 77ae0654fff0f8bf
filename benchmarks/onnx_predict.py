"""`fracturekit predict model.onnx`: start-up and end-to-end throughput against raw ONNX Runtime.

Builds ``efficientnet_lite0`` (embedded ImageNet weights) at 224 px, exports it with
``fracturekit export`` (parity-checked) and measures, on the same machine in one run:

* start-up to the first result: ``fracturekit predict model.onnx one.jpg --out r.csv`` as a user
  runs it (a new process), against a raw script that imports onnxruntime, Pillow and numpy,
  opens the session, decodes, resizes and runs the one image;
* end to end on ``--images`` JPEGs (CRACK500 tiles of ``../shared/data`` when present, else
  generated 320x240 photos-like images): ``fracturekit predict model.onnx DIR --out r.csv``
  (decoding, resizing, batching, writing the CSV; start-up excluded by timing a one-image run
  too; once more with ONNX Runtime's threads not spinning; and with ``--backend openvino``, the
  default for an .onnx file when OpenVINO is installed), against raw ONNX Runtime on the same
  images already decoded and preprocessed (batch 32,
  inference only: the ceiling), and a raw loop that decodes and runs batch by batch.

Each measure is the median of ``--repeats`` runs; the load average is printed with the table.

Run:
    .venv/bin/python benchmarks/onnx_predict.py [--images 500] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import SHARED_DATA

RAW_ONE = """
import sys, time
t0 = time.perf_counter()
import numpy as np, onnxruntime as ort
from PIL import Image
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
im = Image.open(sys.argv[2]).convert("RGB").resize((224, 224), Image.BICUBIC)
x = (np.asarray(im, np.float32) / 255 - 0.5) / 0.5
s.run(None, {s.get_inputs()[0].name: x.transpose(2, 0, 1)[None].copy()})
"""


def _images(folder: Path, n: int) -> list[Path]:
    tiles = SHARED_DATA / "crack500_patches"
    if tiles.is_dir():
        found = sorted(tiles.glob("*/*.jpg"))[:n]
        if len(found) == n:
            return found
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = rng.integers(60, 200, (1, 1, 3))
        arr = np.clip(base + rng.normal(0, 25, (240, 320, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        out.append(path)
    return out


def _wall(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr)
    return time.perf_counter() - t0


def _raw_inference(onnx_path: Path, batch: np.ndarray, repeats: int) -> float:
    """Images/s of session.run alone on preprocessed batches of 32."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: batch[:32]})
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(batch), 32):
            session.run(None, {name: batch[i : i + 32]})
        rates.append(len(batch) / (time.perf_counter() - t0))
    return statistics.median(rates)


def _raw_decode_loop(onnx_path: Path, paths: list[Path], predictor) -> float:
    """Images/s of a plain loop: decode and preprocess a batch, run it, next batch."""
    import onnxruntime as ort

    from fracturekit.io import read_image

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    t0 = time.perf_counter()
    for i in range(0, len(paths), 32):
        x = np.stack([predictor.preprocess(read_image(p)) for p in paths[i : i + 32]])
        session.run(None, {name: x})
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fk-onnx-predict-"))
    out.mkdir(parents=True, exist_ok=True)

    from fracturekit.export import export_onnx
    from fracturekit.io import read_image
    from fracturekit.models import build_model, save_checkpoint
    from fracturekit.predict import Predictor

    model = build_model("efficientnet_lite0", 2, pretrained=True)
    meta = {"classes": ["crack", "no_crack"], "img_size": 224, "positive": "crack"}
    ckpt = save_checkpoint(out / "model.pt", model, {**meta, "threshold": 0.5})
    onnx_path = export_onnx(ckpt, out / "model.onnx", overwrite=True).path
    paths = _images(out, args.images)
    folder = out / "images"
    folder.mkdir(exist_ok=True)
    for p in paths:  # one folder of links: the CLI reads exactly these images
        link = folder / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    cli = [sys.executable, "-m", "fracturekit", "predict", str(onnx_path), "--backend", "onnx"]
    load = os.getloadavg()

    one = [_wall([*cli, str(paths[0]), "--out", str(out / "one.csv"), "--overwrite"])]
    one += [_wall([*cli, str(paths[0]), "--out", str(out / "one.csv"), "--overwrite"])
            for _ in range(args.repeats - 1)]  # fmt: skip
    raw_one = [_wall([sys.executable, "-c", RAW_ONE, str(onnx_path), str(paths[0])])
               for _ in range(args.repeats)]  # fmt: skip
    full = [_wall([*cli, str(folder), "--out", str(out / "all.csv"), "--overwrite"])
            for _ in range(args.repeats)]  # fmt: skip
    spinning = {**os.environ, "FRACTUREKIT_ORT_SPINNING": "0"}  # threads that do not spin
    full_spin = [_wall([*cli, str(folder), "--out", str(out / "all.csv"), "--overwrite"], spinning)
                 for _ in range(args.repeats)]  # fmt: skip
    full_ov = None
    if importlib.util.find_spec("openvino") is not None:
        ov_cli = [*cli, str(folder), "--out", str(out / "all.csv"), "--overwrite"]
        ov_cli += ["--backend", "openvino"]
        one_ov = statistics.median(
            [_wall([*cli, str(paths[0]), "--out", str(out / "one.csv"), "--overwrite",
                    "--backend", "openvino"]) for _ in range(args.repeats)]
        )  # fmt: skip
        full_ov = statistics.median([_wall(ov_cli) for _ in range(args.repeats)]) - one_ov
    start, run = statistics.median(one), statistics.median(full)
    predictor = Predictor.from_checkpoint(onnx_path)
    batch = np.stack([predictor.preprocess(read_image(p)) for p in paths]).astype(np.float32)
    ceiling = _raw_inference(onnx_path, batch, args.repeats)
    loop = _raw_decode_loop(onnx_path, paths, predictor)
    e2e = len(paths) / max(run - start, 1e-9)
    e2e_spin = len(paths) / max(statistics.median(full_spin) - start, 1e-9)
    after = os.getloadavg()

    print(f"\n{len(paths)} JPEGs ({paths[0].parent}), efficientnet_lite0 224 px, ONNX Runtime")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {load[0]:.2f} -> {after[0]:.2f}")  # fmt: skip
    print("| measure | value | vs raw ONNX Runtime |")
    print("|---|---:|---:|")
    print(f"| start-up to the first result, `fracturekit predict --backend onnx` | {start:.2f} s | "
          f"{start / statistics.median(raw_one):.2f}x the raw script's "
          f"{statistics.median(raw_one):.2f} s |")  # fmt: skip
    print(f"| `fracturekit predict DIR --backend onnx` end to end (start-up excluded) | {e2e:.1f} img/s | "
          f"{e2e / ceiling:.0%} of inference alone |")  # fmt: skip
    print(f"| the same, ONNX Runtime's threads not spinning (`FRACTUREKIT_ORT_SPINNING=0`) | "
          f"{e2e_spin:.1f} img/s | {e2e_spin / ceiling:.0%} |")  # fmt: skip
    if full_ov is not None:
        ov_rate = len(paths) / max(full_ov, 1e-9)
        print(f"| `fracturekit predict DIR --backend openvino` end to end | {ov_rate:.1f} img/s | "
              f"{ov_rate / ceiling:.0%} |")  # fmt: skip
    print(f"| raw loop: decode + preprocess, then run, batch 32 | {loop:.1f} img/s | "
          f"{loop / ceiling:.0%} |")  # fmt: skip
    print(f"| raw inference alone, preprocessed batches of 32 | {ceiling:.1f} img/s | 100% |")


if __name__ == "__main__":
    main()
