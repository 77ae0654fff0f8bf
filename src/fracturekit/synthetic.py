"""Seeded synthetic crack images with exact masks and exactly known width profiles.

Every crack is a set of centre lines (a trunk and its branches): polylines with vertices about
1 px apart and a width at each vertex, linear in between. The mask is rendered from that geometry
with the project's width convention (docs/design.md, "Measurement conventions"): a pixel centre
``p`` belongs to a crack when, for some segment of a centre line, the distance from ``p`` to the
segment is at most half the width at the foot of the perpendicular (at a segment's end: the width
there). A straight crack of constant width ``w`` therefore holds exactly the pixel centres within
``w/2`` of its centre line and is ``w`` px wide. The image darkens exactly where the mask is (an
anti-aliased coverage that is >= 0.5 on mask pixels and < 0.5 elsewhere); rough edges come from
the jagged path and the fine-scale width jitter, both part of the recorded truth.

Surfaces and distractors are rows of tables (``KINDS``, ``SURFACE_DISTRACTORS``,
``XRAY_DISTRACTORS``). Distractors are drawn with the same probabilities in both classes and are
look-alikes that differ from cracks in principle: straight or smooth, uniform in width, bright, or
soft-edged, whereas a crack is a jagged, branching, sharp-edged dark line of varying width.

Images are seeded per index, ``SeedSequence([seed, index])``, so a data set is reproducible file
by file and renders in parallel.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy import signal
from scipy.spatial import cKDTree

from fracturekit._files import atomic_write_bytes, atomic_write_text
from fracturekit.contracts import MIXED_KINDS, SYNTH_KINDS

KIND_NAMES = SYNTH_KINDS  # the public name of earlier releases

MIN_WIDTH = 1.0
MAX_WIDTH = 20.0
STEP = 1.0  # centre-line vertex spacing in px
MARKER = "synth.json"
CRACKS_CSV = "cracks.csv"
CRACK_COLUMNS = (
    "image",
    "crack",
    "branches",
    "length_px",
    "mean_width_px",
    "median_width_px",
    "max_width_px",
)
PROFILE_COLUMNS = ("crack", "branch", "parent", "s", "x", "y", "width_px")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class CentreLine:
    """One unbranched stretch of a crack's centre line.

    Attributes:
        xy: ``(N, 2)`` vertex coordinates, ``x`` = column and ``y`` = row, pixel centres at
            integers; consecutive vertices are at most ``STEP`` px apart.
        width: ``(N,)`` true width in px at each vertex (linear in between).
        parent: index of the branch this one springs from within its crack (``-1``: the trunk).
        start_at_tip: whether the first vertex is a free crack tip (not a junction or the border).
        end_at_tip: whether the last vertex is a free crack tip.
    """

    xy: np.ndarray
    width: np.ndarray
    parent: int = -1
    start_at_tip: bool = True
    end_at_tip: bool = True

    @property
    def s(self) -> np.ndarray:
        """Arc length in px at each vertex, from the first."""
        steps = np.hypot(*np.diff(self.xy, axis=0).T)
        return np.concatenate([[0.0], np.cumsum(steps)])

    @property
    def length(self) -> float:
        return float(np.hypot(*np.diff(self.xy, axis=0).T).sum())


@dataclass
class TrueCrack:
    """A crack's exact geometry: its trunk (``branches[0]``) and branches."""

    crack: int
    branches: list[CentreLine]

    @property
    def length_px(self) -> float:
        """Total centre-line length inside the image (trunk plus branches)."""
        return float(sum(b.length for b in self.branches))

    def _segment_widths(self) -> tuple[np.ndarray, np.ndarray]:
        lengths, mids = [], []
        for b in self.branches:
            lengths.append(np.hypot(*np.diff(b.xy, axis=0).T))
            mids.append(0.5 * (b.width[1:] + b.width[:-1]))
        return np.concatenate(lengths), np.concatenate(mids)

    @property
    def mean_width_px(self) -> float:
        """Length-weighted mean width."""
        lengths, mids = self._segment_widths()
        return float((lengths * mids).sum() / max(lengths.sum(), 1e-9))

    @property
    def median_width_px(self) -> float:
        """Length-weighted median width."""
        lengths, mids = self._segment_widths()
        order = np.argsort(mids, kind="stable")
        cum = np.cumsum(lengths[order])
        return float(mids[order][np.searchsorted(cum, 0.5 * cum[-1])])

    @property
    def max_width_px(self) -> float:
        return float(max(b.width.max() for b in self.branches))


@dataclass
class SyntheticSample:
    """One rendered image with its exact crack mask and crack geometry.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool, True on crack pixels (all False without a crack).
        cracks: the true cracks (empty without a crack).
        kind: the surface kind rendered.
        distractors: names of the look-alikes drawn on it.
    """

    image: np.ndarray
    mask: np.ndarray
    cracks: list[TrueCrack] = field(default_factory=list)
    kind: str = "concrete"
    distractors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Noise helpers
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _spectrum(h: int, w: int, beta: float, cut: float) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    if cut > 0:
        amp *= np.exp(-((f / cut) ** 2))
    return amp.astype(np.float32)


def _fbm(rng: np.random.Generator, shape: tuple[int, int], beta: float, cut: float = 0.0):
    """Zero-mean, unit-std fractal noise with a ``1/f**beta`` power spectrum (periodic).

    ``cut`` (cycles per px) removes frequencies above it smoothly, for soft large-scale fields.
    """
    from scipy import fft

    h, w = shape
    white = rng.standard_normal((h, w), dtype=np.float32)
    out = fft.irfft2(fft.rfft2(white) * _spectrum(h, w, float(beta), float(cut)), s=(h, w))
    std = out.std()
    return out / std if std > 0 else out


def _smooth_series(rng: np.random.Generator, n: int, corr: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise along a line, correlated over ``corr`` samples."""
    pad = int(3 * corr) + 1
    x = ndi.gaussian_filter1d(rng.standard_normal(n + 2 * pad), max(corr, 0.5), mode="wrap")
    x = x[pad : pad + n]
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx, yy


def _clip01(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0.0, 1.0, out=a)


def _colour(rng: np.random.Generator, grey: float, tint: float) -> np.ndarray:
    """An RGB colour around ``grey`` with a random tint of strength ``tint``."""
    return _colours(rng, np.array([grey]), tint)[0]


def _colours(rng: np.random.Generator, grey: np.ndarray, tint: float) -> np.ndarray:
    """``(N, 3)`` RGB colours around the greys ``grey``, each with a random tint."""
    t = rng.normal(0.0, tint, (len(grey), 3))
    t -= t.mean(axis=1, keepdims=True)
    return np.clip(grey[:, None] * (1.0 + t), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Exact centre-line geometry
# --------------------------------------------------------------------------------------------


def _segment_field(xy: np.ndarray, width: np.ndarray, size: int, reach: float):
    """Signed distance to one centre line's edge for the pixels near it.

    Returns flat pixel indices, the signed distance ``d - w(t)/2`` (negative inside) and the local
    width ``w(t)`` for every pixel centre within ``reach`` px of the crack edge.
    """
    rmax = float(width.max()) / 2.0
    pad = rmax + reach + 2.0
    x0 = max(int(np.floor(xy[:, 0].min() - pad)), 0)
    x1 = min(int(np.ceil(xy[:, 0].max() + pad)), size - 1)
    y0 = max(int(np.floor(xy[:, 1].min() - pad)), 0)
    y1 = min(int(np.ceil(xy[:, 1].max() + pad)), size - 1)
    if x1 < x0 or y1 < y0:
        return np.empty(0, np.int64), np.empty(0), np.empty(0)
    # Candidate pixels: near a vertex (raster + EDT is cheap); exact distances follow.
    h, w = y1 - y0 + 1, x1 - x0 + 1
    raster = np.ones((h, w), bool)
    ri = np.clip(np.rint(xy[:, 1]).astype(int) - y0, 0, h - 1)
    ci = np.clip(np.rint(xy[:, 0]).astype(int) - x0, 0, w - 1)
    raster[ri, ci] = False
    near = ndi.distance_transform_edt(raster) <= rmax + reach + 1.5
    rr, cc = np.nonzero(near)
    px = np.stack([cc + x0, rr + y0], axis=1).astype(np.float64)
    n = len(xy)
    if n == 1:
        d = np.hypot(*(px - xy[0]).T)
        wl = np.full(len(px), width[0])
    else:
        k = min(4, n)
        _, vi = cKDTree(xy).query(px, k=k)
        vi = vi.reshape(len(px), k)
        # Segments adjacent to the k nearest vertices: the nearest point of the polyline lies on
        # one of them because vertices are at most STEP apart and the path is smooth at that scale.
        seg = np.concatenate([vi - 1, vi], axis=1)
        valid = (seg >= 0) & (seg < n - 1)
        seg = np.clip(seg, 0, n - 2)
        a = xy[seg]
        b = xy[seg + 1]
        ab = b - a
        ap = px[:, None, :] - a
        denom = np.maximum((ab * ab).sum(-1), 1e-12)
        t = np.clip((ap * ab).sum(-1) / denom, 0.0, 1.0)
        foot = a + t[..., None] * ab
        dist = np.hypot(*(px[:, None, :] - foot).transpose(2, 0, 1))
        wt = width[seg] + t * (width[seg + 1] - width[seg])
        sd = np.where(valid, dist - wt / 2.0, np.inf)
        j = np.argmin(sd, axis=1)
        rows = np.arange(len(px))
        d = dist[rows, j]
        wl = wt[rows, j]
    sd = d - wl / 2.0
    keep = sd <= reach
    flat = (px[keep, 1].astype(np.int64)) * size + px[keep, 0].astype(np.int64)
    return flat, sd[keep], wl[keep]


def crack_field(cracks: list[TrueCrack], size: int, reach: float = 3.0):
    """Signed distance to the nearest crack edge (px, negative inside) and the local width.

    Pixels farther than ``reach`` outside every crack hold ``+inf`` (width 0). The crack mask is
    ``sd <= 0``.
    """
    sd = np.full(size * size, np.inf)
    wl = np.zeros(size * size)
    for crack in cracks:
        for line in crack.branches:
            flat, s, w = _segment_field(line.xy, line.width, size, reach)
            better = s < sd[flat]
            sd[flat[better]] = s[better]
            wl[flat[better]] = w[better]
    return sd.reshape(size, size), wl.reshape(size, size)


def render_mask(cracks: list[TrueCrack], size: int) -> np.ndarray:
    """The exact binary mask of ``cracks`` on a ``size`` x ``size`` grid (the width convention)."""
    return crack_field(cracks, size, reach=0.0)[0] <= 0.0


def _inside(xy: np.ndarray, size: int) -> np.ndarray:
    lo, hi = -0.5, size - 0.5
    return (xy[:, 0] >= lo) & (xy[:, 0] <= hi) & (xy[:, 1] >= lo) & (xy[:, 1] <= hi)


def _cut_at_border(a: np.ndarray, b: np.ndarray, size: int) -> float:
    """Fraction ``t`` along ``a -> b`` (``a`` inside) where the segment leaves the image."""
    lo, hi = -0.5, size - 0.5
    t = 1.0
    for dim in (0, 1):
        if b[dim] < lo:
            t = min(t, (lo - a[dim]) / (b[dim] - a[dim]))
        elif b[dim] > hi:
            t = min(t, (hi - a[dim]) / (b[dim] - a[dim]))
    return t


def _clip_to_image(
    xy: np.ndarray, width: np.ndarray, anchor: int, size: int
) -> tuple[np.ndarray, np.ndarray, bool, bool] | None:
    """Keep the stretch of the path around vertex ``anchor`` that lies inside the image.

    Each end is cut exactly at the image border (``-0.5`` / ``size - 0.5``). Returns
    ``(xy, width, cut_start, cut_end)``, or None when the anchor itself is outside.
    """
    ins = _inside(xy, size)
    if not ins[anchor]:
        return None
    after = np.nonzero(~ins[anchor:])[0]
    before = np.nonzero(~ins[: anchor + 1])[0]
    hi_k = anchor + after[0] if len(after) else len(xy)
    lo_k = before[-1] if len(before) else -1
    pts, ws = list(xy[lo_k + 1 : hi_k]), list(width[lo_k + 1 : hi_k])
    if lo_k >= 0:
        t = _cut_at_border(xy[lo_k + 1], xy[lo_k], size)
        if t > 1e-6:
            pts.insert(0, xy[lo_k + 1] + t * (xy[lo_k] - xy[lo_k + 1]))
            ws.insert(0, width[lo_k + 1] + t * (width[lo_k] - width[lo_k + 1]))
    if hi_k < len(xy):
        t = _cut_at_border(xy[hi_k - 1], xy[hi_k], size)
        if t > 1e-6:
            pts.append(xy[hi_k - 1] + t * (xy[hi_k] - xy[hi_k - 1]))
            ws.append(width[hi_k - 1] + t * (width[hi_k] - width[hi_k - 1]))
    return np.array(pts), np.array(ws), lo_k >= 0, hi_k < len(xy)


def _walk(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    n: int,
    wiggle: float,
    kinks: float,
    rough: float = 1.0,
) -> np.ndarray:
    """A persistent random walk of ``n`` vertices ``STEP`` apart: the crack's jagged path.

    Heading = initial heading + a slow meander + a zig-zag (piecewise-constant deviations that
    change at random points and do not accumulate) + rare lasting turns + an AR(1) jitter: jagged
    at every scale yet keeping a main direction, as cracks following weak paths do.
    """
    meander = 0.35 * rough * _smooth_series(rng, n, corr=rng.uniform(25, 60))
    change = rng.random(n) < rng.uniform(0.05, 0.15)
    zig = rng.normal(0.0, 0.45 * rough, n + 1)[np.cumsum(change)]
    zig = ndi.gaussian_filter1d(zig, 0.7)  # turn over ~2 px: corners stay sharp but finite
    turns = np.cumsum(np.where(rng.random(n) < kinks, rng.normal(0.0, 0.5, n), 0.0))
    jitter = signal.lfilter([1.0], [1.0, -0.7], rng.normal(0.0, wiggle, n))
    theta = heading + meander + zig + turns + jitter
    steps = np.stack([np.cos(theta[:-1]), np.sin(theta[:-1])], axis=1) * STEP
    return start + np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)])


def _width_profile(
    rng: np.random.Generator,
    n: int,
    base: float,
    taper_start: bool,
    taper_end: bool,
    taper: float | None = None,
) -> np.ndarray:
    """Width along a path: slow and mid-scale variation, a fine jitter (rough edges), tapered tips.

    ``taper``: length in px over which a free tip narrows (default: from the length and width).
    """
    slow = np.exp(0.3 * _smooth_series(rng, n, corr=rng.uniform(15, 40)))
    mid = np.exp(0.15 * _smooth_series(rng, n, corr=rng.uniform(4, 8)))
    fine = 1.0 + 0.08 * _smooth_series(rng, n, corr=2.0)
    w = base * slow * mid * fine
    s = np.arange(n, dtype=np.float64) * STEP
    taper_len = max(6.0, min(0.3 * s[-1], 3.0 * base)) if taper is None else taper
    taper_len = max(taper_len, 1.0)
    if taper_end:
        w *= np.clip((s[-1] - s) / taper_len, 0.0, 1.0) ** 0.6
        # Widen by at most 1 px per px from the tip, or the tip would hide inside the round end
        # of the wider crack just behind it (and the centre line would run on unseen).
        w = np.minimum(w, MIN_WIDTH + (s[-1] - s))
    if taper_start:
        w *= np.clip(s / taper_len, 0.0, 1.0) ** 0.6
        w = np.minimum(w, MIN_WIDTH + s)
    return np.clip(w, MIN_WIDTH, MAX_WIDTH)


def _border_start(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """A start point on the image border (sometimes a corner) and an inward heading."""
    lo, hi = -0.5, size - 0.5
    if rng.random() < 0.2:  # a corner, as in real close-ups of cracked slabs
        cx, cy = rng.choice([lo, hi]), rng.choice([lo, hi])
        inward = np.arctan2(size / 2 - cy, size / 2 - cx)
        return np.array([cx, cy]), inward + rng.uniform(-0.5, 0.5)
    side = int(rng.integers(4))
    u = rng.uniform(0.1, 0.9) * size - 0.5
    start, inward = {
        0: (np.array([u, lo]), np.pi / 2),
        1: (np.array([u, hi]), -np.pi / 2),
        2: (np.array([lo, u]), 0.0),
        3: (np.array([hi, u]), np.pi),
    }[side]
    return start, inward + rng.uniform(-0.7, 0.7)


def _make_line(
    rng: np.random.Generator,
    anchor_xy: np.ndarray,
    anchor_frac: float,
    heading: float,
    length: float,
    base_width: float,
    size: int,
    *,
    free_start: bool,
    wiggle: float,
    kinks: float,
    parent: int = -1,
    rough: float = 1.0,
) -> CentreLine | None:
    """A path of about ``length`` px whose vertex at ``anchor_frac`` of it sits at ``anchor_xy``.

    ``free_start``: the first vertex is a free tip (tapered) rather than a junction or the
    border. The end is always a free tip unless the path leaves the image.
    """
    n = max(int(length / STEP), 3)
    k = min(int(anchor_frac * n), n - 1)
    xy = _walk(rng, np.zeros(2), heading, n, wiggle, kinks, rough)
    xy += anchor_xy - xy[k]
    width = _width_profile(rng, n, base_width, free_start, True)
    if parent >= 0:
        # A branch is narrower than its parent where it leaves it, so it starts inside the parent.
        width = np.minimum(width, base_width)
    clipped = _clip_to_image(xy, width, k, size)
    if clipped is None:
        return None
    xy, width, cut_start, cut_end = clipped
    if len(xy) < 3:
        return None
    return CentreLine(xy, width, parent, free_start and not cut_start, not cut_end)


def _stop_at_contact(
    line: CentreLine, others: list[CentreLine], free_len: float, size: int
) -> CentreLine | None:
    """Cut a new line where it would touch another line or come back onto itself.

    A crack stops where it meets an existing one (a free surface arrests it), so the lines of a
    crack system never overlap except where a branch leaves its parent: the first ``free_len``
    px of the new line are exempt from the check against the other lines.
    """
    xy, w, s = line.xy, line.width, line.s
    hit = np.full(len(xy), False)
    for other in others:
        d, j = cKDTree(other.xy).query(xy)
        hit |= (d < (w + other.width[j]) / 2.0 + 3.0) & (s > free_len)
    if len(xy) > 8:
        # Self-contact: a vertex near an earlier stretch of the same line (not its neighbours).
        pairs = cKDTree(xy).query_pairs(r=float(w.max()) + 3.0, output_type="ndarray")
        if len(pairs):
            i, j = pairs.min(axis=1), pairs.max(axis=1)
            close = np.hypot(*(xy[i] - xy[j]).T) < (w[i] + w[j]) / 2.0 + 3.0
            apart = s[j] - s[i] > w[i] + w[j] + 8.0
            later = j[close & apart]
            if len(later):
                hit[int(later.min())] = True
    k = int(np.argmax(hit)) if hit.any() else len(xy)
    if k == len(xy):
        return line
    if k < 3:
        return None
    # Cut one px short of the contact; the new end is a free tip.
    end = max(k - 1, 2)
    return CentreLine(
        xy[:end], np.minimum(w[:end], _taper_end(w[:end])), line.parent, line.start_at_tip, True
    )


def _taper_end(w: np.ndarray) -> np.ndarray:
    """A short taper over the last few vertices (for a line cut where it met another)."""
    n = min(len(w), 6)
    ramp = np.ones(len(w))
    ramp[len(w) - n :] = np.linspace(1.0, 0.4, n)
    return np.clip(w * ramp, MIN_WIDTH, MAX_WIDTH)


@dataclass(frozen=True)
class CrackStyle:
    """How a surface's cracks run (a row of ``KINDS``).

    Attributes:
        wmin, wmax: the trunk's base width in pixels, drawn log-uniformly between them.
        wiggle: spread of the heading's jitter per step (scaled by 0.6-1.4 per crack).
        kinks: chance of a lasting turn per step.
        border: chance that the trunk starts at the image border (else inside).
        branch_p: probabilities of 0, 1, 2 and 3 branches.
    """

    wmin: float
    wmax: float
    wiggle: float
    kinks: float
    border: float
    branch_p: tuple[float, float, float, float]


def _crack_lines(
    rng: np.random.Generator,
    size: int,
    style: CrackStyle,
    existing: list[CentreLine] | None = None,
) -> list[CentreLine]:
    """A trunk (from the border or from inside) and up to three branches.

    No line touches ``existing`` (the lines of cracks already placed) or another of its lines,
    except branches where they leave their parent.
    """
    existing = list(existing or [])
    base = float(np.exp(rng.uniform(np.log(style.wmin), np.log(style.wmax))))
    wiggle = style.wiggle * rng.uniform(0.6, 1.4)
    kinks = style.kinks
    length = rng.uniform(0.5, 1.4) * size
    if rng.random() < style.border:
        start, heading = _border_start(rng, size)
        trunk = _make_line(
            rng,
            start,
            0.0,
            heading,
            length,
            base,
            size,
            free_start=False,
            wiggle=wiggle,
            kinks=kinks,
        )
    else:
        mid = rng.uniform(0.2, 0.8, 2) * size
        trunk = _make_line(
            rng,
            mid,
            0.5,
            rng.uniform(0, 2 * np.pi),
            length,
            base,
            size,
            free_start=True,
            wiggle=wiggle,
            kinks=kinks,
        )
    if trunk is not None:
        trunk = _stop_at_contact(trunk, existing, 0.0, size)
    if trunk is None or trunk.length < 0.25 * size:
        return []
    lines = [trunk]
    for _ in range(int(rng.choice(4, p=style.branch_p))):
        pi = int(rng.integers(len(lines)))
        parent = lines[pi]
        if len(parent.xy) < 20:
            continue
        k = int(rng.integers(int(0.15 * len(parent.xy)), int(0.85 * len(parent.xy))))
        d = parent.xy[min(k + 2, len(parent.xy) - 1)] - parent.xy[max(k - 2, 0)]
        heading = np.arctan2(d[1], d[0]) + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
        bw = max(parent.width[k] * rng.uniform(0.35, 0.8), MIN_WIDTH)
        branch = _make_line(
            rng,
            parent.xy[k].copy(),
            0.0,
            heading,
            rng.uniform(0.2, 0.6) * parent.length,
            bw,
            size,
            free_start=False,
            wiggle=wiggle,
            kinks=kinks,
            parent=pi,
        )
        if branch is not None:
            free = parent.width[k] / 2.0 + branch.width[0] + 4.0
            branch = _stop_at_contact(branch, existing + lines, free, size)
        # Keep branches that show well beyond their parent (shorter ones are hidden in it).
        if branch is not None and branch.length > parent.width[k] / 2 + max(12.0, 2 * bw):
            lines.append(branch)
    return lines


def _surface_cracks(
    rng: np.random.Generator, size: int, ctx: dict, *, style: CrackStyle
) -> list[TrueCrack]:
    """One crack system, sometimes two or three, each with at least a quarter-image trunk."""
    n = int(rng.choice([1, 2, 3], p=[0.75, 0.2, 0.05]))
    cracks: list[TrueCrack] = []
    for _ in range(12):
        lines = _crack_lines(rng, size, style, [b for c in cracks for b in c.branches])
        if lines:
            cracks.append(TrueCrack(len(cracks) + 1, lines))
        if len(cracks) == n:
            break
    return cracks


# --------------------------------------------------------------------------------------------
# Surfaces
# --------------------------------------------------------------------------------------------


def _cells(rng: np.random.Generator, size: int, n: int):
    """Nearest of ``n`` random seed points for every pixel (Worley noise).

    Returns the offset ``(dx, dy)`` from the nearest seed and that seed's index.
    """
    n = max(int(n), 1)
    pts = rng.uniform(0, size, (n, 2)).astype(int).clip(0, size - 1)
    index = np.full((size, size), -1, np.int64)
    index[pts[:, 1], pts[:, 0]] = np.arange(n)
    _, (iy, ix) = ndi.distance_transform_edt(index < 0, return_indices=True)
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx - ix).astype(np.float32), (yy - iy).astype(np.float32), index[iy, ix]


def _stones(
    rng: np.random.Generator,
    img: np.ndarray,
    density: float,
    rmin: float,
    rmax: float,
    grey: tuple[float, float],
    tint: float,
    rim: float,
) -> np.ndarray:
    """Aggregate: angular, elongated stones with rounded shading and darker rims.

    Each stone is a rounded polygon (3-6 corners) stretched along a random axis, so crushed
    aggregate looks angular rather than like bubbles; where stones meet the binder a soft dark
    line forms (the "aggregate edge" look-alike, in both classes).
    """
    size = img.shape[0]
    n = max(int(density * size * size), 1)
    dx, dy, idx = _cells(rng, size, n)
    radius = rng.uniform(rmin, rmax, n).astype(np.float32)
    phi = rng.uniform(0, np.pi, n).astype(np.float32)
    aspect = rng.uniform(0.55, 1.0, n).astype(np.float32)
    corners = rng.integers(3, 7, n).astype(np.float32)
    sharp = rng.uniform(0.08, 0.22, n).astype(np.float32)
    colours = _colours(rng, rng.uniform(*grey, n), tint)
    c, s_ = np.cos(phi)[idx], np.sin(phi)[idx]
    u = dx * c + dy * s_
    v = (-dx * s_ + dy * c) / aspect[idx]
    polygon = 1.0 + sharp[idx] * np.cos(corners[idx] * np.arctan2(v, u))
    rel = np.hypot(u, v) / (radius[idx] * polygon)
    stone = rel < 1.0
    shade = 1.0 - rim * np.clip(rel, 0, 1) ** 3
    out = img.copy()
    out[stone] = colours[idx[stone]] * shade[stone, None]
    ring = np.exp(-(((rel - 1.0) * radius[idx] / 0.9) ** 2)) * (rel < 1.6)
    out *= (1.0 - 0.25 * rim * ring)[..., None]
    return out


def _concrete(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    grey = rng.uniform(0.42, 0.8)
    base = _colour(rng, grey, 0.02)
    large = _fbm(rng, (size, size), 3.3)
    lum = 1.0 + 0.07 * rng.uniform(0.5, 1.6) * large
    lum += 0.035 * _fbm(rng, (size, size), 2.0) + 0.06 * rng.uniform(0.4, 1.5) * _fbm(
        rng, (size, size), 0.6
    )
    stain = np.clip((_fbm(rng, (size, size), 3.0) - rng.uniform(0.3, 1.6)) * 0.8, 0, 1)
    lum *= 1.0 - rng.uniform(0.0, 0.3) * stain
    img = base[None, None, :] * lum[..., None]
    if rng.random() < 0.45:  # exposed aggregate on weathered or broom-finished concrete
        img = _stones(
            rng, img, rng.uniform(0.002, 0.008), 1.0, rng.uniform(3, 7), (0.35, 0.8), 0.03, 0.35
        )
    # Pores (bug holes): small dark pits.
    dx, dy, idx = _cells(rng, size, rng.poisson(size * size * rng.uniform(2e-4, 1.5e-3)) + 1)
    radius = rng.uniform(0.6, 2.8, idx.max() + 1).astype(np.float32)
    rel = np.hypot(dx, dy) / radius[idx]
    pit = np.clip(1.2 - rel, 0, 1)
    img *= (1.0 - 0.55 * pit)[..., None]
    return img, {}


def _asphalt(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    grey = rng.uniform(0.28, 0.5)
    base = _colour(rng, grey, 0.02)
    lum = 1.0 + 0.1 * _fbm(rng, (size, size), 2.8) + 0.1 * _fbm(rng, (size, size), 0.8)
    img = base[None, None, :] * lum[..., None]
    scale = rng.uniform(0.6, 1.5)  # camera distance
    img = _stones(rng, img, 0.012 / scale**2, 1.2 * scale, 4.5 * scale, (0.3, 0.65), 0.03, 0.55)
    # Bright chips: the white speckles of pavement photos.
    img = _stones(rng, img, 0.004 / scale**2, 0.6, 1.6 * scale, (0.65, 0.95), 0.02, 0.2)
    img *= (1.0 + 0.12 * _fbm(rng, (size, size), 0.3))[..., None]
    return img, {}


_ROCK_PALETTE = (
    (0.72, 0.62, 0.48),  # sandstone
    (0.55, 0.53, 0.5),  # grey shale
    (0.62, 0.42, 0.33),  # red bed
    (0.78, 0.76, 0.7),  # limestone
    (0.38, 0.37, 0.36),  # dark mudstone
)


def _rock(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    xx, yy = _grid(size)
    phi = rng.uniform(0, np.pi)
    warp = _fbm(rng, (size, size), 3.6) * size * rng.uniform(0.02, 0.09)
    u = xx * np.cos(phi) + yy * np.sin(phi) + warp
    u -= u.min()
    thick = rng.exponential(size / rng.uniform(5, 14), 64) + 2.0
    edges = np.cumsum(thick)
    layer = np.searchsorted(edges, u)
    palette = np.array(_ROCK_PALETTE, np.float32)
    main = palette[rng.integers(len(palette))]
    colours = np.stack(
        [np.clip(main * rng.uniform(0.75, 1.15) + rng.normal(0, 0.012, 3), 0, 1) for _ in edges]
    ).astype(np.float32)
    img = colours[np.minimum(layer, len(edges) - 1)]
    # Soft transitions between layers, except bedding planes (a smooth uniform line).
    img = ndi.gaussian_filter(img, (1.2, 1.2, 0))
    grain = 0.07 * _fbm(rng, (size, size), 0.7) + 0.06 * _fbm(rng, (size, size), 2.2)
    img *= (1.0 + grain)[..., None]
    dist_to_edge = np.abs(u - edges[np.minimum(layer, len(edges) - 1)])
    planes = rng.random(len(edges)) < 0.3
    line = np.exp(-((dist_to_edge / 0.9) ** 2)) * planes[np.minimum(layer, len(edges) - 1)]
    img *= (1.0 - 0.25 * line)[..., None]
    return img, {}


_BRICK_COLOURS = (
    (0.62, 0.3, 0.22),
    (0.7, 0.42, 0.3),
    (0.55, 0.35, 0.3),
    (0.78, 0.62, 0.45),
    (0.6, 0.55, 0.5),
)


def _masonry(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    xx, yy = _grid(size)
    ang = rng.normal(0, 0.05)
    xr = xx * np.cos(ang) + yy * np.sin(ang) + rng.uniform(0, 500)
    yr = -xx * np.sin(ang) + yy * np.cos(ang) + rng.uniform(0, 500)
    course = size / rng.uniform(3.0, 8.0)
    brick = course * rng.uniform(2.0, 3.2)
    mortar = rng.uniform(1.2, 4.5) * course / 30.0 + 1.0
    row = np.floor(yr / course)
    shift = (row % 2) * brick * 0.5
    col = np.floor((xr + shift) / brick)
    fy = yr - row * course
    fx = xr + shift - col * brick
    edge = np.minimum(np.minimum(fy, course - fy), np.minimum(fx, brick - fx))
    main = np.array(_BRICK_COLOURS[rng.integers(len(_BRICK_COLOURS))], np.float32)
    key = (row * 7919 + col).astype(np.int64) % 997
    per_brick = np.clip(main + rng.normal(0, 0.025, (997, 3)), 0, 1).astype(np.float32)
    per_brick *= rng.uniform(0.8, 1.15, (997, 1)).astype(np.float32)
    img = per_brick[key]
    img *= (1.0 + 0.08 * _fbm(rng, (size, size), 0.7) + 0.06 * _fbm(rng, (size, size), 2.0))[
        ..., None
    ]
    mortar_col = _colour(rng, rng.uniform(0.55, 0.85), 0.04)
    m = np.clip((mortar / 2.0 - edge) / 0.8 + 0.5, 0, 1)
    mortar_img = mortar_col * (1.0 + 0.08 * _fbm(rng, (size, size), 0.8))[..., None]
    img = img * (1 - m[..., None]) + mortar_img * m[..., None]
    # Recessed joints cast a thin shadow under each brick's upper edge.
    img *= (1.0 - 0.2 * np.exp(-(((fy - mortar / 2.0) / 1.0) ** 2)))[..., None]
    return img, {}


def _xray(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """A limb: soft tissue around one or two long bones (hollow cylinders seen in projection)."""
    xx, yy = _grid(size)
    theta = rng.uniform(0, np.pi)
    t = np.array([np.cos(theta), np.sin(theta)])
    n = np.array([-t[1], t[0]])
    c = rng.uniform(0.35, 0.65, 2) * size
    bend = _fbm(rng, (size, size), 4.0, cut=1.5 / size) * size * 0.03
    along = (xx - c[0]) * t[0] + (yy - c[1]) * t[1]
    across = (xx - c[0]) * n[0] + (yy - c[1]) * n[1] + bend
    background = rng.uniform(0.03, 0.14)
    limb_r = size * rng.uniform(0.28, 0.5) * (1 + 0.15 * np.tanh(along / size))
    tissue = np.sqrt(np.clip(1 - (across / limb_r) ** 2, 0, 1)) * rng.uniform(0.15, 0.3)
    img = background + tissue + 0.015 * _fbm(rng, (size, size), 1.5)
    bones = []
    n_bones = int(rng.choice([1, 2], p=[0.55, 0.45]))
    offsets = [0.0] if n_bones == 1 else sorted(rng.uniform(-0.45, 0.45, 2) * limb_r.mean())
    if n_bones == 2 and abs(offsets[1] - offsets[0]) < size * 0.18:
        offsets = [offsets[0] - size * 0.1, offsets[1] + size * 0.1]
    for off in offsets:
        r0 = size * rng.uniform(0.06, 0.12)
        end = rng.uniform(0.15, 0.6) * size * rng.choice([-1, 1])  # a bone end (joint) in view
        flare = 1.0 + 0.6 * np.exp(-(((along - end) / (r0 * 2.5)) ** 2))
        radius = r0 * flare
        inner = radius * rng.uniform(0.45, 0.7)
        d = across - off
        outer_ch = 2 * np.sqrt(np.clip(radius**2 - d**2, 0, None))
        inner_ch = 2 * np.sqrt(np.clip(inner**2 - d**2, 0, None))
        # The bone stops at `end` with a rounded head; the joint space lies beyond.
        cap = np.clip((np.sign(end) * (end - along)) / (0.7 * r0), 0, 1) ** 0.5
        trabecular = 1.0 + 0.15 * _fbm(rng, (size, size), 1.2)
        density = ((outer_ch - inner_ch) + 0.35 * inner_ch * trabecular) * cap
        img = img + density / (2 * r0) * rng.uniform(0.35, 0.55)
        # The geometry needed to lay a fracture across the shaft (and metal along it).
        bones.append(dict(t=t, n=n, c=c, off=off, r0=r0, end=end, radius=radius, cap=cap, across=d))
    img = np.repeat(img[..., None], 3, axis=2).astype(np.float32)
    return img, {"bones": bones, "xray": True}


def _xray_cracks(rng: np.random.Generator, size: int, ctx: dict) -> list[TrueCrack]:
    """A fracture line across a bone shaft, kept inside the bone so all of it is visible.

    It starts near the shaft's axis and runs both ways at 35-90 degrees to it; it is cut where
    its edge would leave the bone (complete fractures) or earlier (incomplete ones).
    """
    for _ in range(30):
        bone = ctx["bones"][int(rng.integers(len(ctx["bones"])))]
        near_axis = (np.abs(bone["across"]) < 0.25 * bone["radius"]) & (bone["cap"] > 0.99)
        near_axis[:4], near_axis[-4:], near_axis[:, :4], near_axis[:, -4:] = (False,) * 4
        rr, cc = np.nonzero(near_axis)
        if len(rr) < 10:
            continue
        i = int(rng.integers(len(rr)))
        start = np.array([cc[i], rr[i]], np.float64)
        axis = np.arctan2(bone["t"][1], bone["t"][0])
        heading = axis + np.pi / 2 + rng.uniform(-0.7, 0.7)
        length = 6.0 * float(bone["r0"]) + 10.0
        base = float(np.exp(rng.uniform(np.log(1.6), np.log(4.5))))
        line = _make_line(
            rng,
            start,
            0.5,
            heading,
            length,
            base,
            size,
            free_start=False,
            wiggle=0.05,
            kinks=0.0,
            rough=0.4,
        )
        if line is None:
            continue
        ix = np.clip(np.rint(line.xy[:, 0]).astype(int), 0, size - 1)
        iy = np.clip(np.rint(line.xy[:, 1]).astype(int), 0, size - 1)
        room = bone["radius"][iy, ix] - np.abs(bone["across"][iy, ix])  # to the bone's edge
        ok = (room > 1.5) & (bone["cap"][iy, ix] > 0.99)
        k = int(np.argmin(np.hypot(*(line.xy - start).T)))
        if not ok[k]:
            continue
        lo, hi = k, k
        while lo > 0 and ok[lo - 1]:
            lo -= 1
        while hi < len(ok) - 1 and ok[hi + 1]:
            hi += 1
        if rng.random() < 0.2:  # incomplete (greenstick-like): stops inside the bone
            hi = k + int((hi - k) * rng.uniform(0.3, 0.8))
        if hi - lo < 8:
            continue
        xy = line.xy[lo : hi + 1]
        # Both ends are free tips of the fracture line: taper them.
        width = _width_profile(rng, len(xy), base, True, True, taper=4.0)
        # Narrower than the bone is wide there (less a pixel), so the whole crack is on bone.
        width = np.clip(np.minimum(width, 2.0 * (room[lo : hi + 1] - 1.0)), MIN_WIDTH, MAX_WIDTH)
        return [TrueCrack(1, [CentreLine(xy, width, -1, True, True)])]
    return []


# --------------------------------------------------------------------------------------------
# Distractors: look-alikes drawn with the same probabilities in both classes
# --------------------------------------------------------------------------------------------


def _curve(rng: np.random.Generator, size: int, straight: bool) -> np.ndarray:
    """A smooth path across the image: a straight line or a gentle quadratic Bezier."""
    a, _ = _border_start(rng, size)
    for _ in range(10):
        b, _ = _border_start(rng, size)
        if np.hypot(*(b - a)) > 0.6 * size:
            break
    bend = 0.0 if straight else rng.uniform(-0.3, 0.3) * size
    mid = (a + b) / 2 + bend * np.array([-(b - a)[1], (b - a)[0]]) / max(np.hypot(*(b - a)), 1)
    n = int(np.hypot(*(b - a)) * 1.2) + 2
    s = np.linspace(0, 1, n)[:, None]
    pad = (b - a) * 0.05  # start and end just outside the frame
    a, b = a - pad, b + pad
    return (1 - s) ** 2 * a + 2 * s * (1 - s) * mid + s**2 * b


def _line_field(xy: np.ndarray, width: float, size: int, reach: float):
    """Signed distance to the edge of a constant-width line along ``xy`` (inf beyond reach)."""
    a, b = xy[0], xy[-1]
    d = b - a
    length = float(np.hypot(*d))
    nrm = np.array([-d[1], d[0]]) / max(length, 1e-9)
    if length > 0 and np.abs((xy - a) @ nrm).max() < 1e-6:
        # Straight: distance to the segment in closed form over the whole image.
        xx, yy = _grid(size)
        t = np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / length**2, 0.0, 1.0)
        return np.hypot(xx - a[0] - t * d[0], yy - a[1] - t * d[1]) - width / 2.0
    flat, sd, _ = _segment_field(xy, np.full(len(xy), width), size, reach)
    field_ = np.full(size * size, np.inf)
    field_[flat] = sd
    return field_.reshape(size, size)


def _wire(rng: np.random.Generator, img: np.ndarray, ctx: dict, thick: bool = False) -> np.ndarray:
    size = img.shape[0]
    width = rng.uniform(4, 11) if thick else rng.uniform(1.2, 3.5)
    xy = _curve(rng, size, straight=False)
    # Cast shadow first: the same path shifted and blurred (soft-edged, so unlike a crack).
    shift = rng.uniform(2, 8, 2) * rng.choice([-1, 1], 2)
    shadow = _line_field(xy + shift, width, size, 1.0)
    sh = ndi.gaussian_filter(np.clip(0.5 - shadow, 0, 1), rng.uniform(1.5, 3.5))
    img = img * (1.0 - rng.uniform(0.15, 0.4) * sh)[..., None]
    sd = _line_field(xy, width, size, 1.0)
    alpha = np.clip(0.5 - sd, 0, 1)[..., None]
    colour = (
        _colour(rng, rng.uniform(0.05, 0.3), 0.15)
        if rng.random() < 0.7
        else np.array(rng.choice([[0.7, 0.15, 0.1], [0.9, 0.6, 0.1], [0.15, 0.3, 0.7]]), np.float32)
    )
    # Cylindrical shading: a specular highlight along the middle of the wire.
    depth = np.clip(-sd / (width / 2), 0, 1)
    shade = 0.7 + 0.3 * depth + rng.uniform(0.3, 0.9) * np.exp(-(((1 - depth) / 0.25) ** 2))
    body = colour[None, None, :] * shade[..., None]
    return img * (1 - alpha) + body * alpha


def _cable(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> np.ndarray:
    return _wire(rng, img, ctx, thick=True)


def _scratch(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> np.ndarray:
    size = img.shape[0]
    for _ in range(int(rng.integers(1, 5))):
        a = rng.uniform(0, size, 2)
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(0.1, 0.45) * size
        s = np.arange(0, length, 1.0)[:, None]
        bow = rng.uniform(-0.002, 0.002) * (s - length / 2) ** 2
        d = np.array([np.cos(ang), np.sin(ang)])
        xy = a + s * d + bow * np.array([-d[1], d[0]])
        sd = _line_field(xy, rng.uniform(0.7, 1.6), size, 1.0)
        alpha = ndi.gaussian_filter(np.clip(0.5 - sd, 0, 1), 0.5)
        # Scratches expose fresh, lighter material.
        img = img + rng.uniform(0.12, 0.3) * alpha[..., None] * (1.1 - img)
    return img


def _joint(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> np.ndarray:
    """A saw-cut or construction joint: dead straight, uniform, bevelled edges."""
    size = img.shape[0]
    xy = _curve(rng, size, straight=True)
    width = rng.uniform(2.0, 7.0)
    sd = _line_field(xy, width, size, 1.0)
    alpha = np.clip(0.5 - sd, 0, 1)[..., None]
    fill = _colour(rng, rng.uniform(0.12, 0.4), 0.05)
    # The bevel: a light line along one side (the cut edge catches the light).
    d = xy[-1] - xy[0]
    nrm = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1.0)
    bevel = _line_field(xy + nrm * (width / 2 + 1.0), 1.2, size, 1.0)
    img = img * (1.0 + 0.25 * np.clip(0.5 - bevel, 0, 1))[..., None]
    return img * (1 - alpha) + fill * alpha


def _paint(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> np.ndarray:
    size = img.shape[0]
    xy = _curve(rng, size, straight=True)
    width = rng.uniform(0.08, 0.25) * size
    sd = _line_field(xy, width, size, 1.0)
    wear = np.clip(0.85 + 0.5 * _fbm(rng, img.shape[:2], 1.2), 0, 1)
    alpha = (np.clip(0.5 - sd, 0, 1) * wear)[..., None]
    paint = np.array(rng.choice([[0.92, 0.92, 0.9], [0.93, 0.78, 0.2], [0.85, 0.85, 0.85]]))
    return img * (1 - alpha) + (paint * (0.8 + 0.2 * img)) * alpha


def _shadow(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> np.ndarray:
    """A soft cast shadow: a pole's band, a wall's half-plane or dappled foliage."""
    size = img.shape[0]
    blur = rng.uniform(2.5, 8.0)
    style = rng.random()
    if style < 0.75:
        xy = _curve(rng, size, straight=True)
        width = rng.uniform(0.05, 0.4) * size if style < 0.5 else 2.5 * size
        shade = np.clip(0.5 - _line_field(xy, width, size, 1.0), 0, 1)
    else:
        shade = (_fbm(rng, (size, size), 3.0) > rng.uniform(-0.3, 0.8)).astype(np.float32)
    soft = ndi.gaussian_filter(shade, blur)
    return img * (1.0 - rng.uniform(0.2, 0.5) * soft)[..., None]


def _streaks(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> np.ndarray:
    """Rain run-down stains: soft, diffuse, vertical."""
    size = img.shape[0]
    noise = _fbm(rng, (size, size), 2.5)
    streak = ndi.gaussian_filter1d(noise, size * 0.15, axis=0)
    streak = np.clip((streak - streak.mean()) / (streak.std() + 1e-6) - 0.5, 0, None)
    return img * (1.0 - rng.uniform(0.1, 0.3) * np.tanh(streak))[..., None]


def _implant(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> np.ndarray:
    """Metal (plate, screws or a cerclage wire): bright and hard-edged in an X-ray."""
    size = img.shape[0]
    bone = ctx["bones"][int(rng.integers(len(ctx["bones"])))]
    if rng.random() < 0.5:
        sd = _line_field(_curve(rng, size, straight=False), rng.uniform(1.5, 3.0), size, 1.0)
    else:
        t, c = bone["t"], bone["c"] + bone["n"] * (bone["off"] + bone["r0"] * 1.1)
        length = rng.uniform(0.3, 0.6) * size
        s = np.arange(-length / 2, length / 2, 1.0)[:, None]
        sd = _line_field(c + s * t, rng.uniform(3, 7), size, 1.0)
    alpha = np.clip(0.5 - sd, 0, 1)
    return img * (1 - alpha[..., None]) + rng.uniform(0.85, 1.0) * alpha[..., None]


def _cast(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> np.ndarray:
    size = img.shape[0]
    xy = _curve(rng, size, straight=True)
    sd = _line_field(xy, rng.uniform(0.3, 0.7) * size, size, size * 2.0)
    soft = ndi.gaussian_filter(np.clip(0.5 - sd, 0, 1), 4.0)
    mesh = 1.0 + 0.3 * _fbm(rng, img.shape[:2], 0.9)
    return img + (rng.uniform(0.06, 0.15) * soft * mesh)[..., None]


def _collimation(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> np.ndarray:
    """The straight edge of the collimated field, with a bright unexposed band."""
    size = img.shape[0]
    xy = _curve(rng, size, straight=True)
    sd = _line_field(xy, rng.uniform(0.1, 0.4) * size, size, size * 2.0)
    band = np.clip(0.5 - sd, 0, 1)
    return img * (1 - band[..., None]) + rng.uniform(0.6, 0.9) * band[..., None]


def _skin_fold(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> np.ndarray:
    size = img.shape[0]
    sd = _line_field(_curve(rng, size, straight=False), rng.uniform(2, 5), size, 1.0)
    soft = ndi.gaussian_filter(np.clip(0.5 - sd, 0, 1), rng.uniform(1.5, 3.0))
    return img * (1.0 + rng.choice([-1, 1]) * 0.25 * soft)[..., None]


Distractor = Callable[[np.random.Generator, np.ndarray, dict], np.ndarray]


class DistractorSpec(NamedTuple):
    """One row of a distractor table."""

    draw: Distractor
    weight: float  # relative probability of being picked
    before_crack: bool  # drawn before the crack (True) or with the lighting, after it


SURFACE_DISTRACTORS: dict[str, DistractorSpec] = {
    "wire": DistractorSpec(_wire, 1.0, True),
    "cable": DistractorSpec(_cable, 0.8, True),
    "scratch": DistractorSpec(_scratch, 1.0, True),
    "joint": DistractorSpec(_joint, 1.0, True),
    "paint": DistractorSpec(_paint, 0.6, True),
    "streaks": DistractorSpec(_streaks, 0.5, True),
    "shadow": DistractorSpec(_shadow, 1.0, False),
}
XRAY_DISTRACTORS: dict[str, DistractorSpec] = {
    "implant": DistractorSpec(_implant, 1.0, True),
    "cast": DistractorSpec(_cast, 0.7, True),
    "collimation": DistractorSpec(_collimation, 0.6, True),
    "skin_fold": DistractorSpec(_skin_fold, 1.0, True),
}


@dataclass(frozen=True)
class KindSpec:
    """A surface kind: its texture, its crack geometry and its table of look-alikes."""

    texture: Callable[[np.random.Generator, int], tuple[np.ndarray, dict]]
    cracks: Callable[[np.random.Generator, int, dict], list[TrueCrack]]
    distractors: dict[str, DistractorSpec]
    xray: bool = False


def _surface(texture: Callable[[np.random.Generator, int], tuple[np.ndarray, dict]], *style):
    """A surface kind: its texture, cracks of ``CrackStyle(*style)``, the surface look-alikes."""
    cracks = functools.partial(_surface_cracks, style=CrackStyle(*style))
    return KindSpec(texture, cracks, SURFACE_DISTRACTORS)


KINDS: dict[str, KindSpec] = {
    # surface: texture, then CrackStyle(wmin, wmax, wiggle, kinks, border, branch_p)
    "concrete": _surface(_concrete, 1.6, 11, 0.07, 0.012, 0.55, (0.35, 0.35, 0.2, 0.1)),
    "asphalt": _surface(_asphalt, 1.8, 13, 0.09, 0.02, 0.6, (0.3, 0.35, 0.22, 0.13)),
    "rock": _surface(_rock, 1.6, 12, 0.05, 0.02, 0.7, (0.45, 0.35, 0.15, 0.05)),
    "masonry": _surface(_masonry, 1.6, 10, 0.06, 0.03, 0.7, (0.5, 0.3, 0.15, 0.05)),
    "xray": KindSpec(_xray, _xray_cracks, XRAY_DISTRACTORS, xray=True),
}


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _draw_crack(
    rng: np.random.Generator, img: np.ndarray, sd: np.ndarray, wl: np.ndarray, xray: bool
) -> np.ndarray:
    """Darken the image over the cracks: exactly the mask's pixels get coverage >= 0.5.

    ``alpha = clip(0.5 - sd, 0, 1)`` is an anti-aliased coverage of the crack (sd: signed
    distance to its edge), so the dark area is the mask's geometry; deeper (wider) cracks and
    their centres are darker, and dirt inside varies the tone.
    """
    near = np.isfinite(sd)
    alpha = np.zeros_like(sd, dtype=np.float32)
    alpha[near] = np.clip(0.5 - sd[near], 0, 1)
    depth = np.zeros_like(alpha)
    depth[near] = np.clip(-sd[near] / (wl[near] / 2 + 0.5), 0, 1)
    size = img.shape[0]
    dirt = 1.0 + 0.25 * _fbm(rng, (size, size), 0.8)
    if xray:
        # A fracture lets more radiation through: the bone's brightness drops towards the
        # soft tissue's.
        strength = rng.uniform(0.5, 0.85)
        dark = strength * (0.7 + 0.3 * depth) * np.clip(dirt, 0.7, 1.3)
        return img - (dark * alpha)[..., None] * np.clip(img - 0.1, 0, None)
    strength = rng.uniform(0.6, 0.88)
    narrow = np.clip(0.55 + 0.12 * wl, 0, 1)
    dark = strength * narrow * (0.6 + 0.4 * depth**0.7) * np.clip(dirt, 0.5, 1.5)
    dark = np.clip(dark, 0, 0.95)
    tone = _colour(rng, 1.0, 0.08)  # crack interiors tend to be a little warmer (dirt, moisture)
    cracked = img * (1 - dark[..., None]) * tone
    a = alpha[..., None]
    return img * (1 - a) + cracked * a


def _finish(rng: np.random.Generator, img: np.ndarray, xray: bool) -> np.ndarray:
    """Camera and lighting: gradients, vignetting, colour cast, blur, noise, gamma."""
    size = img.shape[0]
    xx, yy = _grid(size)
    phi = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - size / 2) * np.cos(phi) + (yy - size / 2) * np.sin(phi)) / size
    r2 = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size / 2) ** 2
    light = 1.0 + rng.uniform(0, 0.5) * ramp - rng.uniform(0, 0.25) * r2
    img = img * light[..., None]
    if not xray:
        img = img * rng.normal(1.0, 0.02, 3).astype(np.float32)
    sigma = rng.uniform(0.0, 1.1)
    if sigma > 0.3:
        img = ndi.gaussian_filter(img, (sigma, sigma, 0))
    noise = rng.uniform(0.004, 0.03)
    grain = rng.standard_normal((size, size, 1 if xray else 3), dtype=np.float32)
    img = img + noise * grain
    # Gamma through a lookup table: much cheaper than a float power over every pixel.
    lut = (np.linspace(0.0, 1.0, 4096) ** rng.uniform(0.8, 1.25) * 255.0 + 0.5).astype(np.uint8)
    return lut[(np.clip(img, 0.0, 1.0) * 4095.0 + 0.5).astype(np.int32)]


def render_sample(
    rng: np.random.Generator, size: int, kind: str = "concrete", with_crack: bool = True
) -> SyntheticSample:
    """Render one image, its exact crack mask and the cracks' true geometry.

    Args:
        rng: the random generator (everything drawn comes from it).
        size: image side in px (square images).
        kind: a key of ``KINDS``, or ``"mixed"`` for one of ``MIXED_KINDS`` per image.
        with_crack: whether to draw cracks; look-alike distractors appear either way, with the
            same probabilities.

    Returns:
        The sample; with ``with_crack`` its mask holds at least one pixel.

    Raises:
        ValueError: for an unknown kind or a size under 16 px.
    """
    if kind == "mixed":
        kind = str(rng.choice(MIXED_KINDS))
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(SYNTH_KINDS)}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    spec = KINDS[kind]
    img, ctx = spec.texture(rng, size)
    img = img.astype(np.float32)
    names = list(spec.distractors)
    weights = np.array([spec.distractors[n].weight for n in names])
    count = int(rng.choice(4, p=[0.25, 0.4, 0.23, 0.12]))
    chosen = [
        str(x) for x in rng.choice(names, size=count, replace=False, p=weights / weights.sum())
    ]
    for name in chosen:
        row = spec.distractors[name]
        if row.before_crack:
            img = row.draw(rng, img, ctx)
    cracks: list[TrueCrack] = []
    mask = np.zeros((size, size), bool)
    if with_crack:
        for _ in range(10):
            cracks = spec.cracks(rng, size, ctx)
            if cracks:
                sd, wl = crack_field(cracks, size, reach=1.0)
                mask = sd <= 0.0
                if mask.sum() >= 8:
                    break
            cracks = []
        if not cracks:  # pragma: no cover - geometry makes this vanishingly rare
            raise RuntimeError("could not place a crack; try another seed")
        img = _draw_crack(rng, img, sd, wl, spec.xray)
    for name in chosen:
        row = spec.distractors[name]
        if not row.before_crack:
            img = row.draw(rng, img, ctx)
    image = _finish(rng, img, spec.xray)
    return SyntheticSample(image, mask, cracks, kind, chosen)


# --------------------------------------------------------------------------------------------
# Truth lookup (for measuring width estimators against the geometry)
# --------------------------------------------------------------------------------------------


@dataclass
class TruthMatch:
    """True widths at measured skeleton points (see ``match_truth``).

    Attributes:
        width: true width at the nearest centre-line point (NaN where unmatched).
        distance: distance from each point to that centre-line point, px.
        crack: the matched crack's number (0 where unmatched).
        well_defined: True where the width is well-defined: matched, and not near a free tip,
            a junction, another branch or crack, or the image border.
    """

    width: np.ndarray
    distance: np.ndarray
    crack: np.ndarray
    well_defined: np.ndarray


def _dense(line: CentreLine, step: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = line.s
    grid = np.arange(0.0, s[-1] + 1e-9, step)
    if grid[-1] < s[-1]:
        grid = np.append(grid, s[-1])
    xy = np.stack([np.interp(grid, s, line.xy[:, 0]), np.interp(grid, s, line.xy[:, 1])], 1)
    return xy, np.interp(grid, s, line.width), grid


def match_truth(
    cracks: list[TrueCrack],
    points_xy: np.ndarray,
    size: int,
    *,
    tip_margin: float = 3.0,
    junction_margin: float = 3.0,
    max_distance: float = 2.0,
) -> TruthMatch:
    """Look up the true width for measured points (e.g. skeleton pixels) of a rendered mask.

    Each point is matched to the nearest point of the true centre lines (sampled every 0.25
    px). Width is ill-defined, and the point is flagged as not ``well_defined``, where it is
    matched farther than ``max(max_distance, w/2)`` px away, or its centre-line point lies
    within ``tip_margin + w`` px of arc length of a free tip (tips taper and end in a round
    cap), within ``junction_margin`` px plus both half-widths of a branch junction, within
    ``junction_margin`` px plus both half-widths of another branch or crack, or within
    ``w + 2`` px of the image border (the mask is cut there).

    Args:
        cracks: the true cracks of the image.
        points_xy: ``(M, 2)`` measured points, x = column, y = row.
        size: the image side in px.
        tip_margin, junction_margin, max_distance: the exclusion margins above, px.
    """
    pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
    m = len(pts)
    if not cracks or m == 0:
        nan = np.full(m, np.nan)
        return TruthMatch(nan, nan.copy(), np.zeros(m, int), np.zeros(m, bool))
    xy_all, w_all, ok_all, crack_all, owner_all = [], [], [], [], []
    lines = [(c, bi, b) for c in cracks for bi, b in enumerate(c.branches)]
    dense = [_dense(b) for _, _, b in lines]
    for li, ((c, _bi, b), (xy, w, s)) in enumerate(zip(lines, dense, strict=True)):
        ok = np.ones(len(xy), bool)
        length = s[-1]
        if b.start_at_tip:
            ok &= s > tip_margin + w
        if b.end_at_tip:
            ok &= (length - s) > tip_margin + w
        border = np.minimum(xy.min(axis=1) + 0.5, size - 0.5 - xy.max(axis=1))
        ok &= border > w + 2.0
        # Junctions and other lines: a point near any other centre line (its own parent and
        # children included) is ambiguous.
        for lj, (xy2, w2, _s2) in enumerate(dense):
            if lj == li:
                continue
            d, j = cKDTree(xy2).query(xy)
            ok &= d > junction_margin + (w + w2[j]) / 2.0
        xy_all.append(xy)
        w_all.append(w)
        ok_all.append(ok)
        crack_all.append(np.full(len(xy), c.crack))
        owner_all.append(np.full(len(xy), li))
    xy = np.concatenate(xy_all)
    w = np.concatenate(w_all)
    ok = np.concatenate(ok_all)
    crack = np.concatenate(crack_all)
    d, j = cKDTree(xy).query(pts)
    matched = d <= np.maximum(max_distance, w[j] / 2.0)
    width = np.where(matched, w[j], np.nan)
    return TruthMatch(width, d, np.where(matched, crack[j], 0), matched & ok[j])


# --------------------------------------------------------------------------------------------
# Data set on disk
# --------------------------------------------------------------------------------------------


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # Fixed settings: the bytes depend only on the pixels, so a seed reproduces the files.
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _csv_text(header: tuple[str, ...], rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _fixed(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}"


def crack_rows(stem: str, cracks: list[TrueCrack]) -> list[tuple]:
    """Rows of ``cracks.csv`` for one image (columns ``CRACK_COLUMNS``)."""
    return [
        (
            stem,
            c.crack,
            len(c.branches),
            _fixed(c.length_px),
            _fixed(c.mean_width_px),
            _fixed(c.median_width_px),
            _fixed(c.max_width_px),
        )
        for c in cracks
    ]


def profile_rows(cracks: list[TrueCrack]) -> list[tuple]:
    """Rows of ``profiles/<stem>.csv`` (columns ``PROFILE_COLUMNS``): every centre-line vertex."""
    rows = []
    for c in cracks:
        for bi, b in enumerate(c.branches):
            for s, (x, y), w in zip(b.s, b.xy, b.width, strict=True):
                rows.append((c.crack, bi, b.parent, _fixed(s), _fixed(x), _fixed(y), _fixed(w, 4)))
    return rows


def image_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed of image ``index`` of a data set generated with ``seed``."""
    return np.random.SeedSequence([int(seed), int(index)])


def _render_chunk(job: tuple) -> list[tuple]:
    """Render and write images ``indices`` (run in a worker process or inline)."""
    out, indices, labels, size, seed, kind, digits = job
    out = Path(out)
    results = []
    for index, with_crack in zip(indices, labels, strict=True):
        rng = np.random.default_rng(image_seed(seed, index))
        sample = render_sample(rng, size, kind, bool(with_crack))
        stem = f"{kind}_{index:0{digits}d}"
        folder = "crack" if with_crack else "no_crack"
        # Not fsynced one by one: the folder's marker says "complete" only after every file is
        # written, and a generated set is cheap to make again.
        atomic_write_bytes(out / folder / f"{stem}.png", _png_bytes(sample.image), durable=False)
        if with_crack:
            mask = (sample.mask.astype(np.uint8)) * 255
            atomic_write_bytes(out / "masks" / f"{stem}.png", _png_bytes(mask), durable=False)
            atomic_write_text(
                out / "profiles" / f"{stem}.csv",
                _csv_text(PROFILE_COLUMNS, profile_rows(sample.cracks)),
                durable=False,
            )
        results.append(
            (
                index,
                stem,
                folder,
                sample.kind,
                "+".join(sample.distractors),
                crack_rows(stem, sample.cracks),
            )
        )
    return results


_GENERATED = re.compile(r"^(" + "|".join(SYNTH_KINDS) + r")_\d+\.(png|csv)$")
_SUBDIRS = ("crack", "no_crack", "masks", "profiles")
_TOP_FILES = (CRACKS_CSV, "images.csv", MARKER)


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless it is a previous synth output and ``overwrite`` is set.

    Overwriting deletes only the files this generator writes (by folder and name pattern);
    anything else in the folder is left alone.
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{out}: folder is not empty; choose a new folder or pass --overwrite to replace a "
            "previous synth output"
        )
    if not (out / MARKER).is_file():
        raise FileExistsError(
            f"{out}: not a fracturekit synth output (no {MARKER}); refusing to overwrite files "
            "it did not write"
        )
    for sub in _SUBDIRS:
        folder = out / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and _GENERATED.match(path.name):
                path.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()
    for name in _TOP_FILES:
        (out / name).unlink(missing_ok=True)


def generate_dataset(
    out: str | Path,
    n: int,
    size: int,
    seed: int,
    kind: str = "concrete",
    crack_fraction: float = 0.5,
    *,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Write a synthetic crack data set as a class-folder tree.

    Layout of ``out``: ``crack/`` and ``no_crack/`` (RGB PNGs ``<kind>_<index>.png``), ``masks/``
    (binary 0/255 PNGs named like their crack images), ``profiles/<stem>.csv`` (every
    centre-line vertex of every crack: crack, branch, parent branch, arc length ``s``, ``x``,
    ``y``, true ``width_px``), ``cracks.csv`` (one row per crack: true length and length-weighted
    mean / median and maximum width), ``images.csv`` (each image's class, surface kind and
    distractors) and ``synth.json`` (the parameters; it marks the folder as generated).

    Exactly ``round(n * crack_fraction)`` images have cracks; which ones is drawn from ``seed``.
    Image ``i`` is rendered from ``SeedSequence([seed, i])``: the same arguments give
    byte-identical files, whatever the number of workers.

    Args:
        out: output folder; created if missing. A non-empty folder is refused unless
            ``overwrite`` is set and it holds a previous output (only generated files are
            replaced).
        n: number of images.
        size: image side in px.
        seed: random seed.
        kind: a key of ``KINDS`` or ``"mixed"``.
        crack_fraction: share of images with cracks, in [0, 1].
        overwrite: replace a previous synth output in ``out``.
        workers: processes to render with (default: up to 2, by CPU count; 1 renders inline).

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: for bad arguments. FileExistsError / NotADirectoryError: for an unusable
        ``out``.
    """
    from fracturekit import __version__

    out = Path(out)
    _check_dataset_args(n, size, kind, crack_fraction)
    _prepare_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    params = {
        "generator": "fracturekit.synthetic",
        "version": __version__,
        "n": n,
        "size": size,
        "seed": seed,
        "kind": kind,
        "crack_fraction": crack_fraction,
        "width_convention": "mask = pixel centres within w/2 of the centre line",
    }
    # Written first (as incomplete) so an interrupted run can still be overwritten.
    atomic_write_text(out / MARKER, json.dumps({**params, "complete": False}, indent=2) + "\n")
    n_crack = int(round(n * crack_fraction))
    labels = np.zeros(n, bool)
    labels[np.random.default_rng(np.random.SeedSequence([int(seed)])).permutation(n)[:n_crack]] = 1
    digits = max(6, len(str(n - 1)))
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, min(int(workers), n // 16 or 1))
    chunk = max(1, min(64, -(-n // (workers * 4))))
    jobs = [
        (str(out), list(range(i, min(i + chunk, n))), labels[i : i + chunk].tolist())
        + (size, seed, kind, digits)
        for i in range(0, n, chunk)
    ]
    results = _render_all(jobs, workers)
    rows = [row for r in results for row in r[5]]
    atomic_write_text(out / CRACKS_CSV, _csv_text(CRACK_COLUMNS, rows))
    atomic_write_text(
        out / "images.csv",
        _csv_text(
            ("image", "file", "class", "kind", "distractors", "cracks"),
            [(r[1], f"{r[2]}/{r[1]}.png", r[2], r[3], r[4], len(r[5])) for r in results],
        ),
    )
    summary = {
        **params,
        "complete": True,
        "crack_images": n_crack,
        "no_crack_images": n - n_crack,
        "cracks": len(rows),
    }
    atomic_write_text(out / MARKER, json.dumps(summary, indent=2) + "\n")
    return out


def _check_dataset_args(n: int, size: int, kind: str, crack_fraction: float) -> None:
    if kind not in SYNTH_KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(SYNTH_KINDS)}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    if not 0.0 <= crack_fraction <= 1.0:
        raise ValueError(f"crack_fraction must lie in [0, 1], got {crack_fraction}")


def _render_all(jobs: list[tuple], workers: int) -> list[tuple]:
    """Every chunk's rows, in image order (inline with one worker, else in processes)."""
    results: list[tuple] = []
    if workers == 1:
        for job in jobs:
            results.extend(_render_chunk(job))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        method = "fork" if "fork" in mp.get_all_start_methods() else None
        ctx = mp.get_context(method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for part in pool.map(_render_chunk, jobs):
                results.extend(part)
    results.sort(key=lambda r: r[0])
    return results
