"""Which threshold rule decides best at a low prevalence: raw weighted counts or smoothed ones.

``threshold_at_prior`` picks the F1-best threshold for prevalence P from a checkpoint's stored
validation scores. At P = 3 % a false positive weighs as much as about 30 true positives of a
balanced validation set, so the default rule (raw weighted counts, ``smooth=False``) sets the
threshold just above the top one to three validation negatives and moves with each of them.
``smooth=True`` counts expected positives and negatives under a kernel estimate of each
class's logit distribution instead.

This script compares the two where the truth is known: score populations of 400,000 samples
per class on the logit scale (equal and unequal spreads, a heavy negative tail, Student-t
tails), validation sets of ``--n`` samples per class drawn from them (a CRACK500 run stores
160 per class), each rule's threshold scored by the population's own F1 at prevalence P. The
table gives, per population and validation size, the best population F1 at that prevalence
and each rule's mean and standard deviation over ``--draws`` validation sets. No model and no
data set is involved: this is the rule alone, with labels that are right. Real validation sets
can hold mislabelled negatives (CRACK500's ``no_crack`` tiles include unannotated cracks),
whose mass the kernels spread as well: ``benchmarks/prior.py`` prints both rules on real
held-out photos.

Run:
    .venv/bin/python benchmarks/prior_rule.py [--prior 0.03] [--n 160 500] [--draws 150]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from _common import start_clock

Sampler = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]

# name -> (positive logits, negative logits) of n samples each
POPULATIONS: dict[str, Sampler] = {
    "binormal, equal spreads": lambda g, n: (g.normal(2, 1.5, n), g.normal(-2, 1.5, n)),
    "binormal, wide positives": lambda g, n: (g.normal(2.5, 2.5, n), g.normal(-2.5, 1.2, n)),
    "negatives with a 10% tail": lambda g, n: (
        g.normal(3, 1.8, n),
        np.where(g.random(n) < 0.9, g.normal(-3, 1, n), g.normal(0, 1.5, n)),
    ),
    "Student-t (3 dof) tails": lambda g, n: (
        2.5 + 1.2 * g.standard_t(3, n),
        -2.5 + 1.2 * g.standard_t(3, n),
    ),
}


def population_f1(z_pos: np.ndarray, z_neg: np.ndarray, prior: float) -> Callable[[float], float]:
    """F1 at prevalence ``prior`` of the rule ``p >= t`` on a large sample (the population)."""
    z_pos, z_neg = np.sort(z_pos), np.sort(z_neg)

    def f1(t: float) -> float:
        z = np.log(t / (1 - t))
        tpr = 1 - np.searchsorted(z_pos, z) / z_pos.size
        fpr = 1 - np.searchsorted(z_neg, z) / z_neg.size
        return float(2 * prior * tpr / (prior * tpr + (1 - prior) * fpr + prior))

    return f1


def compare(
    sampler: Sampler, prior: float, n: int, draws: int, rng: np.random.Generator
) -> tuple[float, dict[bool, np.ndarray]]:
    """The population's best F1 and each rule's population F1 over ``draws`` validation sets."""
    from scipy.special import expit

    from fracturekit.calibration import threshold_at_prior

    f1 = population_f1(*sampler(rng, 400_000), prior)
    best = max(f1(t) for t in expit(np.linspace(-8, 8, 2001)))
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    out: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(draws):
        s = expit(np.concatenate(sampler(rng, n)))
        proba = np.stack([1 - s, s], axis=1)
        for smooth in out:
            out[smooth].append(f1(threshold_at_prior(y, proba, 1, prior, smooth=smooth)))
    return best, {k: np.array(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", type=float, default=0.03)
    parser.add_argument("--n", type=int, nargs="+", default=[160, 500], help="per class")
    parser.add_argument("--draws", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    clock = start_clock()
    rng = np.random.default_rng(args.seed)
    table = Table(
        title=f"population F1 at {args.prior:.0%} positives of the threshold each rule picks "
        f"(mean ± sd over {args.draws} validation sets)"
    )
    for col in ("population", "validation per class", "best", "smoothed", "raw counts (default)"):
        table.add_column(col, justify="left" if col == "population" else "right")
    for name, sampler in POPULATIONS.items():
        for n in args.n:
            best, f1 = compare(sampler, args.prior, n, args.draws, rng)
            table.add_row(
                name,
                str(n),
                f"{best:.3f}",
                *(f"{f1[k].mean():.3f} ± {f1[k].std():.3f}" for k in (True, False)),
            )
    con = Console(width=140)
    con.print(table)
    con.print(clock.line())


if __name__ == "__main__":
    main()
