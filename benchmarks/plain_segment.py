"""The plain segmentation reference: a ~100-line smp U-Net loop, scored like fracturekit's.

segmentation-models-pytorch U-Net on the embedded EfficientNet-Lite0 encoder (through
``fracturekit.models.build_segmenter``, the only offline source of its ImageNet weights), BCE +
Dice, mirrors and 90-degree turns, AdamW with a one-cycle schedule, 3 epochs on whole 224-px
tiles, everything trained, threshold 0.5, min_area 0, no validation. Same manifest (split by
source photo) and same scoring (:func:`crack500_segment.score_segmenter`) as
``crack500_segment.py``.

Run:
    .venv/bin/python benchmarks/plain_segment.py --out DIR [--epochs 3] [--limit-photos N]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from _common import SHARED_DATA
from crack500_segment import score_segmenter, test_rows, write_manifest

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # EfficientNet-Lite's normalisation


def _tensor(image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(image.convert("RGB").resize((224, 224)), np.float32) / 255)
    return ((x - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)


def _load(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    from fracturekit.io import read_image, read_mask

    xs, ms = [], []
    for r in rows:
        image = read_image(r["path"])
        mask = read_mask(r["mask"], size=(224, 224)) if r["mask"] else np.zeros((224, 224), bool)
        xs.append(_tensor(image))
        ms.append(torch.from_numpy(mask)[None].float())
    return torch.stack(xs), torch.stack(ms)


def _augment(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.rand(()) < 0.5:
        x, m = x.flip(-1), m.flip(-1)
    if torch.rand(()) < 0.5:
        x, m = x.flip(-2), m.flip(-2)
    k = int(torch.randint(4, ()))
    return torch.rot90(x, k, (-2, -1)), torch.rot90(m, k, (-2, -1))


def train_plain(rows: list[dict], epochs: int, batch: int = 16, lr: float = 1e-3):
    from segmentation_models_pytorch.losses import DiceLoss

    from fracturekit.models import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter("efficientnet_lite0", pretrained=True).train()
    x_all, m_all = _load(rows)
    bce, dice = torch.nn.BCEWithLogitsLoss(), DiceLoss("binary", from_logits=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(rows) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(rows))
        for i in range(0, len(rows), batch):
            idx = order[i : i + batch]
            pairs = [_augment(x_all[j], m_all[j]) for j in idx]
            x = torch.stack([p[0] for p in pairs])
            m = torch.stack([p[1] for p in pairs])
            logits = model(x)
            loss = bce(logits, m) + dice(logits, m)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - t0
    return model.eval(), seconds, epochs * len(rows) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "crack500_patches")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-photos", dest="limit", type=int, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest, _, _ = write_manifest(
        args.data, args.out, seed=0, test_fraction=0.2, limit=args.limit
    )
    with manifest.open(newline="") as fh:
        train_rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    load = os.getloadavg()[0]
    model, seconds, rate = train_plain(train_rows, args.epochs)

    def maps(images):
        with torch.inference_mode():
            prob = torch.sigmoid(model(torch.stack([_tensor(im) for im in images])))
        return [p[0].numpy() for p in prob]

    figures = {
        "train_seconds": round(seconds, 1),
        "img_per_s": round(rate, 2),
        "train_tiles": len(train_rows),
        "test": score_segmenter(maps, test_rows(manifest), 0.5, 0.0),
        "load_average_before": load,
        "cores": os.cpu_count(),
    }
    text = json.dumps(figures, indent=2)
    (args.out / "plain_figures.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
