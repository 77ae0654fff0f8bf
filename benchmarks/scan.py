"""Tiled scanning: agreement with the masks on whole CRACK500 photos, and memory on a huge image.

1. **CRACK500 photos** (``shared/data/crack500``: 448 px photos with masks). The pavement model
   of ``benchmarks/localisation.py`` (trained here the same way unless ``--checkpoint``) scans
   every photo whose original photo was held out of its training split. Tiles are labelled from
   the mask like the CRACK500 tiles: crack when >= 0.5 % of the tile's pixels are crack, no
   crack when none is, left out in between. Reported: tile-level precision, recall and F1 at the
   checkpoint's threshold; pixel-level agreement of the stitched map (bilinear between cell
   centres, at full resolution) with the mask: pixel AUC (mean over photos) and IoU of
   ``map >= threshold`` with the mask dilated by 8 px; and the cell-level IoU (a cell is crack
   when >= 0.5 % of its pixels are), the best agreement a map at cell resolution can have.
2. **Memory**: a 20,000 x 20,000 RGB image is generated strip by strip into a tiled, Deflate-
   compressed TIFF (never whole in memory) and scanned as ``fracturekit scan`` does (allocator
   setting included) in a child process; its peak resident memory (``VmHWM``) and wall time are reported. A tiny random
   ``simple_cnn`` at 64 px input (tiles of 256 px resized to it) is enough to measure memory;
   ``--memory-checkpoint`` scans with another model.

Run:
    .venv/bin/python benchmarks/scan.py --out runs/bench_scan \\
        --checkpoint runs/bench_loc_ft3/pavement/model.pt \\
        --manifest runs/bench_loc_ft3/manifest.csv
Reduced check (a 4,000 px image, 10 photos):
    .venv/bin/python benchmarks/scan.py --out runs/bench_scan_small --big 4000 --photos 10
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_parser, start_clock, target_line  # noqa: E402 - found on the path

CHILD = r"""
import json, sys, time
from fracturekit._alloc import keep_freed_memory
from fracturekit.predict import Predictor
from fracturekit.scan import scan_image
ckpt, image, out, tile, stride = sys.argv[1:6]
keep_freed_memory()  # as `fracturekit scan` does
t0 = time.perf_counter()
r = scan_image(Predictor.from_checkpoint(ckpt), image, tile=int(tile), stride=int(stride),
               batch_size=32, out=out, overwrite=True)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - t0, "vmhwm_kib": hwm, "tiles": r.n_tiles,
                  "map": list(r.probability.shape), "streamed": r.streamed,
                  "regions": len(r.regions)}))
"""


def write_big_tiff(path: Path, side: int, seed: int = 0, height: int | None = None) -> float:
    """A ``side`` x ``side`` (or ``height``) RGB concrete-like texture with dark cracks, written
    tile by tile."""
    import numpy as np
    import tifffile

    tile = 512
    rng = np.random.default_rng(seed)
    # Cracks: wavy lines y = a*x + b + amp*sin(x / period), 2-8 px wide.
    cracks = [
        (rng.uniform(-0.5, 0.5), rng.uniform(0, side), rng.uniform(10, 80),
         rng.uniform(100, 600), rng.uniform(1, 4))
        for _ in range(12)
    ]  # fmt: skip

    rows = side if height is None else height

    def tiles():
        for ty in range(0, rows, tile):
            for tx in range(0, side, tile):
                h, w = min(tile, rows - ty), min(tile, side - tx)
                local = np.random.default_rng([seed, ty, tx])
                base = 150 + local.normal(0, 12, (tile, tile)).astype(np.float32)
                yy, xx = np.mgrid[ty : ty + tile, tx : tx + tile].astype(np.float32)
                for a, b, amp, period, half in cracks:
                    d = np.abs(yy - (a * xx + b + amp * np.sin(xx / period)))
                    base = np.where(d <= half, base * 0.35, base)
                rgb = np.clip(base, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
                if h < tile or w < tile:
                    rgb[h:, :] = 0
                    rgb[:, w:] = 0
                yield rgb

    t0 = time.perf_counter()
    tifffile.imwrite(
        path,
        tiles(),
        shape=(rows, side, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression="zlib",
        compressionargs={"level": 1},
    )
    return time.perf_counter() - t0


def tiny_checkpoint(path: Path) -> Path:
    import warnings

    import torch

    from fracturekit.models import build_model, save_checkpoint

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("simple_cnn", 2, pretrained=False)
    meta = {"img_size": 64, "classes": ["crack", "no_crack"], "positive": "crack"}
    return save_checkpoint(path, model, meta)


def photos_part(args, con) -> None:
    import numpy as np
    from rich.table import Table
    from scipy import ndimage as ndi
    from sklearn.metrics import roc_auc_score

    from fracturekit.io import read_mask
    from fracturekit.predict import Predictor
    from fracturekit.scan import scan_image, upsample_map
    from localisation import photo_id, train_run, write_pavement_manifest

    ckpt, manifest = args.checkpoint, args.manifest
    if ckpt is None:
        manifest = write_pavement_manifest(args.data / "crack500_patches", args.out, seed=0)
        ckpt = train_run(
            manifest,
            args.out / "pavement",
            "default",
            ["freeze=train-last", "train_last=3"],
            {"val_fraction": 0.2},
        )
    with open(manifest, newline="") as fh:
        train_photos = {r["group"] for r in csv.DictReader(fh) if r["split"] == "train"}
    photos = sorted(
        p
        for p in (args.data / "crack500" / "crack").iterdir()
        if photo_id(p.name) not in train_photos
    )
    if args.photos:
        photos = photos[: args.photos]
    predictor = Predictor.from_checkpoint(ckpt)
    thr = predictor.threshold
    table = Table(title=f"CRACK500 whole photos held out of training ({len(photos)})")
    for col in ("stride", "tiles (crack/none)", "precision", "recall", "tile F1", "pixel AUC",
                "IoU (mask + 8 px)", "cell IoU", "s/photo"):  # fmt: skip
        table.add_column(col, justify="right")
    for stride in args.strides:
        tp = fp = fn = pos = neg = 0
        aucs, inter, union, c_inter, c_union = [], 0, 0, 0, 0
        t0 = time.perf_counter()
        for photo in photos:
            result = scan_image(
                predictor, photo, stride=stride, out=args.out / "photos" / f"{photo.stem}_{stride}",
                overwrite=True,
            )  # fmt: skip
            mask = read_mask(args.data / "crack500" / "masks" / f"{photo.stem}.png")
            h, w = mask.shape
            for x, y, tw, th, p in result.tiles:
                frac = mask[int(y) : int(y + th), int(x) : int(x + tw)].mean()
                if 0 < frac < 0.005:
                    continue
                is_crack, said = frac >= 0.005, p >= thr
                pos += is_crack
                neg += not is_crack
                tp += is_crack and said
                fp += (not is_crack) and said
                fn += is_crack and not said
            full = upsample_map(result.probability, result.cell, (w, h))
            if mask.any() and not mask.all():
                aucs.append(roc_auc_score(mask.ravel(), full.ravel()))
            grown = ndi.distance_transform_edt(~mask) <= 8
            found = full >= thr
            inter += int((found & grown).sum())
            union += int((found | grown).sum())
            rows, cols = result.probability.shape
            cells = np.zeros((rows, cols), bool)
            for i in range(rows):
                for j in range(cols):
                    block = mask[i * stride : (i + 1) * stride, j * stride : (j + 1) * stride]
                    cells[i, j] = block.size > 0 and block.mean() >= 0.005
            said_cells = result.probability >= thr
            c_inter += int((cells & said_cells).sum())
            c_union += int((cells | said_cells).sum())
        per = (time.perf_counter() - t0) / max(len(photos), 1)
        prec = tp / max(tp + fp, 1)
        rec = tp / max(tp + fn, 1)
        f1 = 2 * prec * rec / max(prec + rec, 1e-12)
        table.add_row(
            str(stride),
            f"{pos}/{neg}",
            f"{prec:.3f}",
            f"{rec:.3f}",
            f"{f1:.3f}",
            f"{np.mean(aucs):.3f}",
            f"{inter / max(union, 1):.3f}",
            f"{c_inter / max(c_union, 1):.3f}",
            f"{per:.2f}",
        )
    con.print(table)
    con.print(f"checkpoint {ckpt} (threshold {thr:.3f}); tile {predictor.img_size} px")


def memory_part(args, con) -> None:
    from rich.table import Table

    big = args.out / f"big_{args.big}.tif"
    if not big.exists():
        seconds = write_big_tiff(big, args.big)
        con.print(f"wrote {big} ({big.stat().st_size / 2**20:.0f} MiB) in {seconds:.0f} s")
    ckpt = args.memory_checkpoint or tiny_checkpoint(args.out / "tiny.pt")
    tile, stride = args.memory_tile, args.memory_stride
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ckpt), str(big), str(args.out / "big_scan"), str(tile),
         str(stride)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    table = Table(title=f"Scanning a {args.big} x {args.big} RGB image")
    for col in ("model", "tile/stride", "tiles", "map", "read as", "seconds", "peak RSS"):
        table.add_column(col, justify="right")
    table.add_row(
        str(ckpt.name),
        f"{tile}/{stride}",
        str(stats["tiles"]),
        "x".join(map(str, stats["map"])),
        stats["streamed"],
        f"{stats['seconds']:.0f}",
        f"{stats['vmhwm_kib'] / 2**20:.2f} GiB",
    )
    con.print(table)
    con.print(target_line("peak RSS < 2 GiB", stats["vmhwm_kib"] < 2 * 2**20))


def main() -> None:
    parser = bench_parser(__doc__, Path("runs/bench_scan"))
    parser.add_argument("--checkpoint", type=Path, help="pavement model (default: train one)")
    parser.add_argument("--manifest", type=Path, help="its manifest.csv (held-out photos)")
    parser.add_argument("--photos", type=int, help="at most N photos")
    parser.add_argument("--strides", type=int, nargs="+", default=[112, 56])
    parser.add_argument("--big", type=int, default=20000, help="side of the generated image")
    parser.add_argument("--memory-checkpoint", type=Path)
    parser.add_argument("--memory-tile", type=int, default=256)
    parser.add_argument("--memory-stride", type=int, default=128)
    parser.add_argument("--parts", default="photos,memory")
    args = parser.parse_args()
    if (args.checkpoint is None) != (args.manifest is None):
        raise SystemExit("give --checkpoint and --manifest together")

    from rich.console import Console

    con = Console(width=150)
    args.out.mkdir(parents=True, exist_ok=True)
    clock = start_clock()
    parts = args.parts.split(",")
    if "photos" in parts:
        photos_part(args, con)
    if "memory" in parts:
        memory_part(args, con)
    con.print(clock.line())


if __name__ == "__main__":
    main()
