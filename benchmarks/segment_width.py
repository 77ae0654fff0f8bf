"""Where the width-from-photo error of a CRACK500 segmenter comes from: bias or scatter.

On the held-out crack tiles of a ``crack500_segment.py`` run, ``fracturekit.width`` measures the
mean width per tile on the predicted mask and on the drawn mask (the benchmark's own measure).
The script prints, for several pixel thresholds (``min_area`` as stored), how many tiles get a
crack, the mean absolute error, the signed bias and the median absolute error; then the error by
drawn width, and what one scale factor for every tile (the median drawn / predicted ratio, chosen
in hindsight on these same tiles) would leave: if that is still far from 2 px, no threshold or
width calibration brings the error there, because it is scatter from tile to tile, not a bias.
Last, two other per-tile read-outs (the median width along the centre lines, the area over the
centre lines' length), each against the same read-out of the drawn mask.

Run:
    .venv/bin/python benchmarks/segment_width.py --run DIR
        (DIR: the ``--out`` of ``benchmarks/crack500_segment.py``)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from crack500_segment import _mean_width, test_rows

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
WIDTH_BANDS = ((0, 8), (8, 12), (12, 18), (18, 30), (30, 1000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="crack500_segment.py --out DIR")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from fracturekit.io import read_image, read_mask
    from fracturekit.masks import drop_small_pieces
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(args.run / "run" / "model.pt")
    rows = [r for r in test_rows(args.run / "manifest.csv") if r["label"] == "crack" and r["mask"]]
    maps, drawn_masks = [], []
    for i in range(0, len(rows), args.batch_size):
        images = [read_image(r["path"]) for r in rows[i : i + args.batch_size]]
        maps += predictor.probability_maps(images)
        drawn_masks += [
            read_mask(r["mask"], size=im.size)
            for r, im in zip(rows[i : i + args.batch_size], images, strict=True)
        ]
    drawn = [_mean_width(m) for m in drawn_masks]

    con = Console(width=120)
    stored = predictor.threshold
    table = Table(title=f"{len(rows)} held-out crack tiles, min_area {predictor.min_area} px")
    for col in ("pixel threshold", "crack found", "width MAE", "bias", "median |error|"):
        table.add_column(col, justify="right")
    at_stored = None
    for t in sorted({*THRESHOLDS, stored}):
        pred = [_mean_width(drop_small_pieces(p >= t, predictor.min_area)) for p in maps]
        pairs = np.array(
            [(a, b) for a, b in zip(pred, drawn, strict=True) if a is not None and b is not None]
        )
        err = pairs[:, 0] - pairs[:, 1]
        if t == stored:
            at_stored = pairs
        found = sum(a is not None for a in pred)
        table.add_row(
            f"{t:.2f}" + (" (stored)" if t == stored else ""),
            f"{found}/{len(rows)}",
            f"{np.abs(err).mean():.2f} px",
            f"{err.mean():+.2f} px",
            f"{np.median(np.abs(err)):.2f} px",
        )
    con.print(table)

    pred_w, true_w = at_stored[:, 0], at_stored[:, 1]
    err = pred_w - true_w
    bands = Table(title=f"at the stored threshold {stored:.2f}, by drawn width")
    for col in ("drawn mean width", "tiles", "bias", "MAE"):
        bands.add_column(col, justify="right")
    for lo, hi in WIDTH_BANDS:
        sel = (true_w >= lo) & (true_w < hi)
        if sel.any():
            label = f"{lo}-{hi} px" if hi < 1000 else f">= {lo} px"
            bands.add_row(
                label, str(sel.sum()), f"{err[sel].mean():+.2f}", f"{np.abs(err[sel]).mean():.2f}"
            )
    con.print(bands)
    scale = float(np.median(true_w / pred_w))
    con.print(
        f"predicted / drawn width, median ratio {float(np.median(pred_w / true_w)):.3f}; "
        f"correlation {np.corrcoef(pred_w, true_w)[0, 1]:.3f}; one scale for every tile, the "
        f"median ratio in hindsight (x{scale:.3f}), leaves MAE "
        f"{np.abs(pred_w * scale - true_w).mean():.2f} px (target: 2 px)"
    )
    readout_table(maps, drawn_masks, predictor)


def _readouts(mask: np.ndarray) -> dict[str, float] | None:
    """Other per-tile width read-outs of a mask: the median width along its centre lines, and
    its area over the centre lines' length (None: no crack)."""
    from fracturekit.width import measure_mask

    widths = [c.widths_px for c in measure_mask(mask) if len(c.widths_px)]
    if not widths:
        return None
    all_widths = np.concatenate(widths)
    return {
        "median width along the centre lines": float(np.median(all_widths)),
        "area / centre-line length": float(mask.sum()) / all_widths.size,
    }


def readout_table(maps: list[np.ndarray], drawn_masks: list[np.ndarray], predictor) -> None:
    """MAE and bias of the other read-outs, each compared with the same read-out of the drawn
    mask (the mean width is the first table's)."""
    from rich.console import Console
    from rich.table import Table

    from fracturekit.masks import drop_small_pieces

    table = Table(title=f"other width read-outs at the stored threshold {predictor.threshold:.2f}")
    for col in ("read-out", "tiles", "MAE", "bias"):
        table.add_column(col, justify="right")
    pairs: dict[str, list[tuple[float, float]]] = {}
    for p, m in zip(maps, drawn_masks, strict=True):
        pred = _readouts(drop_small_pieces(p >= predictor.threshold, predictor.min_area))
        true = _readouts(m)
        if pred is None or true is None:
            continue
        for name in pred:
            pairs.setdefault(name, []).append((pred[name], true[name]))
    for name, values in pairs.items():
        a = np.array(values)
        err = a[:, 0] - a[:, 1]
        table.add_row(name, str(len(a)), f"{np.abs(err).mean():.2f} px", f"{err.mean():+.2f} px")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
