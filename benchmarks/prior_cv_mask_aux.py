"""Decisions at 3 % cracks, cross-validated, for a classifier that also learns from the masks.

Asks whether the tile classifier ranks and decides better when CRACK500's masks supervise it
too: beside the class head, a 1x1 convolution on the last trunk activations (7 x 7 cells at
224 px) predicts which cells hold crack pixels (binary cross-entropy against the max-pooled
mask, ``--weight`` times the class loss; ``no_crack`` tiles have empty masks). The set-up is
otherwise the default classifier's (EfficientNet-Lite0 with its embedded weights, the last
three blocks trained on cached activations of the frozen prefix, AdamW lr 5e-4, cosine, 15
epochs, batch 32, early stop after 5 epochs on the validation loss), written here as a plain
loop rather than a library option because it is an experiment: ``--weight 0`` is the same loop
without the mask term (the control).

Takes the folds of ``benchmarks/prior_cv.py --out DIR`` (the default classifier, trained
already): each fold's training and validation tiles are those of its run (``splits.csv``), its
test tiles those of its ``manifest.csv``. Three image scores are decided at 3 %: the class
probability, the most probable cell, and their mean; each at the threshold
``calibration.threshold_at_prior`` picks from the fold's validation scores (the rule of
``--prior``), over ``prior_cv.py``'s view (every ``no_crack`` tile, 3 % cracks drawn
``--draws`` times).

Measured (README, "Cross-validated: every tile held out once"; 2-core AMD EPYC): with the mask
term, the mean of both scores reaches pooled ROC AUC 0.960 and F1 0.699 at ``--prior 0.03``
(best in hindsight 0.745); without it (``--weight 0``) the class probability gives 0.946 and
0.686 (0.733). Target F1 >= 0.75: not met.

Run:
    .venv/bin/python benchmarks/prior_cv_mask_aux.py --cv DIR [--weight 1] [--out OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from _common import SHARED_DATA, start_clock
from prior_cv import (
    best_prior_line,
    cv_parser,
    decided_rows,
    prior_cells,
    prior_columns,
    score_summary,
    trained_folds,
)

BACKBONE, TRAIN_LAST, IMG = "efficientnet_lite0", 3, 224
EPOCHS, BATCH, LR, WEIGHT_DECAY, PATIENCE = 15, 32, 5e-4, 1e-4, 5
SCORES = ("class", "cell", "mean")


def fold_tiles(fold: Path) -> dict[str, list[dict]]:
    """The fold's training and validation tiles (its run's ``splits.csv``) and test tiles."""
    with (fold / "run" / "splits.csv").open(newline="") as fh:
        split = list(csv.DictReader(fh))
    with (fold / "manifest.csv").open(newline="") as fh:
        test = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    return {
        "train": [r for r in split if r["split"] == "train"],
        "val": [r for r in split if r["split"] == "val"],
        "test": test,
    }


def cache_split(model, start: int, rows: list[dict], masks: Path, transform) -> tuple:
    """Frozen-prefix activations, masks (1 x H x W) and labels of ``rows``."""
    import torch

    from fracturekit.io import read_image, read_mask

    feats, cells, labels = [], [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), BATCH):
            xs, ms = [], []
            for r in rows[i : i + BATCH]:
                image = read_image(r["path"])
                mask_file = masks / (Path(r["path"]).stem + ".png")
                if r["label"] == "crack":
                    if not mask_file.is_file():
                        raise SystemExit(f"{r['path']}: crack tile without a mask ({mask_file})")
                    mask = read_mask(mask_file, size=image.size)
                else:
                    mask = np.zeros((image.height, image.width), bool)
                x, m = transform(image, mask)
                xs.append(x)
                ms.append(m)
            feats.append(model.forward_until(torch.stack(xs), start))
            cells.append(torch.stack(ms))
            labels += [r["label"] == "crack" for r in rows[i : i + BATCH]]
    return torch.cat(feats), torch.cat(cells), torch.tensor(labels, dtype=torch.int64)


def train_fold(fold: Path, args: argparse.Namespace) -> tuple[dict[str, dict], float]:
    """Train the fold's classifier with the mask term; validation and test scores per score."""
    import torch
    from torch import nn

    from fracturekit.data import build_transforms
    from fracturekit.models import apply_freeze, build_model, data_config

    torch.manual_seed(args.seed)
    tiles = fold_tiles(fold)
    model = build_model(BACKBONE, 2, dropout=0.2)
    apply_freeze(model, "train-last", TRAIN_LAST)
    blocks = model.blocks()
    start = len(blocks) - TRAIN_LAST
    cache_file = args.out / f"{fold.name}_cache.pt"
    if cache_file.is_file():
        cached = torch.load(cache_file, weights_only=True)
    else:
        dc = data_config(BACKBONE)
        transform = build_transforms(IMG, dc["mean"], dc["std"])
        cached = [cache_split(model, start, tiles[s], args.masks, transform) for s in tiles]
        torch.save(cached, cache_file)
    (tr_f, tr_m, tr_y), (va_f, _, va_y), (te_f, _, te_y) = cached

    t0 = time.perf_counter()
    cell_head = nn.Conv2d(model.num_features, 1, 1)
    params = [p for p in model.parameters() if p.requires_grad] + list(cell_head.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, EPOCHS * ((len(tr_y) + BATCH - 1) // BATCH)
    )
    ce = nn.CrossEntropyLoss()

    def forward(f):
        for block in blocks[start:]:
            f = block(f)
        return model.head(model.pool(f)), cell_head(f)

    def scores(f):
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(f), 64):
                logits, cells = forward(f[i : i + 64])
                out.append((logits, torch.sigmoid(cells).flatten(1).amax(1)))
        return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])

    best, state, stale = None, None, 0
    for _ in range(EPOCHS):
        model.train()
        for idx in torch.randperm(len(tr_y)).split(BATCH):
            logits, cells = forward(tr_f[idx])
            loss = ce(logits, tr_y[idx])
            if args.weight:
                target = nn.functional.adaptive_max_pool2d(tr_m[idx], cells.shape[-2:])
                loss = loss + args.weight * nn.functional.binary_cross_entropy_with_logits(
                    cells, target
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val_loss = float(ce(scores(va_f)[0], va_y))
        if best is None or val_loss < best - 1e-7:
            best, stale = val_loss, 0
            state = [{k: t.clone() for k, t in m.state_dict().items()} for m in (model, cell_head)]
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    model.load_state_dict(state[0])
    cell_head.load_state_dict(state[1])
    seconds = time.perf_counter() - t0

    out = {}
    for split, feats, labels in (("val", va_f, va_y), ("test", te_f, te_y)):
        logits, cell = scores(feats)
        p_class = logits.softmax(1)[:, 1]
        for name, s in zip(SCORES, (p_class, cell, (p_class + cell) / 2), strict=True):
            out.setdefault(name, {})[split] = (labels.numpy(), s.numpy())
    out["test_rows"] = tiles["test"]
    return out, seconds


def main() -> None:
    parser = cv_parser(__doc__, "prior_cv.py --out DIR (classifier)")
    parser.add_argument("--masks", type=Path, default=SHARED_DATA / "crack500_patches" / "masks")
    parser.add_argument("--out", type=Path, help="results (default CV/mask_aux_w<weight>)")
    parser.add_argument("--weight", type=float, default=1.0)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    folds = trained_folds(args.cv, "splits.csv")
    if not args.masks.is_dir():
        raise SystemExit(f"{args.masks}: CRACK500 masks not found (pass --masks)")
    args.out = args.out or args.cv / f"mask_aux_w{args.weight:g}"
    args.out.mkdir(parents=True, exist_ok=True)
    clock = start_clock()
    rows: dict[str, list[dict]] = {name: [] for name in SCORES}
    seconds = []
    for fold in folds:
        out, s = train_fold(fold, args)
        seconds.append(round(s, 1))
        test = [(r["path"], r["label"]) for r in out["test_rows"]]
        for name in SCORES:
            vy, vs = out[name]["val"]
            rows[name] += decided_rows(fold.name, vy, vs, test, out[name]["test"][1], args.prior)

    con = Console(width=140)
    table = Table(
        title=f"{len(folds)} folds, mask term weight {args.weight:g}; every no_crack tile + "
        f"{args.prior:.0%} cracks, {args.draws} draws"
    )
    for col in ("image score", *prior_columns(args.prior)):
        table.add_column(col, justify="right")
    summary: dict = {"weight": args.weight, "train_seconds": seconds}
    for name in SCORES:
        sv = summary[name] = score_summary(rows[name], args.prior, args.draws, args.seed)
        table.add_row(name, *prior_cells(sv))
        with (args.out / f"scores_{name}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, list(rows[name][0]))
            writer.writeheader()
            writer.writerows(rows[name])
    con.print(table)
    summary["machine"] = clock.line()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    con.print(f"training {min(seconds):.0f}-{max(seconds):.0f} s a fold (cache excluded); "
              f"{summary['machine']}; written {args.out / 'summary.json'}")  # fmt: skip
    con.print(best_prior_line({n: summary[n] for n in SCORES}, args.prior))


if __name__ == "__main__":
    main()
