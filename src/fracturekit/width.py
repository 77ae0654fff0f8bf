"""Crack length and width profiles from binary masks (numpy, scipy and scikit-image only).

Per mask: the 8-connected components of at least ``min_area`` px are the cracks. Each is
skeletonised (``skimage.morphology.skeletonize``, Lee's method: Zhang's erases 2-px diagonal
bands), the skeleton becomes a graph of pixel chains between end points and junctions, and
spurs (chains from a free end to a junction shorter than ``spur_factor`` times the local
half-width plus 2 px) are pruned repeatedly, because edge roughness grows them. Then, per crack:

* length: the sum of the chains' lengths, each measured along its pixel path smoothed with a
  Gaussian (sigma 1 px; the plain 1 / sqrt(2) step count overestimates a 22.5 degree line by
  8%), plus, at every free end, how far the crack runs on beyond the skeleton's end (to the
  image border for a crack cut by it; see ``_end_extension``);
* width at every skeleton pixel but junctions (width is undefined there), by one of
  ``METHODS``:

  - ``edt``: twice the Euclidean distance from the skeleton to the crack's sub-pixel edge,
    refined to the ridge of that distance across the crack (``_widths_edt``);
  - ``orthogonal``: the run length of the mask, sampled with bilinear interpolation, along the
    normal to the local skeleton direction; the shortest run within 20 degrees of the normal
    (``_widths_orthogonal``).

Both follow the width convention of docs/design.md: a crack whose mask holds the pixel centres
within ``w/2`` of its centre line is ``w`` px wide, so a straight 1-px line is 1 px wide.
Accuracy on synthetic cracks of known width: ``benchmarks/width_accuracy.py``. Severity follows
the AASHTO crack-width classes of the mean width and needs a scale (px per mm).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from fracturekit._files import atomic_write, atomic_write_text

# AASHTO crack-width classes, narrowest first (see ``severity``).
SEVERITY_CLASSES = ("narrow", "moderate", "wide")
EIGHT = np.ones((3, 3), bool)
SMOOTH_SIGMA = 2.0
WIDTH_COLUMNS = (
    "image",
    "crack",
    "length_px",
    "mean_width_px",
    "median_width_px",
    "max_width_px",
    "p95_width_px",
)
MM_COLUMNS = (
    "length_mm",
    "mean_width_mm",
    "median_width_mm",
    "max_width_mm",
    "p95_width_mm",
    "severity",
)


@dataclass
class CrackMeasurement:
    """Length and width profile of one crack (one connected component of the mask).

    Attributes:
        crack: 1-based crack number within the mask (components in raster order).
        length_px: skeleton length after spur pruning.
        widths_px: width at each profile point (skeleton pixels less junctions), NaN where the
            method found no width.
        skeleton_rc: ``(N, 2)`` row, column of the profile points.
        segment: ``(N,)`` index of the skeleton chain each point lies on.
        s_px: ``(N,)`` arc length of each point along its chain.
        area_px: the component's pixel count.
        mean_width_px, median_width_px, max_width_px, p95_width_px: statistics of the finite
            widths.
        px_per_mm: the scale, when given; the ``_mm`` fields and ``severity`` are then set.
        severity: AASHTO class of the crack's mean width (narrow < 1.6 mm <= moderate <= 3.2
            mm < wide), only when the scale is known.
    """

    crack: int
    length_px: float
    widths_px: np.ndarray
    skeleton_rc: np.ndarray
    segment: np.ndarray
    s_px: np.ndarray
    area_px: int
    mean_width_px: float
    median_width_px: float
    max_width_px: float
    p95_width_px: float
    px_per_mm: float | None = None
    length_mm: float | None = None
    mean_width_mm: float | None = None
    median_width_mm: float | None = None
    max_width_mm: float | None = None
    p95_width_mm: float | None = None
    severity: str | None = None
    # The pruned skeleton's pixel chains, (row, col) each: for plots and diagnostics.
    chains: list[np.ndarray] = field(default_factory=list, repr=False)

    def row(self, image: str) -> dict[str, object]:
        """The crack's row of ``widths.csv``."""
        out: dict[str, object] = {
            "image": image,
            "crack": self.crack,
            "length_px": _fmt(self.length_px),
            "mean_width_px": _fmt(self.mean_width_px),
            "median_width_px": _fmt(self.median_width_px),
            "max_width_px": _fmt(self.max_width_px),
            "p95_width_px": _fmt(self.p95_width_px),
        }
        if self.px_per_mm is not None:
            for name in MM_COLUMNS[:-1]:
                out[name] = _fmt(getattr(self, name))
            out["severity"] = self.severity
        return out


def severity(width_mm: float) -> str:
    """AASHTO class of a crack width in mm: narrow (< 1.6), moderate (1.6-3.2), wide (> 3.2).

    1.6 mm and 3.2 mm themselves are moderate.
    """
    if width_mm < 1.6:
        return "narrow"
    if width_mm <= 3.2:
        return "moderate"
    return "wide"


def _fmt(v: float | None) -> str:
    if v is None or not np.isfinite(v):
        return ""
    return f"{v:.3f}"


# --------------------------------------------------------------------------------------------
# Skeleton graph
# --------------------------------------------------------------------------------------------


def _adjacency(skel: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """Pixels of a skeleton and their neighbour lists.

    Diagonal links are dropped where the two pixels also connect through a shared 4-neighbour:
    otherwise every staircase corner would be a three-way junction.
    """
    rc = np.argwhere(skel)
    index = np.full(skel.shape, -1, np.int64)
    index[rc[:, 0], rc[:, 1]] = np.arange(len(rc))
    h, w = skel.shape
    nbrs: list[list[int]] = [[] for _ in range(len(rc))]
    pad = np.pad(skel, 1)
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        r2, c2 = rc[:, 0] + dr, rc[:, 1] + dc
        ok = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < w)
        ok[ok] = skel[r2[ok], c2[ok]]
        if dr and dc:
            # Shared 4-neighbours of (r, c) and (r + 1, c + dc): (r, c + dc) and (r + 1, c).
            a = pad[rc[:, 0] + 1, rc[:, 1] + 1 + dc]
            b = pad[rc[:, 0] + 2, rc[:, 1] + 1]
            ok &= ~(a | b)
        for i in np.nonzero(ok)[0]:
            j = int(index[r2[i], c2[i]])
            nbrs[i].append(j)
            nbrs[j].append(int(i))
    return rc, nbrs


def _chains(rc: np.ndarray, nbrs: list[list[int]]) -> list[list[int]]:
    """Split a skeleton graph into chains of pixel indices running node to node.

    Nodes are pixels whose degree is not 2; a closed loop without nodes is one chain that starts
    and ends on the same pixel.
    """
    deg = np.array([len(n) for n in nbrs])
    node = deg != 2
    seen_edges: set[tuple[int, int]] = set()
    chains: list[list[int]] = []

    def walk(a: int, b: int) -> list[int]:
        path = [a, b]
        seen_edges.add((a, b))
        seen_edges.add((b, a))
        prev, cur = a, b
        while not node[cur]:
            nxt = nbrs[cur][0] if nbrs[cur][0] != prev else nbrs[cur][1]
            if (cur, nxt) in seen_edges:
                break
            seen_edges.add((cur, nxt))
            seen_edges.add((nxt, cur))
            path.append(nxt)
            prev, cur = cur, nxt
        return path

    for a in np.nonzero(node)[0]:
        if deg[a] == 0:
            chains.append([int(a)])
        for b in nbrs[a]:
            if (a, b) not in seen_edges:
                chains.append(walk(int(a), b))
    for a in np.nonzero(~node)[0]:  # loops made only of degree-2 pixels
        b = nbrs[a][0]
        if (a, b) not in seen_edges:
            chains.append(walk(int(a), b))
    return chains


def _chain_length(points: np.ndarray) -> float:
    if len(points) < 2:
        return 0.0
    smooth = ndi.gaussian_filter1d(points.astype(np.float64), 1.0, axis=0, mode="nearest")
    # Keep the chain's end points where they are: smoothing pulls them inwards.
    smooth[0], smooth[-1] = points[0], points[-1]
    return float(np.hypot(*np.diff(smooth, axis=0).T).sum())


def _end_extension(
    comp: np.ndarray,
    boundary: _Boundary,
    chain_pts: np.ndarray,
    border: tuple[float, float, float, float],
) -> float:
    """How far the crack continues beyond a free end of its skeleton.

    Skeletonisation stops short of a crack's tip (by up to the local half-width, and by several
    pixels on thin staircase lines). A ray along the end's outward direction is marched through
    the mask to its 0.5 crossing at ``r``; the centre line ends where the crack's inscribed disc
    touches that edge (see below). Where the crossing is the image border (the crack is cut by
    it), the centre line runs on to the border and the extension is ``r``.

    ``border`` is ``(top, left, bottom, right)`` of the image in ``comp``'s coordinates.
    """
    k = min(len(chain_pts), 6)
    if k < 2:
        return 0.0
    end = chain_pts[-1].astype(np.float64)
    direction = end - chain_pts[-k:-1].astype(np.float64).mean(axis=0)
    norm = float(np.hypot(*direction))
    if norm < 1e-9:
        return 0.0
    direction /= norm
    step = 0.25
    t = np.arange(0.0, 2.0 * max(comp.shape), step)
    ray = end[:, None] + direction[:, None] * t[None, :]
    v = ndi.map_coordinates(comp.astype(np.float32), ray, order=1, mode="constant", cval=0.0)
    j = int(np.argmax(v < 0.5))
    if j == 0:
        return 0.0
    va, vb = v[j - 1], v[j]
    r = float(t[j - 1] + step * (va - 0.5) / max(va - vb, 1e-9))
    q = end + r * direction
    top, left, bottom, right = border
    at_border = min(abs(q[0] - top), abs(q[1] - left), abs(q[0] - bottom), abs(q[1] - right))
    if at_border < 0.3:
        return r
    # Where does the centre line end? Where the inscribed disc touches the crack's end: the
    # first point along the ray whose distance to the end edge, r - t, is no more than the
    # half-width across the ray there. On a round cap of radius R that is the cap's centre
    # (r - t = R); on a tapering tip it is within about a pixel of the tip. When the skeleton
    # overshot a round cap's centre by delta (r = R - delta), the extension is -delta.
    t_grid = np.arange(0.0, r, 0.5)
    pts = end[None, :] + t_grid[:, None] * direction[None, :]
    normal = np.tile([-direction[1], direction[0]], (len(t_grid), 1))
    half = 0.5 * _widths_orthogonal(comp, boundary, pts, normal)
    gap = (r - t_grid) - np.where(np.isfinite(half), half, 0.0)
    if gap[0] <= 0:
        return max(float(gap[0]), -float(half[0]) if np.isfinite(half[0]) else 0.0)
    below = np.nonzero(gap <= 0)[0]
    if len(below) == 0:
        return max(r - 0.5, 0.0)
    i = int(below[0])
    return float(t_grid[i - 1] + 0.5 * gap[i - 1] / (gap[i - 1] - gap[i]))


def _prune(skel: np.ndarray, edt: np.ndarray, spur_factor: float) -> np.ndarray:
    """Remove spurs: chains from a free end to a junction that are short for the local width."""
    skel = skel.copy()
    for _ in range(20):
        rc, nbrs = _adjacency(skel)
        if len(rc) == 0:
            break
        deg = np.array([len(n) for n in nbrs])
        removed = False
        for chain in _chains(rc, nbrs):
            a, b = chain[0], chain[-1]
            if deg[a] == 1 and deg[b] >= 3:
                junction = b
            elif deg[b] == 1 and deg[a] >= 3:
                junction = a
            else:
                continue
            jr, jc = rc[junction]
            limit = spur_factor * edt[jr, jc] + 2.0
            if _chain_length(rc[chain]) < limit:
                body = [i for i in chain if i != junction]
                skel[rc[body, 0], rc[body, 1]] = False
                removed = True
        if not removed:
            break
    return skel


# --------------------------------------------------------------------------------------------
# Width methods
# --------------------------------------------------------------------------------------------


def _tangents(points: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Unit tangent (drow, dcol) along a chain, from its Gaussian-smoothed path."""
    if len(points) < 2:
        return np.tile([0.0, 1.0], (len(points), 1))
    smooth = ndi.gaussian_filter1d(points.astype(np.float64), sigma, axis=0, mode="nearest")
    t = np.gradient(smooth, axis=0)
    norm = np.hypot(t[:, 0], t[:, 1])
    bad = norm < 1e-9
    t[bad] = (points[-1] - points[0]).astype(np.float64)
    norm = np.hypot(t[:, 0], t[:, 1])
    norm[norm < 1e-9] = 1.0
    return t / norm[:, None]


class _Boundary:
    """The crack's sub-pixel boundary: the 0.5 contour of the mask's bilinear interpolation.

    The contour (marching squares) of a digital edge is a staircase whose corners stick up to
    about half a pixel into or out of the crack; any nearest-boundary distance picks the inner
    corners and underestimates. The contour is therefore smoothed along itself (Gaussian,
    ``SMOOTH_SIGMA`` vertices), but only where the crack is thick: around a 1-2 px crack the
    smoothing would pull the two sides of the contour together at its tips, and there the raw
    contour is already exact for axis-aligned lines.
    """

    def __init__(self, comp: np.ndarray, edt: np.ndarray | None = None) -> None:
        from scipy.spatial import cKDTree
        from skimage.measure import find_contours

        if edt is None:
            edt = ndi.distance_transform_edt(comp)
        # Local thickness: the largest inscribed radius within 2 px.
        thick = ndi.maximum_filter(edt, size=5)
        a_all, b_all = [], []
        for contour in find_contours(comp.astype(np.float32), 0.5):
            if len(contour) < 2:
                continue
            if len(contour) > 4 and np.allclose(contour[0], contour[-1]):
                ring = contour[:-1]
                smooth = ndi.gaussian_filter1d(ring, SMOOTH_SIGMA, axis=0, mode="wrap")
                r = ndi.map_coordinates(thick, ring.T, order=0, mode="nearest")
                blend = np.clip((r - 1.5) / 1.5, 0.0, 1.0)[:, None]
                ring = ring + blend * (smooth - ring)
                contour = np.concatenate([ring, ring[:1]])
            a_all.append(contour[:-1])
            b_all.append(contour[1:])
        self.a = np.concatenate(a_all) if a_all else np.zeros((0, 2))
        self.b = np.concatenate(b_all) if b_all else np.zeros((0, 2))
        self.tree = cKDTree(self.a) if len(self.a) else None

    def distance(self, pts: np.ndarray) -> np.ndarray:
        """Exact distance from each point to the boundary polylines."""
        if self.tree is None:
            return np.full(len(pts), np.inf)
        n = len(self.a)
        k = min(8, n)
        _, vi = self.tree.query(pts, k=k)
        vi = vi.reshape(len(pts), k)
        # The segments starting and ending at the nearest vertices; contour vertices lie on
        # pixel edges, at most 1 px apart, so the nearest boundary point is on one of them.
        seg = np.concatenate([vi, np.clip(vi - 1, 0, n - 1)], axis=1)
        a, b = self.a[seg], self.b[seg]
        ab = b - a
        ap = pts[:, None, :] - a
        t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
        foot = a + t[..., None] * ab
        return np.hypot(*(pts[:, None, :] - foot).transpose(2, 0, 1)).min(axis=1)


def _widths_edt(
    comp: np.ndarray, boundary: _Boundary, points: np.ndarray, normals: np.ndarray
) -> np.ndarray:
    """Twice the Euclidean distance from the skeleton to the crack boundary, refined to the ridge.

    The plain EDT measures the distance to the nearest background pixel *centre*, which lies
    between the crack edge and about one pixel beyond it depending on the crack's direction
    (hence the textbook ``2 * EDT - 1`` is exact only for axis-aligned cracks and
    underestimates oblique wide ones by about 0.6 px). Here the distance is taken to the mask's
    sub-pixel boundary, the 0.5 contour of its bilinear interpolation (the same boundary the
    orthogonal method crosses), so a 1-px line is 1 px wide with no correction term. The
    skeleton pixel can sit up to half a pixel beside the true centre line, where the distance
    is ``w/2 - offset``; the distance across the crack is a tent of slope 1, so its peak follows
    from the distances one pixel either side along the normal:
    ``h = (d0 + max(d-, d+) + 1) / 2`` when the peak lies between the samples.
    """
    if len(points) == 0:
        return np.empty(0)
    p = points.astype(np.float64)
    inside = comp.astype(np.float32)

    def signed(q: np.ndarray) -> np.ndarray:
        # Negative outside the crack, so the distance across it is a tent of slope 1 even where
        # a thin crack is narrower than the 1-px sample spacing.
        d = boundary.distance(q)
        v = ndi.map_coordinates(inside, q.T, order=1, mode="constant", cval=0.0)
        return np.where(v >= 0.5, d, -d)

    d0 = boundary.distance(p)
    side = np.maximum(signed(p + normals), signed(p - normals))
    h = np.maximum(d0, (d0 + side + 1.0) / 2.0)
    return 2.0 * h


def _run_lengths(comp: np.ndarray, points: np.ndarray, normals: np.ndarray, reach: float):
    """Length of the mask's run (bilinear value >= 0.5) through each point along its normal."""
    chunk = 1024  # bounds the sample array (chunk x 2 x reach / 0.1) on large masks
    if len(points) > chunk:
        return np.concatenate(
            [
                _run_lengths(comp, points[i : i + chunk], normals[i : i + chunk], reach)
                for i in range(0, len(points), chunk)
            ]
        )
    step = 0.1
    t = np.arange(0.0, reach + step, step)
    rows = np.arange(len(points))
    total = np.zeros(len(points))
    for sign in (1.0, -1.0):
        coords = points[:, :, None] + sign * normals[:, :, None] * t[None, None, :]
        v = ndi.map_coordinates(
            comp, coords.transpose(1, 0, 2).reshape(2, -1), order=1, mode="constant", cval=0.0
        ).reshape(len(points), len(t))
        below = v < 0.5
        k = np.argmax(below, axis=1)  # first sample under the threshold
        closed = below[rows, k]
        k = np.maximum(k, 1)
        va, vb = v[rows, k - 1], v[rows, k]
        frac = np.where(va > vb, (va - 0.5) / np.maximum(va - vb, 1e-9), 0.0)
        total += np.where(closed, (k - 1 + frac) * step, np.nan)
    return total


# Directions tried around the normal (radians): the shortest run across a band is the
# perpendicular one, so a small fan makes the width robust to an imprecise skeleton direction.
FAN = (-0.35, -0.175, 0.0, 0.175, 0.35)


def _widths_orthogonal(
    comp: np.ndarray, boundary: _Boundary | None, points: np.ndarray, normals: np.ndarray
) -> np.ndarray:
    """Width as the run length of the mask across the crack (bilinear, threshold 0.5).

    The mask (1 inside, 0 outside) is sampled every 0.1 px along a line through each skeleton
    point; the run containing the point ends where the interpolated value falls below 0.5,
    located by linear interpolation between samples (a straight band of ``n`` pixel rows gives
    exactly ``n``). The line is the normal to the local skeleton direction, turned by up to 20
    degrees either way (``FAN``): the shortest of these runs is the width, since a run at an
    angle ``a`` off the true normal is ``w / cos(a)`` long.
    """
    if len(points) == 0:
        return np.empty(0)
    p = points.astype(np.float64)
    # A run through a skeleton point is rarely longer than a few inscribed diameters; runs not
    # closed within reach (the line runs along the crack) give NaN.
    radius = boundary.distance(p).max() if boundary is not None else 0.0
    reach = float(min(3.0 * radius + 4.0, max(comp.shape) + 2.0))
    mask = comp.astype(np.float32)
    runs = []
    for a in FAN:
        c, s_ = np.cos(a), np.sin(a)
        turned = np.stack(
            [c * normals[:, 0] - s_ * normals[:, 1], s_ * normals[:, 0] + c * normals[:, 1]], 1
        )
        runs.append(_run_lengths(mask, p, turned, reach))
    runs = np.stack(runs)  # (len(FAN), N)
    finite = np.isfinite(runs).any(axis=0)
    out = np.full(len(points), np.nan)
    out[finite] = np.nanmin(runs[:, finite], axis=0)
    return out


METHODS: dict[str, Callable[[np.ndarray, _Boundary, np.ndarray, np.ndarray], np.ndarray]] = {
    "edt": _widths_edt,
    "orthogonal": _widths_orthogonal,
}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def as_binary_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Check that ``mask`` is a 2-D binary array and return it as bool.

    Accepted: bool, or numbers taking at most two values of which the lower is 0 (0/1, 0/255,
    ...). A colour mask whose channels agree is reduced to one channel.

    Raises:
        ValueError: naming ``name``, when the array is not 2-D or holds more than two values.
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        if not (np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 0] == arr[..., 2])):
            raise ValueError(f"{name}: mask is a colour image; expected a binary (0/255) mask")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{name}: mask must be 2-D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    values = np.unique(arr)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0) or np.any(values < 0):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise ValueError(
            f"{name}: mask is not binary (values {shown}); expected 0 for background and one "
            "value (1 or 255) for crack"
        )
    return arr > 0


def _stats(widths: np.ndarray) -> tuple[float, float, float, float]:
    finite = widths[np.isfinite(widths)]
    if len(finite) == 0:
        return (float("nan"),) * 4
    return (
        float(finite.mean()),
        float(np.median(finite)),
        float(finite.max()),
        float(np.percentile(finite, 95)),
    )


def measure_mask(
    mask: np.ndarray,
    *,
    method: str = "edt",
    px_per_mm: float | None = None,
    min_area: int = 10,
    spur_factor: float = 1.5,
    name: str = "mask",
) -> list[CrackMeasurement]:
    """Measure every crack of a binary mask.

    Args:
        mask: 2-D binary array (bool, 0/1 or 0/255); True is crack.
        method: a key of ``METHODS``: ``"edt"`` or ``"orthogonal"``.
        px_per_mm: image scale; when given, the ``_mm`` fields and ``severity`` are filled.
        min_area: components smaller than this many pixels are ignored (noise).
        spur_factor: a skeleton spur (free end to junction) shorter than
            ``spur_factor * local half-width + 2`` px is pruned.
        name: what to call the mask in error messages (e.g. its path).

    Returns:
        One ``CrackMeasurement`` per component of at least ``min_area`` pixels, in raster order
        of their first pixel.

    Raises:
        ValueError: for an unknown method, a non-positive scale or a non-binary mask.
    """
    from skimage.morphology import skeletonize

    if method not in METHODS:
        raise ValueError(f"unknown width method {method!r}; choose from {', '.join(METHODS)}")
    if px_per_mm is not None and not (np.isfinite(px_per_mm) and px_per_mm > 0):
        raise ValueError(f"px_per_mm must be a positive number, got {px_per_mm}")
    binary = as_binary_mask(mask, name)
    labels, _ = ndi.label(binary, structure=EIGHT)
    out: list[CrackMeasurement] = []
    for label, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        r0, c0 = sl[0].start - 1, sl[1].start - 1
        comp = np.pad(labels[sl] == label, 1)
        area = int(comp.sum())
        if area < min_area:
            continue
        edt = ndi.distance_transform_edt(comp)
        skel = _prune(skeletonize(comp, method="lee") > 0, edt, spur_factor)
        rc, nbrs = _adjacency(skel)
        deg = np.array([len(x) for x in nbrs])
        chains = _chains(rc, nbrs)
        boundary = _Boundary(comp, edt)
        border = (-0.5 - r0, -0.5 - c0, binary.shape[0] - 0.5 - r0, binary.shape[1] - 0.5 - c0)
        length = _skeleton_length(comp, boundary, rc, deg, chains, border)
        points, normals, segment, s_px = _width_points(boundary, rc, deg, chains)
        widths = METHODS[method](comp, boundary, points, normals)
        mean, median, wmax, p95 = _stats(widths)
        m = CrackMeasurement(
            crack=len(out) + 1,
            length_px=length,
            widths_px=widths,
            skeleton_rc=points + [r0, c0],
            segment=segment,
            s_px=s_px,
            area_px=area,
            mean_width_px=mean,
            median_width_px=median,
            max_width_px=wmax,
            p95_width_px=p95,
            chains=[rc[c] + [r0, c0] for c in chains],
        )
        if px_per_mm is not None:
            _set_millimetres(m, float(px_per_mm))
        out.append(m)
    return out


def _skeleton_length(
    comp: np.ndarray,
    boundary: _Boundary,
    rc: np.ndarray,
    deg: np.ndarray,
    chains: list,
    border: tuple[float, float, float, float],
) -> float:
    """Length of the centre line: the chains, plus each free end's run to the crack's tip."""
    length = 0.0
    for chain in chains:
        pts = rc[chain]
        length += _chain_length(pts)
        if len(chain) > 1 and chain[0] != chain[-1]:
            if deg[chain[-1]] <= 1:
                length += _end_extension(comp, boundary, pts, border)
            if deg[chain[0]] <= 1:
                length += _end_extension(comp, boundary, pts[::-1], border)
    return length


def _width_points(
    boundary: _Boundary, rc: np.ndarray, deg: np.ndarray, chains: list
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where widths are measured: skeleton points off junctions, their normals, chain index
    and arc length along the chain."""
    pts, nrm, seg, s_all = [], [], [], []
    for si, chain in enumerate(chains):
        p = rc[chain]
        # Wide cracks have a skeleton that wanders at the scale of their width: estimate
        # the direction over about one width.
        half = float(np.median(boundary.distance(p.astype(np.float64))))
        tang = _tangents(p, sigma=float(np.clip(half, 2.0, 10.0)))
        steps = np.concatenate([[0.0], np.hypot(*np.diff(p, axis=0).T)])
        s = np.cumsum(steps)
        keep = deg[chain] < 3
        if chain[0] == chain[-1] and len(chain) > 1:  # a loop lists its start twice
            keep[-1] = False
        pts.append(p[keep])
        nrm.append(np.stack([-tang[keep, 1], tang[keep, 0]], axis=1))
        seg.append(np.full(int(keep.sum()), si))
        s_all.append(s[keep])
    points = np.concatenate(pts) if pts else np.empty((0, 2), np.int64)
    normals = np.concatenate(nrm) if nrm else np.empty((0, 2))
    # A pixel shared by two chains (their common end) is measured once.
    _, first = np.unique(points, axis=0, return_index=True)
    first = np.sort(first)
    segment = np.concatenate(seg)[first] if seg else np.empty(0, np.int64)
    s_px = np.concatenate(s_all)[first] if s_all else np.empty(0)
    return points[first], normals[first], segment, s_px


def _set_millimetres(m: CrackMeasurement, px_per_mm: float) -> None:
    m.px_per_mm = px_per_mm
    m.length_mm = m.length_px / px_per_mm
    m.mean_width_mm = m.mean_width_px / px_per_mm
    m.median_width_mm = m.median_width_px / px_per_mm
    m.max_width_mm = m.max_width_px / px_per_mm
    m.p95_width_mm = m.p95_width_px / px_per_mm
    # Severity classes grade a crack by its (average) width, as pavement distress protocols
    # do; the maximum is reported beside it.
    m.severity = severity(m.mean_width_mm) if np.isfinite(m.mean_width_mm) else None


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@dataclass
class WidthReport:
    """What ``measure_images`` wrote: ``widths.csv`` and per-image profiles and plots."""

    widths_csv: Path
    profiles: list[Path]
    plots: list[Path]
    measurements: dict[str, list[CrackMeasurement]]


def _position(m: CrackMeasurement) -> np.ndarray:
    """Distance along the crack for plotting: chain after chain, each from its own start."""
    pos = np.zeros(len(m.s_px))
    offset = 0.0
    for seg in np.unique(m.segment):
        sel = m.segment == seg
        pos[sel] = m.s_px[sel] + offset
        offset += float(m.s_px[sel].max()) + 1.0
    return pos


def profile_table(
    measurements: list[CrackMeasurement], px_per_mm: float | None = None
) -> tuple[list[str], list[list[object]]]:
    """Header and rows of ``profile_<image>.csv``: one row per skeleton point.

    Columns: ``crack, index, x, y, width_px[, width_mm], segment, s_px`` (``x`` = column, ``y`` =
    row; ``segment``: skeleton chain; ``s_px``: arc length along the chain).
    """
    header = ["crack", "index", "x", "y", "width_px"]
    if px_per_mm is not None:
        header.append("width_mm")
    header += ["segment", "s_px"]
    rows: list[list[object]] = []
    for m in measurements:
        for i, ((r, c), w, seg, s) in enumerate(
            zip(m.skeleton_rc, m.widths_px, m.segment, m.s_px, strict=True)
        ):
            row: list[object] = [m.crack, i, int(c), int(r), _fmt(w)]
            if px_per_mm is not None:
                row.append(_fmt(w / px_per_mm))
            row += [int(seg), _fmt(s)]
            rows.append(row)
    return header, rows


def _csv(header: list[str] | tuple[str, ...], rows: Iterable[Iterable[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def plot_profile(
    path: Path,
    name: str,
    measurements: list[CrackMeasurement],
    mask: np.ndarray,
    image: np.ndarray | None = None,
    *,
    method: str = "edt",
    px_per_mm: float | None = None,
) -> Path:
    """Save the image with its skeleton coloured by width beside the width profiles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    unit = "mm" if px_per_mm else "px"
    scale = 1.0 / px_per_mm if px_per_mm else 1.0
    fig = Figure(figsize=(11, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax_img, ax_prof = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    background = image if image is not None else mask.astype(np.uint8) * 255
    ax_img.imshow(background, cmap="gray", interpolation="nearest")
    widths = [m.widths_px * scale for m in measurements]
    finite = np.concatenate([w[np.isfinite(w)] for w in widths]) if widths else np.empty(0)
    vmax = float(finite.max()) if finite.size else 1.0
    scatter = None
    for m, w in zip(measurements, widths, strict=True):
        scatter = ax_img.scatter(
            m.skeleton_rc[:, 1], m.skeleton_rc[:, 0], c=w, s=3, cmap="plasma", vmin=0, vmax=vmax
        )
        if len(m.skeleton_rc):
            r, c = m.skeleton_rc[len(m.skeleton_rc) // 2]
            ax_img.annotate(str(m.crack), (c, r), color="cyan", fontsize=9, weight="bold")
    if scatter is not None:
        fig.colorbar(scatter, ax=ax_img, fraction=0.046, pad=0.04, label=f"width ({unit})")
    ax_img.set_title(f"{name}: {len(measurements)} crack(s)", fontsize=10)
    ax_img.set_axis_off()
    for m, w in zip(measurements, widths, strict=True):
        pos = _position(m) * scale
        colour = f"C{(m.crack - 1) % 10}"
        for i, seg in enumerate(np.unique(m.segment)):
            sel = m.segment == seg
            label = f"crack {m.crack}" if i == 0 else None
            ax_prof.plot(pos[sel], w[sel], lw=1, color=colour, label=label)
    ax_prof.set_xlabel(f"distance along the skeleton ({unit})")
    ax_prof.set_ylabel(f"width ({unit}, {method})")
    ax_prof.set_ylim(bottom=0)
    ax_prof.grid(alpha=0.3)
    if measurements and len(measurements) <= 12:
        ax_prof.legend(fontsize=8, loc="upper right")
    ax_prof.set_title("width profile along each crack", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    return path


def measure_images(
    items: Iterable[tuple[str, np.ndarray, np.ndarray | None]],
    out: str | Path,
    *,
    method: str = "edt",
    px_per_mm: float | None = None,
    min_area: int = 10,
    plot: bool = True,
) -> WidthReport:
    """Measure masks and write ``widths.csv``, ``profile_<name>.csv`` and ``profile_<name>.png``.

    This is the one entry point of ``fracturekit width``: whatever produces a crack mask (a mask
    file, or a mask derived from an image) hands it here as ``(name, mask, image)``.

    Args:
        items: ``(name, mask, image)`` triples; ``name`` names the outputs (unique), ``mask`` is
            binary, ``image`` (same height and width, or None) is the plot's background.
        out: output folder (created).
        method, px_per_mm, min_area: as for ``measure_mask``.
        plot: write the PNG plots.

    Returns:
        The paths written and the measurements by name.

    Raises:
        ValueError: a non-binary mask, an image whose size differs from its mask's, or a name
            given twice.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = list(WIDTH_COLUMNS) + (list(MM_COLUMNS) if px_per_mm is not None else [])
    rows: list[list[object]] = []
    report = WidthReport(out / "widths.csv", [], [], {})
    for name, mask, image in items:
        if name in report.measurements:
            raise ValueError(f"{name}: two inputs have this name; rename one")
        binary = as_binary_mask(mask, name)
        if image is not None and np.asarray(image).shape[:2] != binary.shape:
            h, w = np.asarray(image).shape[:2]
            raise ValueError(
                f"{name}: mask is {binary.shape[1]}x{binary.shape[0]} px but the image is "
                f"{w}x{h} px"
            )
        cracks = measure_mask(
            binary, method=method, px_per_mm=px_per_mm, min_area=min_area, name=name
        )
        report.measurements[name] = cracks
        rows += [[m.row(name)[k] for k in header] for m in cracks]
        p_header, p_rows = profile_table(cracks, px_per_mm)
        report.profiles.append(
            atomic_write_text(out / f"profile_{name}.csv", _csv(p_header, p_rows))
        )
        if plot:
            report.plots.append(
                plot_profile(
                    out / f"profile_{name}.png",
                    name,
                    cracks,
                    binary,
                    image,
                    method=method,
                    px_per_mm=px_per_mm,
                )
            )
    atomic_write_text(report.widths_csv, _csv(header, rows))
    return report
