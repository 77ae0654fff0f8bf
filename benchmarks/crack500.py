"""CRACK500 patches: train the recommended set-up, evaluate on held-out source photos.

The 2,000 224-px tiles of ``shared/data/crack500_patches`` come from 150 pavement photos;
tiles of one photo are correlated, so the 80/20 train/test split is made by ``source_image``
(stratified group split, fixed seed) through a CSV manifest written into the output folder.
Validation (early stopping, threshold, temperature) is carved, again by source photo, from the
training 80%. The test 20% is touched once, by ``evaluate_checkpoint``.

Targets (issue "Training and evaluation"): F1 (crack) >= 0.97 with the default backbone and
training under 3 minutes on 2 CPU cores.

Run:
    .venv/bin/python benchmarks/crack500.py [--out DIR] [--config default] [--limit-photos N]
        [--set key=value ...]

``--limit-photos`` keeps only that many source photos (a reduced check that the script works);
``--set`` overrides config keys (``--set epochs=5 --set cache_views=1``).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "crack500_patches"


def write_manifest(root: Path, out: Path, *, seed: int, test_fraction: float, limit: int | None):
    """``manifest.csv`` (path,label,group,split): a stratified split by source photo."""
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    with (root / "patches.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    photos = sorted({r["source_image"] for r in rows})
    if limit:
        keep = set(np.random.default_rng(seed).permutation(photos)[:limit].tolist())
        rows = [r for r in rows if r["source_image"] in keep]
    folds = round(1 / test_fraction)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = [r["label"] for r in rows]
    groups = [r["source_image"] for r in rows]
    _, test_idx = next(splitter.split(np.zeros(len(rows)), labels, groups))
    test = set(test_idx.tolist())
    path = out / "manifest.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group", "split"])
        for i, r in enumerate(rows):
            image = next((root / r["label"]).glob(r["patch"] + ".*"))
            writer.writerow(
                [image, r["label"], r["source_image"], "test" if i in test else "train"]
            )
    return path, len(rows) - len(test), len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temp dir)")
    parser.add_argument("--config", default="default", help="config file or packaged name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--limit-photos", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from fracturekit.config import resolve_config
    from fracturekit.evaluate import evaluate_checkpoint
    from fracturekit.train import train

    if not (args.data / "patches.csv").is_file():
        raise SystemExit(f"{args.data}: CRACK500 patches not found (pass --data)")
    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="crack500-")
        out = Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    manifest, n_train, n_test = write_manifest(
        args.data, out, seed=args.seed, test_fraction=args.test_fraction, limit=args.limit_photos
    )
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = resolve_config(
        {"data": str(manifest), "seed": args.seed, "val_fraction": 0.2, **overrides}, args.config
    )
    load = os.getloadavg()
    t0 = time.perf_counter()
    result = train(cfg, out / "run", progress=not args.no_progress, overwrite=True)
    train_s = time.perf_counter() - t0
    metrics = evaluate_checkpoint(
        result.checkpoint, manifest, out / "eval", split="test", layout="csv", seed=args.seed
    )
    load_after = os.getloadavg()

    ci = metrics["ci95"]
    table = Table(title=f"CRACK500 patches, split by source photo (seed {args.seed})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_row("train / test tiles", f"{n_train} / {metrics['n']}", "")
    table.add_row("F1 (crack), test", f"{metrics['f1']:.4f}", "{:.4f}-{:.4f}".format(*ci["f1"]))
    table.add_row(
        "ROC AUC, test", f"{metrics['roc_auc']:.4f}", "{:.4f}-{:.4f}".format(*ci["roc_auc"])
    )
    table.add_row("accuracy, test", f"{metrics['accuracy']:.4f}", "")
    table.add_row("threshold (from validation)", f"{metrics['threshold']:.3f}", "")
    table.add_row("training time (train() call)", f"{train_s:.1f} s", "")
    caches = result.metrics.get("cache_seconds") or {}
    table.add_row("  of which caching", f"{sum(caches.values()):.1f} s", "")
    table.add_row(
        "epochs run (best)", f"{len(result.history)} ({result.metrics['best_epoch']})", ""
    )
    table.add_row("mode", result.mode, "")
    con = Console(width=160)
    con.print(table)
    con.print(
        f"config: {args.config} {overrides or ''}; backbone {cfg.backbone}, freeze {cfg.freeze}, "
        f"augment {cfg.augment}, cache_views {cfg.cache_views}, tta {cfg.tta}, img_size "
        f"{cfg.img_size or 'default'}"
    )
    con.print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average before {load[0]:.2f}, after {load_after[0]:.2f}"
    )
    verdict = "met" if metrics["f1"] >= 0.97 and train_s < 180 else "NOT met"
    con.print(f"target F1 >= 0.97 and training < 180 s: {verdict}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
