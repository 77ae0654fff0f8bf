"""Training speed: fracturekit's training modes beside a plain timm + PyTorch loop, same data.

``efficientnet_lite0`` at 224 px, batch 32, float32, on N images (CRACK500 tiles when
``shared/data`` is there, else generated images), in one process, one after the other:

* frozen trunk, head only — fracturekit computes the trunk once and trains the head on cached
  features (``--freeze all-but-head --augment none``); the plain loop recomputes the frozen
  trunk every epoch, as a straightforward loop does.
* last stage — the last stage and the 1x1 head conv train (``--freeze train-last --train-last
  2``): fracturekit cached (no augmentation) and end to end with augmentation; the plain loop
  runs the whole network every epoch.
* full fine-tuning (``--freeze none``), end to end with augmentation.

Images/s counts training images processed per second of training, over all epochs, including
fracturekit's one-off caching pass (validation off in both, so the figures compare the same
work). The plain loop gets the same augmentation as the fracturekit row it stands beside (none,
or flips + rotation/shift/zoom + brightness/contrast), in NCHW memory as a plain loop is. Targets (issue "Training and evaluation"): ours no slower than the plain loop, and the
cached path at least 10x faster than recomputing the frozen trunk every epoch.

Run:
    .venv/bin/python benchmarks/train_speed.py [--n 128] [--epochs 10] [--ft-epochs 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "crack500_patches"


def make_images(root: Path, n: int) -> Path:
    """``root/{crack,no_crack}/`` with n images: CRACK500 tiles (symlinks) or generated ones."""
    import numpy as np
    from PIL import Image

    for k, name in enumerate(("crack", "no_crack")):
        (root / name).mkdir(parents=True, exist_ok=True)
        src = sorted((SHARED / name).glob("*.jpg"))[: n // 2] if SHARED.is_dir() else []
        for i in range(n // 2):
            if i < len(src):
                (root / name / src[i].name).symlink_to(src[i])
            else:
                rng = np.random.default_rng(i * 2 + k)
                arr = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / name / f"gen{i}.jpg", quality=90)
    return root


# ---- the plain loop: what one writes with timm and PyTorch in 40 lines -----------------------
def plain_loop(root: Path, mode: str, epochs: int, augment: bool, batch_size: int = 32) -> float:
    """Train ``tf_efficientnet_lite0``; returns training images per second."""
    import timm
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    class Folder(Dataset):
        def __init__(self, root, tf):
            self.items = [(p, c) for c, d in enumerate(sorted(root.iterdir())) for p in d.iterdir()]
            self.tf = tf

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            path, label = self.items[i]
            return self.tf(Image.open(path).convert("RGB")), label

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2)
    trainable = {
        "frozen": ["classifier"],
        "last-stage": ["blocks.6", "conv_head", "bn2", "classifier"],
        "full": [""],
    }[mode]
    for name, p in model.named_parameters():
        p.requires_grad = any(name.startswith(t) for t in trainable)
    aug = [transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(),
           transforms.RandomAffine(10, (0.1, 0.1), (0.9, 1.1)),
           transforms.ColorJitter(0.2, 0.2)] if augment else []  # fmt: skip
    tf = transforms.Compose(
        [transforms.Resize((224, 224)), *aug, transforms.ToTensor(),
         transforms.Normalize([0.5] * 3, [0.5] * 3)]
    )  # fmt: skip
    loader = DataLoader(Folder(root, tf), batch_size=batch_size, shuffle=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    seen, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
    return seen / (time.perf_counter() - t0)


# ---- fracturekit --------------------------------------------------------------------------------
def ours(root: Path, out: Path, epochs: int, **options) -> tuple[float, str, float]:
    """Images/s over the epochs (caching included), the mode, and the caching seconds."""
    from fracturekit.config import TrainConfig
    from fracturekit.train import train

    cfg = TrainConfig(
        data=str(root), val_fraction=0.0, epochs=epochs, batch_size=32, img_size=224,
        early_stop=None, calibrate=False, device="cpu", **options,
    )  # fmt: skip
    result = train(cfg, out, progress=False, overwrite=True)
    caching = sum((result.metrics.get("cache_seconds") or {}).values())
    seconds = caching + sum(r["seconds"] for r in result.history)
    n = len(result.history) and sum(1 for _ in (root / "crack").iterdir()) * 2
    return n * len(result.history) / seconds, result.mode, caching


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="training images")
    parser.add_argument("--epochs", type=int, default=10, help="epochs, frozen-trunk rows")
    parser.add_argument("--ft-epochs", type=int, default=2, help="epochs, fine-tuning rows")
    parser.add_argument("--only", choices=("frozen", "last-stage", "full"), action="append")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    warnings.simplefilter("ignore")
    con = Console(width=200)
    rows = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        root = make_images(Path(tmp) / "data", args.n)
        out = Path(tmp) / "run"
        n_eff = sum(1 for _ in root.rglob("*.jpg"))
        setups = [
            ("frozen", "frozen trunk, head only", args.epochs,
             dict(freeze="all-but-head", augment="none")),
            ("last-stage", "last stage, cached (no augmentation)", args.ft_epochs,
             dict(freeze="train-last", train_last=2, augment="none")),
            ("last-stage", "last stage, end to end (augment default)", args.ft_epochs,
             dict(freeze="train-last", train_last=2, augment="default")),
            ("full", "full fine-tuning (augment default)", args.ft_epochs,
             dict(freeze="none", augment="default")),
            ("full", "full fine-tuning, channels_last off", args.ft_epochs,
             dict(freeze="none", augment="default", channels_last=False)),
        ]  # fmt: skip
        plain: dict[tuple[str, bool], float] = {}
        for key, label, epochs, options in setups:
            if args.only and key not in args.only:
                continue
            # The plain loop gets the same augmentation as fracturekit's row (none or the
            # default set: flips, rotation/shift/zoom, brightness/contrast).
            augment = options["augment"] != "none"
            if (key, augment) not in plain:
                con.print(f"plain loop, {key}, augment {augment}, {epochs} epoch(s) ...")
                plain[key, augment] = plain_loop(root, key, epochs, augment)
            con.print(f"fracturekit, {label}, {epochs} epoch(s) ...")
            rate, mode, caching = ours(root, out, epochs, **options)
            rows.append((label, epochs, mode, rate, caching, plain[key, augment]))
    table = Table(title=f"efficientnet_lite0, 224 px, batch 32, {n_eff} images, float32, CPU")
    for col in ("set-up", "epochs", "fracturekit mode", "fracturekit img/s", "of which caching",
                "plain loop img/s", "ours / plain"):  # fmt: skip
        table.add_column(col, justify="left" if col == "set-up" else "right")
    for label, epochs, mode, rate, caching, base in rows:
        table.add_row(
            label, str(epochs), mode, f"{rate:.1f}", f"{caching:.1f} s" if caching else "",
            f"{base:.1f}", f"{rate / base:.2f}x",
        )  # fmt: skip
    con.print(table)
    con.print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average before {load[0]:.2f}, after "
        f"{os.getloadavg()[0]:.2f} (other processes slow every row alike)"
    )


if __name__ == "__main__":
    main()
