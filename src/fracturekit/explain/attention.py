"""Attention along a crack against its width: the heat map sampled on the measured skeleton."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit.render import as_rgb_array, save_figure


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def attention_along_crack(cam: np.ndarray, measurement: Any) -> dict[str, Any]:
    """The heat map sampled along one measured crack's skeleton, against its width profile.

    Args:
        cam: ``(H, W)`` heat map at the mask's size.
        measurement: a ``fracturekit.width.CrackMeasurement`` (``skeleton_rc``, ``widths_px``,
            ``segment``, ``s_px``).

    Returns:
        ``{"crack", "n", "pearson", "spearman", "attention", "width", "order"}``: the
        correlations (scipy.stats; None with fewer than 3 points or a constant series) of the
        heat map (bilinear at each skeleton point) with the width there, both series
        normalised to [0, 1] (min-max; correlations do not change), ``order`` sorting points
        by chain and arc length.
    """
    from scipy import ndimage as ndi
    from scipy import stats

    rc = np.asarray(measurement.skeleton_rc, dtype=np.float64).reshape(-1, 2)
    widths = np.asarray(measurement.widths_px, dtype=np.float64)
    attention = ndi.map_coordinates(np.asarray(cam, np.float64), rc.T, order=1, mode="nearest")
    ok = np.isfinite(widths) & np.isfinite(attention)
    a, w = attention[ok], widths[ok]
    pearson = spearman = None
    if a.size >= 3 and np.ptp(a) > 0 and np.ptp(w) > 0:
        pearson = float(stats.pearsonr(a, w)[0])
        spearman = float(stats.spearmanr(a, w)[0])
    order = np.lexsort((np.asarray(measurement.s_px)[ok], np.asarray(measurement.segment)[ok]))
    return {
        "crack": int(measurement.crack),
        "n": int(a.size),
        "pearson": pearson,
        "spearman": spearman,
        "attention": _minmax(a) if a.size else a,
        "width": _minmax(w) if w.size else w,
        "order": order,
    }


def attention_width_figure(
    rows: Sequence[dict[str, Any]], path: str | Path, title: str, *, image: Any = None
) -> Path:
    """The normalised heat map and width along each crack, and their scatter, as a PNG."""
    from matplotlib.figure import Figure

    panels = 2 + (image is not None)
    fig = Figure(figsize=(4.2 * panels, 3.8))
    axes = fig.subplots(1, panels)
    k = 0
    if image is not None:
        axes[0].imshow(as_rgb_array(image))
        axes[0].set_axis_off()
        axes[0].set_title("image", fontsize=9)
        k = 1
    along, scatter = axes[k], axes[k + 1]
    offset = 0
    for row in rows:
        idx = row["order"]
        x = np.arange(len(idx)) + offset
        along.plot(x, row["width"][idx], color="tab:blue", lw=1)
        along.plot(x, row["attention"][idx], color="tab:red", lw=1)
        scatter.scatter(row["width"], row["attention"], s=4, alpha=0.5)
        offset += len(idx) + 5
    along.set_xlabel("skeleton point (cracks one after another)")
    along.set_ylabel("normalised value")
    along.legend(["width", "heat map"], fontsize=8, loc="upper right")
    scatter.set_xlabel("normalised width")
    scatter.set_ylabel("normalised heat map")
    scatter.set_xlim(-0.05, 1.05)
    scatter.set_ylim(-0.05, 1.05)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def write_attention_width(
    measurements: dict[str, Sequence[Any]],
    cams: dict[str, np.ndarray],
    out: str | Path,
    *,
    images: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """``attention_<name>.png`` per image and ``attention_width.csv`` (one row per crack).

    Args:
        measurements: ``{name: [CrackMeasurement, ...]}`` (``WidthReport.measurements``).
        cams: ``{name: heat map at the mask's size}``; names without one are skipped.
        out: output folder.
        images: ``{name: image}`` for the figures' first panel.

    Returns:
        ``{name: {"pearson", "spearman", "n"}}`` over all of the image's crack points pooled
        (None where undefined).
    """
    import csv
    import io

    from scipy import stats

    from fracturekit._files import atomic_write_text

    out = Path(out)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "crack", "points", "pearson", "spearman"])
    summary: dict[str, dict[str, Any]] = {}

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.4f}"

    for name, cracks in measurements.items():
        if name not in cams:
            continue
        rows = [attention_along_crack(cams[name], m) for m in cracks]
        for row in rows:
            writer.writerow(
                [name, row["crack"], row["n"], fmt(row["pearson"]), fmt(row["spearman"])]
            )
        a = np.concatenate([r["attention"] for r in rows]) if rows else np.zeros(0)
        w = np.concatenate([r["width"] for r in rows]) if rows else np.zeros(0)
        pooled: dict[str, Any] = {"pearson": None, "spearman": None, "n": int(a.size)}
        if a.size >= 3 and np.ptp(a) > 0 and np.ptp(w) > 0:
            pooled["pearson"] = float(stats.pearsonr(a, w)[0])
            pooled["spearman"] = float(stats.spearmanr(a, w)[0])
        summary[name] = pooled
        if rows:
            title = (
                f"{name}: heat map vs width along the cracks; Pearson {fmt(pooled['pearson'])}, "
                f"Spearman {fmt(pooled['spearman'])}"
            )
            image = None if images is None else images.get(name)
            attention_width_figure(rows, out / f"attention_{name}.png", title, image=image)
    atomic_write_text(out / "attention_width.csv", buf.getvalue())
    return summary
