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

import csv
from pathlib import Path

from _common import SHARED_DATA, Benchmark, Row, main, metric_rows


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


def _rows(metrics: dict, result, n_train: int) -> list[Row]:
    return [
        ("train / test tiles", f"{n_train} / {metrics['n']}", ""),
        *metric_rows(
            metrics,
            [
                ("F1 (crack), test", "f1"),
                ("ROC AUC, test", "roc_auc"),
                ("accuracy, test", "accuracy"),
            ],
        ),
        ("threshold (from validation)", f"{metrics['threshold']:.3f}", ""),
    ]


def _config_line(args, cfg, overrides: dict) -> str:
    return (
        f"config: {args.config} {overrides or ''}; backbone {cfg.backbone}, freeze {cfg.freeze}, "
        f"augment {cfg.augment}, cache_views {cfg.cache_views}, tta {cfg.tta}, img_size "
        f"{cfg.img_size or 'default'}"
    )


CRACK500 = Benchmark(
    description=__doc__.splitlines()[0],
    title="CRACK500 patches, split by source photo (seed {seed})",
    name="CRACK500 patches",
    default_data=SHARED_DATA / "crack500_patches",
    marker="patches.csv",
    write_manifest=write_manifest,
    limit_flag="--limit-photos",
    limit_help="keep that many source photos (reduced run)",
    rows=_rows,
    config_line=_config_line,
    target="F1 >= 0.97 and training < 180 s",
    met=lambda metrics, train_s: metrics["f1"] >= 0.97 and train_s < 180,
)


if __name__ == "__main__":
    main(CRACK500)
