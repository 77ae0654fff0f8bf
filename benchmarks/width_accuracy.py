"""Width and length accuracy of `fracturekit width` on synthetic cracks with known geometry.

Run::

    .venv/bin/python benchmarks/width_accuracy.py --n 200 --size 224 --seed 0

For each of ``--n`` synthetic crack images (``fracturekit.synthetic.render_sample``, surface
kinds in turn) the exact mask is measured with every width method, and every measured skeleton
point is compared with the true width at the nearest point of the true centre line
(``synthetic.match_truth``). Points where width is ill-defined are excluded and counted: within a
few px (plus the local width) of a free crack tip, near a branch junction or another crack,
near the image border, or farther than max(2 px, w/2) from any true centre line. Errors are
binned by the true width at the matched point. Length error compares, per image, the sum of
measured crack lengths with the sum of true centre-line lengths inside the image.

Targets (issue "Explain and measure"): MAE <= 0.5 px for widths 3-20 px, <= 1 px below 3 px;
length error <= 5%.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fracturekit.synthetic import MIXED_KINDS, match_truth, render_sample
from fracturekit.width import METHODS, measure_mask

BINS = ((1.0, 3.0), (3.0, 6.0), (6.0, 10.0), (10.0, 20.01))


def evaluate(n: int, size: int, seed: int, kinds: tuple[str, ...]) -> dict:
    """Measure ``n`` rendered crack images; returns per-method errors and length errors."""
    errors = {m: [] for m in METHODS}
    truths = {m: [] for m in METHODS}
    excluded = {m: [0, 0] for m in METHODS}
    length_err: list[float] = []
    seconds = {m: 0.0 for m in METHODS}
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        sample = render_sample(rng, size, kinds[i % len(kinds)], with_crack=True)
        true_length = sum(c.length_px for c in sample.cracks)
        for method in METHODS:
            t0 = time.perf_counter()
            cracks = measure_mask(sample.mask, method=method)
            seconds[method] += time.perf_counter() - t0
            if method == "edt":
                length_err.append(sum(c.length_px for c in cracks) / true_length - 1.0)
            for c in cracks:
                xy = c.skeleton_rc[:, ::-1].astype(np.float64)
                truth = match_truth(sample.cracks, xy, size)
                keep = truth.well_defined & np.isfinite(c.widths_px)
                excluded[method][0] += int((~keep).sum())
                excluded[method][1] += len(keep)
                errors[method].append(c.widths_px[keep] - truth.width[keep])
                truths[method].append(truth.width[keep])
    return {
        "errors": {m: np.concatenate(v) for m, v in errors.items()},
        "truths": {m: np.concatenate(v) for m, v in truths.items()},
        "excluded": excluded,
        "length_err": np.array(length_err),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="crack images to measure")
    parser.add_argument("--size", type=int, default=224, help="image side in px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kind",
        default="all",
        help="surface kind, or 'all' for the surfaces in turn (default)",
    )
    args = parser.parse_args(argv)
    kinds = MIXED_KINDS if args.kind == "all" else (args.kind,)
    t0 = time.perf_counter()
    res = evaluate(args.n, args.size, args.seed, kinds)
    print(
        f"{args.n} synthetic crack images, {args.size} px, seed {args.seed}, "
        f"kinds {','.join(kinds)} ({time.perf_counter() - t0:.0f} s)"
    )
    print()
    print("| true width px | method | points | MAE px | bias px | target MAE |")
    print("|---|---|---:|---:|---:|---:|")
    for lo, hi in BINS:
        for method in METHODS:
            err, tru = res["errors"][method], res["truths"][method]
            sel = (tru >= lo) & (tru < hi)
            target = "1.0" if hi <= 3.0 else "0.5"
            mae = np.abs(err[sel]).mean() if sel.any() else float("nan")
            bias = err[sel].mean() if sel.any() else float("nan")
            label = f"{lo:g}-{min(hi, 20):g}"
            print(f"| {label} | {method} | {sel.sum()} | {mae:.3f} | {bias:+.3f} | {target} |")
    print()
    for method in METHODS:
        ex, tot = res["excluded"][method]
        print(
            f"{method}: {ex} of {tot} skeleton points ({ex / max(tot, 1):.1%}) excluded as "
            f"ill-defined (tips, junctions, crossings, border, unmatched); "
            f"{res['seconds'][method] / args.n * 1e3:.1f} ms per image"
        )
    le = np.abs(res["length_err"]) * 100
    print(
        f"length error per image: mean {le.mean():.2f}%, median {np.median(le):.2f}%, "
        f"p90 {np.percentile(le, 90):.2f}%, max {le.max():.2f}%, "
        f"bias {res['length_err'].mean() * 100:+.2f}% (target <= 5%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
