"""Decisions at 3 % cracks, cross-validated: every CRACK500 tile scored by a model that never saw
its photo.

``benchmarks/prior.py`` builds its 3 %-crack view from one held-out fifth of the photos: 200
``no_crack`` tiles and 6 crack tiles, so one or two false alarms move precision, and so F1, a
lot. This script folds the 150 source photos into ``--folds`` groups (stratified by class,
grouped by ``source_image``, fixed seed), trains the set-up (``--config``, the default
classifier unless told) once per fold on the other folds, and scores the fold's tiles with that
checkpoint. Every one of the 1,000 ``no_crack`` tiles is then held out once, and the view grows
to all of them plus a 3 % share of crack tiles (31 of the 1,000, drawn ``--draws`` times).

Each tile is decided the way a user of its fold's checkpoint decides it: at the checkpoint's
stored threshold (chosen on its balanced validation split), and at the threshold its
``--prior`` picks from the validation scores stored in the checkpoint
(``Predictor.with_prior``, the code of ``predict/evaluate/serve --prior``). The best single
threshold in hindsight on the pooled scores is printed for scale. Per fold the table says how
many validation ``no_crack`` tiles score at or above the ``--prior`` threshold and the
precision at the prior they vouch for, with its 90% range (``Predictor.prior_support``, what
``predict/evaluate --prior`` report), beside the precision the fold's held-out tiles give at
that threshold (their crack and ``no_crack`` rates re-weighted to the prior). A segmentation set-up
(``--config default_segment``) works the same way: its image score is the most probable pixel
and the prior moves its image decision.

Folds already trained (``OUT/fold<k>/run/model.pt``) are reused: the script resumes.

Target (issue "Decisions at the prevalence of use"): F1 >= 0.75 with ``--prior 0.03``.

Measured (README, "Deciding at 3% cracks", 2-core AMD EPYC): the default classifier 0.696
(best single threshold in hindsight 0.713) and 0.713 (0.731) retrained, the default segmenter
0.749 (0.772) and 0.718 (0.780) retrained with training seed 0, 0.722 (0.761) and 0.704
(0.749) retrained with ``--set seed=1`` (the same folds), 0.728 (0.802) with ``--set seed=1
--set split_seed=0`` (seed 0's validation split; its mean with seed 0's scores, by
``prior_cv_pair.py``: 0.778), 0.731 (0.788) with ``--set seed=2 --set split_seed=0``; one
checkpoint of several members (``--set members=K``, members put in ``fold<k>/run/members/<i>/``
from those runs and resumed): 0.741 (0.815) for seeds 0 + 1, 0.779 (0.812) for 1 + 2
(``--set seed=1 --set split_seed=0 --set members=2``), 0.769 (0.812) for 0 + 1 + 2
(``--set members=3``, ``--config survey_segment``); twelve epochs instead of eight (``--set
epochs=12``, seed 0): 0.706 (0.776); two members of four epochs (``--set members=2 --set
epochs=4``): 0.685 (0.778); an image-level loss term (``--set seg_loss=bce_dice_image``) with
seeds 0, 1, 2 on seed 0's split: 0.744 (0.785), 0.736 (0.769), 0.711 (0.801), and its seeds
1 + 2 as one checkpoint 0.714 (0.802); brightness and contrast augmentation (``--set
augment=flips_color``, seed 0): 0.665 (0.788) against 0.718 (0.780) for seed 0 rerun from a
fresh install.

Run:
    .venv/bin/python benchmarks/prior_cv.py --out DIR [--config default] [--folds 5]
        [--prior 0.03] [--draws 200] [--seed 0] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from _common import SHARED_DATA, start_clock, target_line

DEFAULT_DATA = SHARED_DATA / "crack500_patches"


def fold_manifests(data: Path, out: Path, *, folds: int, seed: int, masks: bool) -> list[Path]:
    """One ``manifest.csv`` (path,label,group,split[,mask]) per fold; ``split`` is ``test`` for
    the fold's photos and ``train`` for the rest (training carves validation from it)."""
    from sklearn.model_selection import StratifiedGroupKFold

    with (data / "patches.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    paths = [next((data / r["label"]).glob(r["patch"] + ".*")) for r in rows]
    labels = [r["label"] for r in rows]
    groups = [r["source_image"] for r in rows]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    manifests = []
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros(len(rows)), labels, groups)):
        test = set(test_idx.tolist())
        folder = out / f"fold{k}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "manifest.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "group", "split", *(["mask"] if masks else [])])
            for i, (image, label, group) in enumerate(zip(paths, labels, groups, strict=True)):
                row = [image, label, group, "test" if i in test else "train"]
                if masks:
                    mask = data / "masks" / (image.stem + ".png")
                    row.append(mask if label == "crack" and mask.is_file() else "")
                writer.writerow(row)
        manifests.append(path)
    return manifests


def score_fold(manifest: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Train the fold's checkpoint (unless it exists) and score its held-out tiles; returns
    their rows and the checkpoint's ``Predictor.prior_support`` at ``--prior``."""
    from fracturekit.config import resolve_config
    from fracturekit.predict import Predictor
    from fracturekit.train import train

    run = manifest.parent / "run"
    overrides = dict(kv.split("=", 1) for kv in args.set)
    if not (run / "model.pt").is_file():
        # A run of several members (--set members=K) whose members/ folder is there already
        # (some trained, or put there from earlier folds of the same seeds and split) resumes.
        members = (run / "members").is_dir() and (run / "config.yaml").is_file()
        cfg = resolve_config(
            {
                "data": str(manifest),
                "seed": args.seed,
                "val_fraction": 0.2,
                **overrides,
                **({"resume": str(run)} if members else {}),
            },
            args.config,
        )
        t0 = time.perf_counter()
        train(cfg, run, progress=not args.no_progress, overwrite=not members)
        seconds = time.perf_counter() - t0
        (run / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
    predictor = Predictor.from_checkpoint(run / "model.pt")
    stored = predictor.image_threshold
    prior_threshold = predictor.with_prior(args.prior).image_threshold
    support = predictor.prior_support
    with manifest.open(newline="") as fh:
        test = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    preds = list(predictor.with_prior(None).predict_paths([r["path"] for r in test], 32))
    bad = [p.path for p in preds if p.error]
    if bad:
        raise SystemExit(f"unreadable tiles: {bad[:3]}")
    rows = [
        {
            "path": r["path"],
            "fold": manifest.parent.name,
            "label": r["label"],
            "p_crack": p.probabilities["crack"],
            "stored_threshold": stored,
            "prior_threshold": prior_threshold,
        }
        for r, p in zip(test, preds, strict=True)
    ]
    return rows, support


def fold_splits(fold: Path) -> dict[str, list[dict]]:
    """A fold's manifest rows by part: ``train`` and ``val`` in the order of its run's
    ``splits.csv``, ``test`` (the fold's held-out photos) in manifest order."""
    with (fold / "manifest.csv").open(newline="") as fh:
        manifest = {r["path"]: r for r in csv.DictReader(fh)}
    with (fold / "run" / "splits.csv").open(newline="") as fh:
        carved = [(r["path"], r["split"]) for r in csv.DictReader(fh)]
    parts = {
        part: [manifest[path] for path, sp in carved if sp == part] for part in ("train", "val")
    }
    parts["test"] = [r for r in manifest.values() if r["split"] == "test"]
    return parts


def held_out_pairs(paths, crack) -> list[tuple[str, str]]:
    """``(path, label)`` of held-out tiles from their paths and truth (True: crack), as
    :func:`decided_rows` takes them."""
    return [(str(p), "crack" if y else "no_crack") for p, y in zip(paths, crack, strict=True)]


def held_out_precision(
    threshold: float, prior: float, held_crack: np.ndarray, held_scores: np.ndarray
) -> float:
    """The precision at ``prior`` of a fold's held-out tiles decided at ``threshold``: their
    crack and no_crack rates re-weighted to ``prior`` (no draws); NaN when none is decided."""
    decided = held_scores >= threshold
    tpr, fpr = decided[held_crack].mean(), decided[~held_crack].mean()
    hits = prior * tpr
    return float(hits / (hits + (1 - prior) * fpr)) if hits + fpr > 0 else float("nan")


def cv_parser(doc: str, cv_help: str | None) -> argparse.ArgumentParser:
    """The options of the scripts that read this script's folds: ``--cv DIR`` (``cv_help``;
    None: no ``--cv``), ``--prior``, ``--draws`` and ``--seed`` (the view's draws)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if cv_help:
        parser.add_argument("--cv", type=Path, required=True, help=cv_help)
    parser.add_argument("--prior", type=float, default=0.03)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def trained_folds(cv: Path, marker: str = "model.pt") -> list[Path]:
    """``cv``'s fold folders whose ``run/<marker>`` exists; exits with a message when none."""
    folds = sorted(p.parent.parent for p in cv.glob(f"fold*/run/{marker}"))
    if not folds:
        raise SystemExit(f"{cv}: no trained folds (run prior_cv.py --out DIR first)")
    return folds


def decided_rows(
    fold: str, val_crack, val_scores, test: list[tuple[str, str]], test_scores, prior: float
) -> list[dict]:
    """One fold's rows for one image score, as :func:`draws` takes them (no stored decision):
    the held-out tiles ``test`` (path, label) with their ``test_scores``, decided at the
    threshold ``threshold_at_prior`` reads at ``prior`` from the fold's validation truth
    (True: crack) and scores, as ``--prior`` reads it from a checkpoint's stored scores."""
    from fracturekit.calibration import threshold_at_prior

    v = np.asarray(val_scores)
    labels = np.asarray(val_crack).astype(int)
    threshold = threshold_at_prior(labels, np.stack([1 - v, v], 1), 1, prior)
    return rows_at(fold, test, test_scores, threshold)


def rows_at(fold: str, test: list[tuple[str, str]], test_scores, threshold: float) -> list[dict]:
    """The rows of :func:`decided_rows` for a threshold already read."""
    return [
        {"path": path, "fold": fold, "label": label, "p_crack": float(s),
         "prior_threshold": threshold}
        for (path, label), s in zip(test, test_scores, strict=True)
    ]  # fmt: skip


def stored_validation(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """A checkpoint's stored validation truth (True: crack) and its crack scores, in the order
    of its ``splits.csv`` validation rows (:func:`validation_paths`)."""
    from fracturekit.calibration import default_positive, validation_scores
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(run / "model.pt")
    labels, proba = validation_scores(predictor.meta, str(run / "model.pt"))
    pos = predictor.classes.index(predictor.positive or default_positive(predictor.classes))
    return np.asarray(labels) == pos, np.asarray(proba)[:, pos]


def validation_paths(run: Path) -> list[str]:
    """The validation tiles of a run, in its ``splits.csv`` order."""
    with (run / "splits.csv").open(newline="") as fh:
        return [r["path"] for r in csv.DictReader(fh) if r["split"] == "val"]


def draws(rows: list[dict], prior: float, n_draws: int, seed: int) -> dict[str, np.ndarray]:
    """F1 of each decision over ``n_draws`` views: every negative, a ``prior`` share of cracks.

    A decision is scored when the rows carry its threshold: ``stored`` (``stored_threshold``)
    and ``prior`` (``prior_threshold``)."""
    from sklearn.metrics import f1_score, precision_score, recall_score

    from prior import _best_f1

    y = np.array([r["label"] == "crack" for r in rows])
    s = np.array([r["p_crack"] for r in rows])
    decided = {
        name: s >= np.array([r[f"{name}_threshold"] for r in rows])
        for name in ("stored", "prior")
        if f"{name}_threshold" in rows[0]
    }
    neg, pos = np.flatnonzero(~y), np.flatnonzero(y)
    n_crack = max(1, round(prior / (1 - prior) * neg.size))
    rng = np.random.default_rng(seed + 1)
    out: dict[str, list[float]] = {}
    for _ in range(n_draws):
        idx = np.r_[neg, rng.choice(pos, n_crack, replace=False)]
        for name, d in decided.items():
            for metric, fn in (("f1", f1_score), ("precision", precision_score)):
                out.setdefault(f"{name} {metric}", []).append(fn(y[idx], d[idx], zero_division=0))
            out.setdefault(f"{name} recall", []).append(recall_score(y[idx], d[idx]))
        out.setdefault("best in hindsight f1", []).append(_best_f1(y[idx], s[idx]))
    return {k: np.array(v) for k, v in out.items()}


def f1_summary(spread: dict[str, np.ndarray], name: str) -> dict[str, float]:
    """Mean and 5-95% range of decision ``name``'s F1 over the draws, and its mean precision
    and recall (``name`` is ``stored`` or ``prior``, keys of :func:`draws`)."""
    f1 = spread[f"{name} f1"]
    return {
        "f1_mean": float(f1.mean()),
        "f1_5": float(np.percentile(f1, 5)),
        "f1_95": float(np.percentile(f1, 95)),
        "precision_mean": float(spread[f"{name} precision"].mean()),
        "recall_mean": float(spread[f"{name} recall"].mean()),
    }


def f1_cell(summary: dict[str, float]) -> str:
    """``mean (5%-95%)`` of an :func:`f1_summary`."""
    return f"{summary['f1_mean']:.3f} ({summary['f1_5']:.3f}-{summary['f1_95']:.3f})"


def score_summary(rows: list[dict], prior: float, n_draws: int, seed: int) -> dict:
    """One score's pooled ROC AUC, its :func:`f1_summary` per decision the rows carry
    (``prior``, and ``stored`` when they have it; see :func:`draws`) and its mean best F1 in
    hindsight."""
    from sklearn.metrics import roc_auc_score

    y = np.array([r["label"] == "crack" for r in rows])
    s = np.array([r["p_crack"] for r in rows])
    spread = draws(rows, prior, n_draws, seed)
    out: dict = {"roc_auc_pooled": float(roc_auc_score(y, s))}
    for name in ("stored", "prior"):
        if f"{name} f1" in spread:
            out[name] = f1_summary(spread, name)
    out["best_in_hindsight_f1_mean"] = float(spread["best in hindsight f1"].mean())
    return out


def print_decided(
    con,
    rows: dict[str, list[dict]],
    args: argparse.Namespace,
    *,
    title: str,
    first: str,
    out: Path,
    clock,
) -> dict:
    """One table row per entry of ``rows`` (name -> :func:`decided_rows` rows): its
    :func:`score_summary` over ``args``' draws; writes the summaries and the machine line to
    ``out`` (JSON), prints the target line for the best, and returns the summaries."""
    from rich.table import Table

    table = Table(title=title)
    for col in (first, *prior_columns(args.prior)):
        table.add_column(col, justify="right")
    summary: dict = {}
    for name, decided in rows.items():
        summary[name] = score_summary(decided, args.prior, args.draws, args.seed)
        table.add_row(name, *prior_cells(summary[name]))
    con.print(table)
    best = best_prior_line({n: summary[n] for n in rows}, args.prior)
    summary["machine"] = clock.line()
    out.write_text(json.dumps(summary, indent=2) + "\n")
    con.print(f"{summary['machine']}; written {out}")
    con.print(best)
    return summary


def prior_columns(prior: float) -> list[str]:
    """The headers of :func:`prior_cells`."""
    return ["pooled ROC AUC", f"--prior {prior:g}: F1 (5-95%)", "precision", "recall",
            "best in hindsight"]  # fmt: skip


def prior_cells(sv: dict) -> list[str]:
    """The table cells of one score's summary (``roc_auc_pooled``, ``prior``: an
    :func:`f1_summary`, ``best_in_hindsight_f1_mean``): ROC AUC, F1 (5-95%), precision,
    recall, best in hindsight."""
    prior = sv["prior"]
    return [
        f"{sv['roc_auc_pooled']:.3f}",
        f1_cell(prior),
        f"{prior['precision_mean']:.3f}",
        f"{prior['recall_mean']:.3f}",
        f"{sv['best_in_hindsight_f1_mean']:.3f}",
    ]


def best_prior_line(summaries: dict[str, dict], prior: float, unit: str = "") -> str:
    """The target line for the best of ``summaries`` (name -> a summary with ``prior``); with
    several, it says that the best was picked on the folds it is scored on."""
    best = max(summaries, key=lambda n: summaries[n]["prior"]["f1_mean"])
    picked = f", the best of {len(summaries)} picked on these folds" if len(summaries) > 1 else ""
    return target_line(
        f"F1 >= 0.75 with --prior {prior:g} (mean of draws, {best}{unit}{picked})",
        summaries[best]["prior"]["f1_mean"] >= 0.75,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", default="default")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--prior", type=float, default=0.03)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table
    from sklearn.metrics import average_precision_score, roc_auc_score

    from fracturekit.config import resolve_config

    if not (args.data / "patches.csv").is_file():
        raise SystemExit(f"{args.data}: CRACK500 patches not found (pass --data)")
    task = resolve_config({"data": str(args.data)}, args.config).task
    clock = start_clock()
    manifests = fold_manifests(
        args.data, args.out, folds=args.folds, seed=args.seed, masks=task == "segment"
    )
    rows: list[dict] = []
    supports: list[dict] = []
    for manifest in manifests:
        fold_rows, support = score_fold(manifest, args)
        rows += fold_rows
        supports.append(support)
    with (args.out / "scores.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    con = Console(width=140)
    folds = Table(title=f"{args.folds} folds by source photo, config {args.config} {args.set}")
    p = f"{args.prior:g}"
    for col in ("fold", "tiles (cracks)", "ROC AUC", "stored threshold", "prior threshold",
                "validation no_crack at or above", f"its precision at {p} (90% range)",
                f"held-out precision at {p}"):  # fmt: skip
        folds.add_column(col, justify="right")
    for k, support in enumerate(supports):
        part = [r for r in rows if r["fold"] == f"fold{k}"]
        y = np.array([r["label"] == "crack" for r in part])
        s = np.array([r["p_crack"] for r in part])
        support["held_out_precision"] = held_out_precision(
            part[0]["prior_threshold"], args.prior, y, s
        )
        low, high = support["precision_range"] or (float("nan"), float("nan"))
        folds.add_row(
            str(k),
            f"{len(part)} ({y.sum()})",
            f"{roc_auc_score(y, s):.3f}",
            f"{part[0]['stored_threshold']:.3f}",
            f"{part[0]['prior_threshold']:.3f}",
            f"{support['negatives_at_or_above']} of {support['validation_negatives']}",
            f"{support['precision'] or float('nan'):.3f} ({low:.3f}-{high:.3f})",
            f"{support['held_out_precision']:.3f}",
        )
    con.print(folds)
    y = np.array([r["label"] == "crack" for r in rows])
    s = np.array([r["p_crack"] for r in rows])
    spread = draws(rows, args.prior, args.draws, args.seed)
    n_neg = int((~y).sum())
    n_crack = max(1, round(args.prior / (1 - args.prior) * n_neg))
    table = Table(
        title=f"{n_neg} no_crack tiles + {n_crack} crack tiles ({args.prior:.0%}), "
        f"{args.draws} draws of the cracks; every tile held out"
    )
    for col in ("decision", "F1 mean (5-95%)", "precision mean", "recall mean"):
        table.add_column(col, justify="right" if col != "decision" else "left")
    summary: dict = {}
    for name, label in (("stored", "stored threshold"), ("prior", f"--prior {args.prior:g}")):
        summary[name] = f1_summary(spread, name)
        table.add_row(
            label,
            f1_cell(summary[name]),
            f"{summary[name]['precision_mean']:.3f}",
            f"{summary[name]['recall_mean']:.3f}",
        )
    best = spread["best in hindsight f1"]
    summary["best_in_hindsight_f1_mean"] = float(best.mean())
    table.add_row("best threshold in hindsight (pooled scores)", f"{best.mean():.3f}", "", "")
    con.print(table)
    summary.update(
        roc_auc_pooled=float(roc_auc_score(y, s)),
        average_precision_all_tiles=float(average_precision_score(y, s)),
        config=args.config,
        overrides=args.set,
        folds=args.folds,
        prevalence=args.prior,
        fold_support=supports,
        machine=clock.line(),
        train_seconds=[
            float((m.parent / "run" / "train_seconds.txt").read_text())
            for m in manifests
            if (m.parent / "run" / "train_seconds.txt").is_file()
        ],
    )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    con.print(
        f"pooled ROC AUC {summary['roc_auc_pooled']:.3f}; written {args.out / 'summary.json'}"
    )
    con.print(
        target_line(
            f"F1 >= 0.75 with --prior {args.prior:g} (mean of draws)",
            summary["prior"]["f1_mean"] >= 0.75,
        )
    )


if __name__ == "__main__":
    main()
