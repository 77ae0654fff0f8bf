"""Export a checkpoint to ONNX (dynamic batch size) and check it against PyTorch.

The file is written only when ONNX Runtime's class probabilities match PyTorch's within --atol
(default 1e-4) on the check images (given with --check-images, else synthetic crack images) at
the full batch and at batch size 1. Its metadata carries the class names, input size,
normalisation, threshold and temperature, so `fracturekit predict model.onnx ...` and
`fracturekit predict model.pt --backend onnx` use it with the same preprocessing.

Example:
  fracturekit export runs/demo/model.pt --out runs/demo/model.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fracturekit.cli._options import add_overwrite


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="model.pt written by training")
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="the .onnx file to write (default: CKPT with the suffix .onnx, where "
        "`--backend onnx` looks for it)",
    )
    add_overwrite(parser, "an existing --out file")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    parser.add_argument(
        "--check-images",
        nargs="+",
        metavar="PATH",
        help="images, folders or CSV manifests for the parity check (default: synthetic crack "
        "images); at most 32 are used",
    )
    parser.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="largest allowed difference of probabilities, ONNX vs PyTorch (default 1e-4)",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fracturekit.export import export_onnx
    from fracturekit.predict import expand_inputs

    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    images = expand_inputs(args.check_images)[:32] if args.check_images else None
    report = export_onnx(
        args.checkpoint,
        out,
        opset=args.opset,
        check_images=images,
        atol=args.atol,
        overwrite=args.overwrite,
    )
    Console(stderr=True).print(
        f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset}, input "
        f"[N, {', '.join(map(str, report.input_shape))}]); parity on {report.n_images} "
        f"{'given' if report.check_source == 'images' else 'synthetic'} image(s) at batch sizes "
        f"{', '.join(map(str, report.batch_sizes))}: max |p_onnx - p_torch| = "
        f"{report.max_abs_diff:.2e} (allowed {report.atol:g})"
    )
    return 0
