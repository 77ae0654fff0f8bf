"""Run the whole pipeline offline on generated data: synthesise cracks, fine-tune the embedded
ImageNet EfficientNet-Lite0, evaluate on a separate synthetic test set, and write a
self-contained report. Then segment the same images: a U-Net over the same encoder trained on
their exact masks, its pixel figures on the test set, and the mean crack width per image from
predicted masks against the true masks. Needs no download and no GPU; a few minutes on two CPU
cores.

Writes OUT/data (training data), OUT/test (test data), OUT/run (model.pt, metrics.json, plots,
report.html) and OUT/segment (the segmenter's model.pt, metrics.json with `segmentation` and
`width_check`, IoU histogram, overlays, widths.csv, width_check.png, report.html; not with
--skip-segment). Refuses to replace an earlier demo in OUT unless --overwrite is given.
"""

from __future__ import annotations

import argparse
from typing import Any

from fracturekit.cli._options import add_overwrite
from fracturekit.contracts import SYNTH_KINDS


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="fracturekit-demo", help="demo folder (default: %(default)s)"
    )
    parser.add_argument(
        "--n", type=int, default=600, help="training+validation images (default: %(default)s)"
    )
    parser.add_argument(
        "--n-test",
        type=int,
        default=300,
        help="images in the separate test set (default: %(default)s)",
    )
    parser.add_argument(
        "--size", type=int, default=224, help="side of generated images, px (default: %(default)s)"
    )
    parser.add_argument(
        "--img-size", type=int, default=192, help="network input size, px (default: %(default)s)"
    )
    parser.add_argument(
        "--kind",
        default="concrete",
        choices=SYNTH_KINDS,
        help="surface texture of the generated images (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data, split and training")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    parser.add_argument(
        "--skip-segment",
        action="store_true",
        help="leave out the segmentation stage (U-Net, pixel figures, width check)",
    )
    parser.add_argument(
        "--seg-epochs", type=int, default=None, help="override the segmenter's epoch count"
    )
    parser.add_argument(
        "--seg-test",
        type=int,
        default=60,
        help="test images the segmenter is evaluated on, half of each class; 0: the whole "
        "test set (default: %(default)s)",
    )
    add_overwrite(parser, "an earlier demo in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fracturekit.demo import run_demo

    if args.n < 20 or args.n_test < 10:
        raise ValueError("--n must be >= 20 and --n-test >= 10 for a meaningful split")
    if args.seg_test < 0 or (args.seg_epochs is not None and args.seg_epochs < 1):
        raise ValueError("--seg-test must be >= 0 and --seg-epochs >= 1")
    result = run_demo(
        args.out,
        n_train=args.n,
        n_test=args.n_test,
        size=args.size,
        img_size=args.img_size,
        kind=args.kind,
        seed=args.seed,
        epochs=args.epochs,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        segment=not args.skip_segment,
        seg_epochs=args.seg_epochs,
        seg_test=args.seg_test or None,
    )
    m = result.metrics
    table = Table(title=f"fracturekit demo: test set of {m['n']} synthetic images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    ci = m.get("ci95") or {}
    for key in ("f1", "roc_auc", "accuracy", "balanced_accuracy", "precision", "recall", "ece"):
        value = m.get(key)
        lo_hi = ci.get(key)
        table.add_row(
            key,
            "n/a" if value is None else f"{value:.4f}",
            f"[{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]" if lo_hi else "",
        )
    table.add_row("threshold", f"{m['threshold']:.3f}", "")
    if result.segment is not None:
        _segment_rows(table, result.segment.metrics)
    for stage, seconds in result.seconds.items():
        table.add_row(f"time: {stage}", f"{seconds:.1f} s", "")
    console = Console()
    console.print(table)
    console.print(f"checkpoint: {result.checkpoint}")
    console.print(f"report:     {result.report}")
    if result.segment is not None:
        console.print(f"segmenter:  {result.segment.checkpoint}")
        console.print(f"report:     {result.segment.report}")
    return 0


def _segment_rows(table: Any, metrics: dict[str, Any]) -> None:
    """The segmenter's pixel figures, its image-level F1 and the width check."""
    seg = metrics.get("segmentation") or {}
    table.add_row("segment: test images", str(metrics.get("n")), "")
    for key in ("pixel_f1", "pixel_f1_tol2", "iou", "miou"):
        value = seg.get(key)
        table.add_row(f"segment: {key}", "n/a" if value is None else f"{value:.4f}", "")
    f1, ci = metrics.get("f1"), (metrics.get("ci95") or {}).get("f1")
    table.add_row(
        "segment: image f1",
        "n/a" if f1 is None else f"{f1:.4f}",
        f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "",
    )
    widths = metrics.get("width_check") or {}
    if widths.get("mae_px") is not None:
        table.add_row(
            "segment: width MAE",
            f"{widths['mae_px']:.2f} px",
            f"{widths['measured']} of {widths['images']} images",
        )
