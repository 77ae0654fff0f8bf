"""Run the whole pipeline offline on generated data: synthesise cracks, fine-tune the embedded
ImageNet EfficientNet-Lite0, evaluate on a separate synthetic test set, and write a
self-contained report. Needs no download and no GPU; a few minutes on two CPU cores.

Writes OUT/data (training data), OUT/test (test data) and OUT/run (model.pt, metrics.json,
plots, report.html). Refuses to replace an earlier demo in OUT unless --overwrite is given.
"""

from __future__ import annotations

import argparse

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
    add_overwrite(parser, "an earlier demo in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fracturekit.demo import run_demo

    if args.n < 20 or args.n_test < 10:
        raise ValueError("--n must be >= 20 and --n-test >= 10 for a meaningful split")
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
    for stage, seconds in result.seconds.items():
        table.add_row(f"time: {stage}", f"{seconds:.1f} s", "")
    console = Console()
    console.print(table)
    console.print(f"checkpoint: {result.checkpoint}")
    console.print(f"report:     {result.report}")
    return 0
