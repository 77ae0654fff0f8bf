"""Memory and time of scanning a huge image with a segmenter (``fracturekit scan``, task segment).

A ``--size`` x ``--size`` RGB concrete-like texture with dark cracks is written tile by tile into
a tiled, Deflate-compressed TIFF (``benchmarks/scan.py``'s ``write_big_tiff``: never whole in
memory), then scanned in a child process exactly as ``fracturekit scan`` does (allocator setting
included): windows of the model's input size, half a window apart, blended into a
full-resolution ``mask.png`` written band by band, the pieces outlined and measured. Reported:
the child's peak resident memory (``VmHWM``; also after loading the model, before the scan),
wall time, windows, the mask's pieces and crack share, and the band the stitch held.

The model is a random-initialised segmenter over EfficientNet-Lite0 at 224 px with the default
set-up's decoder (``unet_small``; ``--decoder unet`` for the full U-Net) unless
``--checkpoint`` names a trained segmentation checkpoint: its weights do not change the memory of
the stitch, only how many pieces the mask has to outline and measure. ``--bias`` sets the random
model's output bias (e.g. -1 for a sparser mask).

Target: peak RSS < 2 GiB for 20,000 x 20,000.

Run (the full benchmark, about 32,000 windows of 224 px):
    .venv/bin/python benchmarks/scan_segment_memory.py --out runs/bench_scan_segment
Reduced checks (a 3,000 px square; a strip of the full width, whose rows cost what the full
image's do):
    .venv/bin/python benchmarks/scan_segment_memory.py --out runs/bench_scan_segment_small \\
        --size 3000
    .venv/bin/python benchmarks/scan_segment_memory.py --out runs/bench_scan_segment_small \\
        --height 448
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GIB = 2**30

CHILD = r"""
import json, resource, sys, time
from fracturekit._alloc import keep_freed_memory
from fracturekit.predict import Predictor
from fracturekit.scan import scan_image

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))

ckpt, image, out, batch, device = sys.argv[1:6]
keep_freed_memory()  # as `fracturekit scan` does
predictor = Predictor.from_checkpoint(ckpt, device=device)
loaded = status("VmHWM:")
t0 = time.perf_counter()
r = scan_image(predictor, image, batch_size=int(batch), out=out, overwrite=True)
seconds = time.perf_counter() - t0
peak = max(status("VmHWM:"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps({
    "seconds": seconds, "peak_bytes": peak, "loaded_bytes": loaded, "tiles": r.n_tiles,
    "tile": r.tile, "stride": r.stride, "pieces": r.pieces, "crack_fraction": r.crack_fraction,
    "band_rows": r.band_rows, "held_rows": r.held_rows, "streamed": r.streamed,
    "mask_bytes": r.files["mask.png"].stat().st_size, "device": str(predictor.device),
}))
"""


def random_segmenter(path: Path, img_size: int, bias: float | None, decoder: str) -> Path:
    """A random-initialised segmenter over EfficientNet-Lite0 at ``img_size``."""
    import torch

    from fracturekit.models import build_segmenter, save_checkpoint

    torch.manual_seed(0)
    model = build_segmenter("efficientnet_lite0", decoder=decoder, pretrained=False).eval()
    if bias is not None:
        with torch.no_grad():
            model.net.segmentation_head[0].bias.fill_(bias)
    meta = {"img_size": img_size, "threshold": 0.5, "min_area": 20}
    return save_checkpoint(path, model, meta)


def scan_in_child(args: argparse.Namespace, ckpt: Path, image: Path) -> dict:
    out = args.out / f"scan_{image.stem}"
    cmd = [sys.executable, "-c", CHILD, str(ckpt), str(image), str(out), str(args.batch_size)]
    proc = subprocess.run([*cmd, args.device], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_scan_segment"))
    parser.add_argument("--size", type=int, default=20000, help="side of the generated image")
    parser.add_argument("--height", type=int, help="its height, if not --size (a strip)")
    parser.add_argument("--checkpoint", type=Path, help="a segmentation checkpoint")
    parser.add_argument("--img-size", type=int, default=224, help="the random model's input")
    parser.add_argument("--bias", type=float, help="the random model's output bias")
    parser.add_argument(
        "--decoder",
        default="unet_small",
        help="the random model's decoder (default: the default set-up's)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from scan import write_big_tiff

    con = Console(width=150)
    args.out.mkdir(parents=True, exist_ok=True)
    load0, t0 = os.getloadavg(), time.perf_counter()
    height = args.height or args.size
    image = args.out / f"big_{args.size}x{height}.tif"
    if not image.exists():
        seconds = write_big_tiff(image, args.size, height=height)
        con.print(f"wrote {image} ({image.stat().st_size / 2**20:.0f} MiB) in {seconds:.0f} s")
    ckpt = args.checkpoint or random_segmenter(
        args.out / f"{args.decoder}.pt", args.img_size, args.bias, args.decoder
    )
    stats = scan_in_child(args, ckpt, image)

    table = Table(title=f"Segmenting a {args.size} x {height} RGB tiled TIFF")
    columns = ("model", "tile/stride", "windows", "pieces", "crack", "band rows", "held rows",
               "device", "seconds", "RSS model", "peak RSS")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    table.add_row(
        ckpt.name,
        f"{stats['tile']}/{stats['stride']}",
        str(stats["tiles"]),
        str(stats["pieces"]),
        f"{stats['crack_fraction']:.2%}",
        str(stats["band_rows"]),
        str(stats["held_rows"]),
        stats["device"],
        f"{stats['seconds']:.0f}",
        f"{stats['loaded_bytes'] / GIB:.2f} GiB",
        f"{stats['peak_bytes'] / GIB:.2f} GiB",
    )
    con.print(table)
    verdict = "met" if stats["peak_bytes"] < 2 * GIB else "NOT met"
    con.print(f"read as {stats['streamed']}; mask.png {stats['mask_bytes'] / 2**20:.1f} MiB")
    con.print(f"target peak RSS < 2 GiB: {verdict}")
    load1 = os.getloadavg()
    con.print(
        f"{os.cpu_count()} cores; load average before {load0[0]:.2f}, after {load1[0]:.2f}; "
        f"total {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
