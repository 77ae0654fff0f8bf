"""Decisions at the prevalence of use: CRACK500 tiles with 3 % cracks, with and without --prior.

The view: the held-out source photos of ``benchmarks/crack500.py``'s split (the same stratified
split by ``source_image``, same seed and test fraction), all their ``no_crack`` tiles and a
seeded random subset of their ``crack`` tiles, so that cracks make up ``--prior`` of the view
(3 %: a pavement survey). It is written as a CSV manifest (``view.csv``: path,label,group)
and the checkpoint is evaluated on it twice through ``evaluate_checkpoint`` (the code of
``fracturekit evaluate``): at its stored threshold (chosen on its balanced validation split)
and with ``prior=P`` (the threshold its rule picks on the stored validation scores re-weighted
to prevalence ``P``). The F1 of the best threshold in hindsight is printed for scale, and the
threshold of the kernel-smoothed rule (``threshold_at_prior(..., smooth=True)``) beside the
default's.

With so few cracks in one view (200 ``no_crack`` tiles give 6 cracks at 3 %), F1 moves a lot
with the tiles drawn; the script also reports the mean and range of both F1s over ``--draws``
crack subsets, from the same per-tile probabilities.

``--inject-validation`` is for checkpoints written before training stored its validation
scores: it scores the run's validation tiles (``splits.csv`` beside the checkpoint) through
``Predictor`` (temperature and test-time augmentation applied, as training would) and writes a
copy of the checkpoint with ``meta["validation"]`` into the output folder.

A segmentation checkpoint (``crack500_segment.py --out DIR``: ``DIR/run/model.pt``, the same
held-out photos) works the same way: its image score is the most probable pixel, and the prior
moves its image decision (``Predictor.with_prior``).

Target (issue "Decisions at the prevalence of use"): F1 >= 0.75 with ``--prior 0.03``.

Run:
    .venv/bin/python benchmarks/prior.py --checkpoint RUN/model.pt [--out DIR] [--prior 0.03]
        [--data DIR] [--seed 0] [--draws 200] [--inject-validation]

The equivalent command line for the view: ``fracturekit evaluate CKPT DIR/view.csv --out
DIR/prior --prior 0.03``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from _common import SHARED_DATA, target_line

DEFAULT_DATA = SHARED_DATA / "crack500_patches"


def _crack500_split():
    """``write_manifest`` of benchmarks/crack500.py: one definition of the held-out photos."""
    spec = importlib.util.spec_from_file_location(
        "crack500_benchmark", Path(__file__).with_name("crack500.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_manifest


def write_view(
    data: Path, out: Path, *, prior: float, seed: int, test_fraction: float
) -> tuple[Path, list[dict[str, str]]]:
    """``view.csv``: the held-out photos' no_crack tiles and a ``prior`` share of crack tiles."""
    full, _, _ = _crack500_split()(data, out, seed=seed, test_fraction=test_fraction, limit=None)
    with full.open(newline="") as fh:
        test = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    negatives = [r for r in test if r["label"] == "no_crack"]
    cracks = [r for r in test if r["label"] == "crack"]
    n_crack = max(1, round(prior / (1 - prior) * len(negatives)))
    if n_crack > len(cracks):
        raise SystemExit(f"only {len(cracks)} crack tiles held out; {n_crack} needed")
    chosen = np.random.default_rng(seed).choice(len(cracks), n_crack, replace=False)
    rows = negatives + [cracks[i] for i in sorted(chosen)]
    path = out / "view.csv"
    with path.open("w", newline="") as fh:
        # No split column: the whole view is the evaluation set (evaluate's split "auto").
        writer = csv.DictWriter(fh, ["path", "label", "group"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path, test


def inject_validation(ckpt: Path, out: Path, batch_size: int = 32) -> Path:
    """A copy of ``ckpt`` whose meta holds the run's validation labels and probabilities."""
    from fracturekit.models import load_checkpoint, save_checkpoint
    from fracturekit.predict import Predictor

    with (ckpt.parent / "splits.csv").open(newline="") as fh:
        val = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    predictor = Predictor.from_checkpoint(ckpt)
    classes = predictor.classes
    preds = list(predictor.predict_paths([r["path"] for r in val], batch_size))
    bad = [p.path for p in preds if p.error]
    if bad:
        raise SystemExit(f"unreadable validation tiles: {bad[:3]}")
    validation = {
        "labels": [classes.index(r["label"]) for r in val],
        "probabilities": [[p.probabilities[c] for c in classes] for p in preds],
    }
    model, meta = load_checkpoint(ckpt)
    return save_checkpoint(
        out / "model_with_validation.pt", model, {**meta, "validation": validation}
    )


def smoothed_prior_threshold(ckpt: Path, prior: float) -> float:
    """The prior's threshold from kernel-smoothed validation counts (``smooth=True``)."""
    from fracturekit.calibration import threshold_at_prior, validation_scores
    from fracturekit.models import load_checkpoint

    _, meta = load_checkpoint(ckpt)
    labels, proba = validation_scores(meta, str(ckpt))
    config = meta.get("config") or {}
    return threshold_at_prior(
        labels,
        proba,
        meta["classes"].index("crack"),
        prior,
        metric=config.get("threshold_metric", "f1"),
        target_recall=config.get("target_recall"),
        smooth=True,
    )


def _best_f1(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, s)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=precision + recall > 0,
    )
    return float(np.max(f1))


def _f1_at(y: np.ndarray, s: np.ndarray, t: float) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, s >= t, zero_division=0))


def draw_spread(
    ckpt: Path, test: list[dict[str, str]], thresholds: dict[str, float], args: Any
) -> dict[str, list[float]]:
    """F1 at each threshold over ``args.draws`` crack subsets of the held-out photos' tiles."""
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(ckpt)
    preds = list(predictor.predict_paths([r["path"] for r in test], args.batch_size))
    s = np.array([p.probabilities["crack"] for p in preds])
    y = np.array([r["label"] == "crack" for r in test])
    neg, pos = np.flatnonzero(~y), np.flatnonzero(y)
    n_crack = max(1, round(args.prior / (1 - args.prior) * neg.size))
    rng = np.random.default_rng(args.seed + 1)
    out: dict[str, list[float]] = {name: [] for name in [*thresholds, "best in hindsight"]}
    for _ in range(args.draws):
        idx = np.r_[neg, rng.choice(pos, n_crack, replace=False)]
        for name, t in thresholds.items():
            out[name].append(_f1_at(y[idx], s[idx], t))
        out["best in hindsight"].append(_best_f1(y[idx], s[idx]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="model.pt")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: temp)")
    parser.add_argument("--prior", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--inject-validation", action="store_true")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from fracturekit.evaluate import evaluate_checkpoint

    if not (args.data / "patches.csv").is_file():
        raise SystemExit(f"{args.data}: CRACK500 patches not found (pass --data)")
    tmp = tempfile.TemporaryDirectory(prefix="prior-") if args.out is None else None
    out = Path(tmp.name) if tmp else args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint
    if args.inject_validation:
        ckpt = inject_validation(ckpt, out, args.batch_size)
    view, test = write_view(
        args.data, out, prior=args.prior, seed=args.seed, test_fraction=args.test_fraction
    )
    common = {"split": "all", "layout": "csv", "cams": 0, "seed": args.seed}
    stored = evaluate_checkpoint(ckpt, view, out / "stored", **common)
    at_prior = evaluate_checkpoint(ckpt, view, out / "prior", prior=args.prior, **common)
    y, s = [], []
    with (out / "prior" / "predictions.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            y.append(row["true"] == "crack")
            s.append(float(row["p_crack"]))
    best = _best_f1(np.array(y), np.array(s))

    con = Console(width=160)
    n_pos = int(np.sum(y))
    table = Table(title=f"{len(y)} held-out tiles, {n_pos} cracks ({n_pos / len(y):.1%}), {view}")
    for col in ("decision", "threshold", "F1 (95% CI)", "precision", "recall"):
        table.add_column(col, justify="right" if col != "decision" else "left")
    for name, m in (
        ("stored (validation prevalence)", stored),
        (f"--prior {args.prior:g}", at_prior),
    ):
        ci = m["ci95"]["f1"]
        table.add_row(
            name,
            f"{m['threshold']:.3f}",
            f"{m['f1']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})",
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
        )
    table.add_row("best threshold in hindsight", "", f"{best:.3f}", "", "")
    con.print(table)
    con.print(
        f"ROC AUC {stored['roc_auc']:.3f}, average precision {stored['average_precision']:.3f}"
    )
    thresholds = {
        "stored": stored["threshold"],
        "prior": at_prior["threshold"],
        "prior, smoothed counts": smoothed_prior_threshold(ckpt, args.prior),
    }
    con.print(
        f"--prior {args.prior:g} on smoothed counts (threshold_at_prior(smooth=True)): "
        f"threshold {thresholds['prior, smoothed counts']:.3f}"
    )
    spread = draw_spread(ckpt, test, thresholds, args)
    for name, values in spread.items():
        v = np.array(values)
        con.print(
            f"F1 over {args.draws} crack draws, {name}: mean {v.mean():.3f}, "
            f"5-95% {np.percentile(v, 5):.3f}-{np.percentile(v, 95):.3f}"
        )
    con.print(
        f"command: fracturekit evaluate {ckpt} {view} --out {out / 'prior'} --prior {args.prior:g}"
    )
    con.print(target_line(f"F1 >= 0.75 with --prior {args.prior:g}", at_prior["f1"] >= 0.75))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
