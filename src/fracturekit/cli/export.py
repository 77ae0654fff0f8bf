"""Export a checkpoint to ONNX (dynamic batch size) and check it against PyTorch.

The file is written only when ONNX Runtime's class probabilities match PyTorch's within --atol
(default 1e-4) on the check images (given with --check-images, else synthetic crack images) at
the full batch and at batch size 1. Its metadata carries the class names, input size,
normalisation, threshold and temperature, so `fracturekit predict model.onnx ...` and
`fracturekit predict model.pt --backend onnx` use it with the same preprocessing.

A segmentation checkpoint is exported as its pixel logits [N, 1, H, W] (height and width
dynamic, any multiple of 32, when the graph holds at a second size; else fixed at the
checkpoint's size), checked on its pixel probabilities, and the share of pixels whose mask at
the stored threshold differs is printed; its metadata adds the task, min_area and decoder.

With --int8 the FP32 graph is quantised (ONNX Runtime static quantisation, QDQ, int8 weights
per channel), calibrated on a sample of the checkpoint's training images; the parity check is
replaced by an accuracy check on its validation images: the file is refused when ROC AUC drops
by more than --max-auc-drop (0.005) or F1 by more than --max-f1-drop (0.01). Where the training
data is not reachable, give --calibration-images and --validation-images. INT8 export covers
classifiers only; a segmentation checkpoint is refused.

Examples:
  fracturekit export runs/demo/model.pt --out runs/demo/model.onnx
  fracturekit export runs/demo/model.pt --int8            # writes runs/demo/model.int8.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fracturekit.cli._options import add_overwrite

if TYPE_CHECKING:
    from fracturekit.export import ExportReport


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
    group = parser.add_argument_group("INT8 (--int8)")
    group.add_argument(
        "--int8",
        action="store_true",
        help="write an INT8 model (default --out: CKPT with the suffix .int8.onnx), checked for "
        "accuracy against FP32 on the validation images",
    )
    group.add_argument(
        "--calibration-images",
        nargs="+",
        metavar="PATH",
        help="images, folders or CSV manifests to calibrate on (default: a sample of the "
        "checkpoint's training images)",
    )
    group.add_argument(
        "--validation-images",
        metavar="DATA",
        help="labelled data (class folders, CSV) for the accuracy check, every image used "
        "(default: the checkpoint's validation split)",
    )
    group.add_argument(
        "--calibration-size",
        type=int,
        default=128,
        metavar="N",
        help="at most N calibration images (default 128)",
    )
    group.add_argument(
        "--max-auc-drop", type=float, default=0.005, help="largest allowed ROC AUC drop (0.005)"
    )
    group.add_argument(
        "--max-f1-drop", type=float, default=0.01, help="largest allowed F1 drop (0.01)"
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fracturekit.export import export_onnx
    from fracturekit.predict import expand_inputs

    if args.int8:
        return _run_int8(args)
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
    Console(stderr=True).print(_summary(report))
    return 0


def _summary(report: ExportReport) -> str:
    """One line: the file, its input and output, and how closely it matched PyTorch."""
    c, h, w = report.input_shape
    images = f"{report.n_images} {'given' if report.check_source == 'images' else 'synthetic'}"
    batches = ", ".join(map(str, report.batch_sizes))
    head = f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset}, input "
    if report.task != "segment":
        return (
            f"{head}[N, {c}, {h}, {w}]); parity on {images} image(s) at batch sizes {batches}: "
            f"max |p_onnx - p_torch| = {report.max_abs_diff:.2e} (allowed {report.atol:g})"
        )
    if report.dynamic_spatial:
        shapes = f"[N, {c}, H, W] with H, W any multiple of 32 -> pixel logits [N, 1, H, W]"
    else:
        shapes = f"[N, {c}, {h}, {w}] (size fixed) -> pixel logits [N, 1, {h}, {w}]"
    sizes = ", ".join(f"{a}x{b}" for a, b in report.spatial_sizes)
    return (
        f"{head}{shapes}); parity on {images} image(s) at batch sizes {batches} and sizes "
        f"{sizes}: max |p_onnx - p_torch| = {report.max_abs_diff:.2e} (allowed "
        f"{report.atol:g}); masks at the stored threshold differ at "
        f"{100 * report.mask_disagreement:.4f}% of the pixels"
    )


def _run_int8(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fracturekit.quantize import export_int8

    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".int8.onnx")
    report = export_int8(
        args.checkpoint,
        out,
        calibration_images=args.calibration_images,
        validation_data=args.validation_images,
        n_calibration=args.calibration_size,
        max_auc_drop=args.max_auc_drop,
        max_f1_drop=args.max_f1_drop,
        opset=args.opset,
        overwrite=args.overwrite,
    )
    Console(stderr=True).print(
        f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, FP32 "
        f"{report.fp32_size_bytes / 1e6:.1f} MB), calibrated on {report.n_calibration} image(s) "
        f"of {report.calibration_source}; {report.summary()}"
    )
    return 0
