"""Resident memory while explaining many images one call at a time: flat, because the CAM hooks
live in ``with`` blocks per call (a long-running server must not leak them).

Two loops over ``--n`` random images, each call explaining one image as a server would:

* ``cams``: ``Predictor.preprocess`` + ``compute_cams`` (the hook-creating core);
* ``files``: ``explain_images`` on one image file per call (prediction, CAM, overlay figure,
  ``.npy``), writing into a temporary folder.

RSS (``VmRSS`` of ``/proc/self/status``) is printed every quarter of the run, with the number of
forward hooks left on the model (must stay 0).

Run (tiny model, 64 px, the issue's 1,000 images):
    .venv/bin/python benchmarks/explain_memory.py --n 1000
The default backbone at its 224 px input (fewer images, it is slower):
    .venv/bin/python benchmarks/explain_memory.py --backbone efficientnet_lite0 --size 224 --n 400
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def hooks_left(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="simple_cnn")
    parser.add_argument("--size", type=int, default=64, help="model input size")
    parser.add_argument("--n", type=int, default=1000, help="images per loop")
    parser.add_argument("--method", default="hirescam")
    parser.add_argument("--layer", default="fine", help="fine, cam or blockN")
    parser.add_argument("--modes", default="cams,files")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image
    from rich.console import Console
    from rich.table import Table

    from fracturekit.explain import compute_cams, explain_images
    from fracturekit.models import build_model, save_checkpoint
    from fracturekit.predict import Predictor

    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory(prefix="explain-mem-")
    root = Path(tmp.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(args.backbone, 2, pretrained=args.backbone == "efficientnet_lite0")
    ckpt = save_checkpoint(
        root / "model.pt",
        model,
        {"img_size": args.size, "classes": ["crack", "no_crack"], "positive": "crack"},
    )
    predictor = Predictor.from_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    layer = None if args.layer == "cam" else args.layer
    marks = sorted({0, *[round(args.n * q / 4) for q in (1, 2, 3, 4)]})
    table = Table(
        title=f"RSS over {args.n} images, {args.backbone} at {args.size} px, {args.method}"
    )
    table.add_column("loop")
    for m in marks:
        table.add_column(f"after {m}", justify="right")
    table.add_column("growth 25%->100%", justify="right")
    table.add_column("hooks left", justify="right")
    table.add_column("s/image", justify="right")

    def image() -> Image.Image:
        side = args.size + int(rng.integers(0, args.size))
        arr = (rng.random((side, side, 3)) * 255).astype(np.uint8)
        return Image.fromarray(arr)

    for mode in [m for m in args.modes.split(",") if m]:
        readings = {}
        files = root / mode
        files.mkdir()
        src = root / "in.png"
        t0 = time.perf_counter()
        for i in range(args.n + 1):
            if i in marks:
                readings[i] = rss_mib()
            if i == args.n:
                break
            if mode == "cams":
                batch = torch.stack([predictor.preprocess(image())])
                compute_cams(predictor.model, batch, method=args.method, layer=layer)
            else:
                image().save(src)
                explain_images(
                    predictor, [src], files, method=args.method, cam_layer=layer, overwrite=True
                )
        per = (time.perf_counter() - t0) / args.n
        first = marks[1] if len(marks) > 1 else 0
        growth = readings[marks[-1]] - readings[first]
        table.add_row(
            mode,
            *[f"{readings[m]:.1f} MiB" for m in marks],
            f"{growth:+.1f} MiB",
            str(hooks_left(predictor.model)),
            f"{per:.3f}",
        )
        print(mode, {m: round(v, 1) for m, v in readings.items()}, flush=True)
    Console(width=150).print(table)
    load = os.getloadavg()
    print(f"torch threads {torch.get_num_threads()}, load average {load[0]:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
