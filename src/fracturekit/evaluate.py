"""Honest evaluation: metrics with bootstrap intervals, calibration, plots and the mistakes gallery.

The numbers come from ``fracturekit.metrics`` (``compute_metrics``, ``METRIC_KEYS``; re-exported
here). ``evaluate_predictions`` writes a run's evaluation files from labels and probabilities;
``evaluate_checkpoint`` produces those through ``fracturekit.predict.Predictor``, so a checkpoint
is measured with exactly the preprocessing, temperature and threshold it will be deployed with,
or, with ``prior=P``, with the threshold its stored validation scores give at prevalence ``P``
(``calibration.threshold_at_prior``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit._files import atomic_write, atomic_write_text
from fracturekit.calibration import ECE_BINS, class_priors, default_positive, reliability_bins
from fracturekit.config import split_options
from fracturekit.contracts import METRICS_FILE, MODEL_FILE
from fracturekit.masks import image_is_positive, segment_image_score
from fracturekit.metrics import (
    EXTRA_KEYS,
    METRIC_KEYS,
    check_inputs,
    compute_metrics,
    decide_classes,
    safe_div,
)
from fracturekit.metrics import (  # re-exported: defined here before metrics was split out
    precision_at_prior as precision_at_prior,
)

SPLITS = ("auto", "test", "val", "train", "all")


# --------------------------------------------------------------------------------------------
# Text report and plots
# --------------------------------------------------------------------------------------------


def classification_report_text(metrics: dict[str, Any], y: np.ndarray, pred: np.ndarray) -> str:
    """scikit-learn's per-class table plus the headline figures and the confusion matrix."""
    from sklearn.metrics import classification_report

    classes = metrics["classes"]
    table = classification_report(
        y,
        pred,
        labels=list(range(len(classes))),
        target_names=classes,
        digits=4,
        zero_division=0,
    )
    lines = [f"n = {metrics['n']}"]
    prior = metrics.get("prior")
    if metrics["positive"] is not None:
        lines.append(
            f"positive class = {metrics['positive']}, threshold = {metrics['threshold']:.4f}"
            + (f", prior = {prior:g}" if prior is not None else "")
        )
    elif prior:
        lines.append("class priors = " + ", ".join(f"{k} {v:g}" for k, v in prior.items()))
    lines += ["", table.rstrip(), ""]

    def fmt(key: str) -> str:
        value = metrics[key]
        text = "undefined" if value is None else f"{value:.4f}"
        ci = metrics["ci95"].get(key)
        return f"{text}  (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else text

    for key in ("f1", "roc_auc", "average_precision", "balanced_accuracy", "cohen_kappa", "ece"):
        lines.append(f"{key:>18}: {fmt(key)}")
    at_prior = metrics.get("at_prior")
    if at_prior:
        prec = at_prior["precision"]
        f1 = at_prior["f1"]
        lines.append(
            f"{'at prior':>18}: {at_prior['prior']:.4f} positive -> precision "
            f"{'undefined' if prec is None else f'{prec:.4f}'}, F1 "
            f"{'undefined' if f1 is None else f'{f1:.4f}'} at recall {at_prior['recall']:.4f}"
        )
    width = max(len(c) for c in classes)
    lines += ["", "confusion matrix (rows true, columns predicted):"]
    lines.append(" " * (width + 2) + " ".join(f"{c[:10]:>10}" for c in classes))
    for name, row in zip(classes, metrics["confusion_matrix"], strict=True):
        lines.append(f"{name:>{width}}  " + " ".join(f"{v:>10d}" for v in row))
    for note in metrics["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def _save(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _figure(width: float, height: float) -> Any:
    # Figure objects without pyplot: no global backend state, safe in threads and servers.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_confusion_matrix(cm: Any, classes: Sequence[str], path: str | Path) -> Path:
    """Counts and row-normalised (per true class) confusion matrices side by side."""
    cm = np.asarray(cm, dtype=np.float64)
    c = len(classes)
    norm = safe_div(cm, cm.sum(axis=1, keepdims=True))
    side = min(3.0 + 0.45 * c, 12.0)
    fig = _figure(2 * side + 0.8, side)
    axes = fig.subplots(1, 2)
    for ax, data, title, fmt in (
        (axes[0], cm, "counts", "{:.0f}"),
        (axes[1], norm, "row-normalised (recall per true class)", "{:.2f}"),
    ):
        image = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(data.max(), 1e-12))
        ax.set_title(title, fontsize=10)
        ax.set_xticks(
            range(c),
            labels=list(classes),
            rotation=45 if c > 3 else 0,
            ha="right" if c > 3 else "center",
        )
        ax.set_yticks(range(c), labels=list(classes))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if c <= 20:
            cut = data.max() / 2
            for i in range(c):
                for j in range(c):
                    ax.text(
                        j,
                        i,
                        fmt.format(data[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if data[i, j] > cut else "black",
                    )
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, Path(path))


def _one_vs_rest(y: np.ndarray, p: np.ndarray, classes: list[str], positive: str | None):
    """(name, is_true, score) for the positive class (binary) or each present class."""
    if positive is not None:
        k = classes.index(positive)
        yield positive, y == k, p[:, k]
        return
    for k, name in enumerate(classes):
        truth = y == k
        if 0 < truth.sum() < truth.size:
            yield name, truth, p[:, k]


def _plot_curves(
    y: np.ndarray,
    p: np.ndarray,
    metrics: dict[str, Any],
    path: str | Path,
    draw: Callable[[Any, str, np.ndarray, np.ndarray], None],
    point: Callable[[], tuple[float, float]],
    *,
    title: str,
    legend: str,
    diagonal: bool = False,
    **labels: str,
) -> Path | None:
    """One-vs-rest curves (``draw(ax, name, truth, score)`` each), the operating point at the
    threshold (binary), the chance diagonal when asked; None when a class has no sample."""
    curves = list(_one_vs_rest(y, p, metrics["classes"], metrics["positive"]))
    if not curves or any(t.all() or not t.any() for _, t, _ in curves):
        return None
    fig = _figure(5.2, 4.8)
    ax = fig.subplots()
    for name, truth, score in curves:
        draw(ax, name, truth, score)
    if metrics["positive"] is not None:
        ax.plot(*point(), "o", color="black", label=f"threshold {metrics['threshold']:.3f}")
    if diagonal:
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(**labels, xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title, fontsize=10)
    ax.legend(loc=legend, fontsize=8)
    return _save(fig, Path(path))


def plot_roc(
    y: np.ndarray, p: np.ndarray, metrics: dict[str, Any], path: str | Path
) -> Path | None:
    """ROC curve of the positive class (binary, with the operating point) or one per class."""
    from sklearn.metrics import roc_auc_score, roc_curve

    def draw(ax: Any, name: str, truth: np.ndarray, score: np.ndarray) -> None:
        fpr, tpr, _ = roc_curve(truth, score)
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {roc_auc_score(truth, score):.3f})")

    def point() -> tuple[float, float]:
        k = metrics["classes"].index(metrics["positive"])
        decided = p[:, k] >= metrics["threshold"]
        truth = y == k
        return decided[~truth].mean(), decided[truth].mean()

    return _plot_curves(
        y, p, metrics, path, draw, point,
        title="ROC" + (" (one vs rest)" if metrics["positive"] is None else ""),
        legend="lower right",
        diagonal=True,
        xlabel="false positive rate",
        ylabel="true positive rate (recall)",
    )  # fmt: skip


def plot_pr(y: np.ndarray, p: np.ndarray, metrics: dict[str, Any], path: str | Path) -> Path | None:
    """Precision-recall curve(s) with the chance level (the prevalence) and the operating point."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    def draw(ax: Any, name: str, truth: np.ndarray, score: np.ndarray) -> None:
        prec, rec, _ = precision_recall_curve(truth, score)
        ap = average_precision_score(truth, score)
        line = ax.step(rec, prec, where="post", lw=1.6, label=f"{name} (AP {ap:.3f})")
        ax.axhline(truth.mean(), ls=":", lw=0.8, color=line[0].get_color())

    return _plot_curves(
        y, p, metrics, path, draw, lambda: (metrics["recall"], metrics["precision"]),
        title="precision-recall (dotted: prevalence)",
        legend="lower left",
        xlabel="recall",
        ylabel="precision",
    )  # fmt: skip


def plot_reliability(
    y: np.ndarray, p: np.ndarray, path: str | Path, n_bins: int = ECE_BINS
) -> Path:
    """Reliability diagram (accuracy against confidence per bin) over a confidence histogram."""
    bins = reliability_bins(p.max(axis=1), p.argmax(axis=1) == y, n_bins)
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = bins.edges[1] - bins.edges[0]
    fig = _figure(5.2, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = bins.count > 0
    top.bar(
        centres[filled],
        bins.accuracy[filled],
        width=width,
        edgecolor="black",
        lw=0.5,
        color="#4c72b0",
        label="accuracy",
    )
    low = np.minimum(bins.accuracy, bins.confidence)[filled]
    top.bar(
        centres[filled],
        np.abs(bins.confidence - bins.accuracy)[filled],
        bottom=low,
        width=width,
        facecolor="none",
        edgecolor="#c44e52",
        hatch="//",
        lw=0.8,
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"reliability (ECE {bins.ece:.4f}, {n_bins} bins)", fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, bins.count, width=width, color="grey", edgecolor="black", lw=0.5)
    bottom.set(xlabel="confidence (largest class probability)", ylabel="images")
    return _save(fig, Path(path))


def _thumbnail(path: str | Path, size: int) -> np.ndarray | None:
    """An RGB thumbnail read like every other fracturekit image, or None when unreadable."""
    from fracturekit.io import read_image

    try:
        img = read_image(path, channels=3)
    except (OSError, ValueError):
        return None
    img.thumbnail((size, size))
    return np.asarray(img)


def plot_mistakes(
    paths: Sequence[str | Path],
    y: np.ndarray,
    pred: np.ndarray,
    p: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    *,
    limit: int = 16,
    size: int = 160,
) -> Path | None:
    """Gallery of the most confident mistakes (thumbnails with true, predicted, confidence).

    The confidence of a mistake is the probability given to the (wrong) predicted class. Returns
    None, writing nothing, when there is no mistake.
    """
    wrong = np.flatnonzero(pred != y)
    if wrong.size == 0 or limit <= 0:
        return None
    conf = p[wrong, pred[wrong]]
    chosen = wrong[np.argsort(-conf, kind="mergesort")[:limit]]
    cols = min(4, chosen.size)
    rows = math.ceil(chosen.size / cols)
    fig = _figure(2.6 * cols, 2.9 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, chosen, strict=False):
        thumb = _thumbnail(paths[i], size)
        if thumb is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(thumb)
        name = Path(str(paths[i])).name
        ax.set_title(
            f"true {classes[y[i]]}\npred {classes[pred[i]]} ({p[i, pred[i]]:.3f})\n{name[:28]}",
            fontsize=7.5,
        )
    fig.suptitle(f"most confident mistakes ({chosen.size} of {wrong.size})", fontsize=10)
    return _save(fig, Path(path))


# --------------------------------------------------------------------------------------------
# Writing an evaluation
# --------------------------------------------------------------------------------------------


def _predictions_csv(
    paths: Sequence[str] | None, y: np.ndarray, pred: np.ndarray, p: np.ndarray, classes: list[str]
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "true", "pred", "correct", *[f"p_{c}" for c in classes]])
    for i in range(y.size):
        name = str(paths[i]) if paths is not None else str(i)
        writer.writerow(
            [
                name,
                classes[y[i]],
                classes[pred[i]],
                int(y[i] == pred[i]),
                *[f"{v:.6f}" for v in p[i]],
            ]
        )
    return buf.getvalue()


def evaluate_predictions(
    y_true: Any,
    proba: Any,
    classes: Sequence[str],
    out: str | Path,
    *,
    paths: Sequence[str | Path] | None = None,
    positive: str | None = None,
    threshold: float | None = 0.5,
    prior: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    mistakes: int = 16,
    extra: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Compute the metrics and write an evaluation folder.

    Writes into ``out``: ``metrics.json`` (``compute_metrics``' keys in order, then ``extra``),
    ``classification_report.txt``, ``predictions.csv`` (one row per image: true, predicted,
    class probabilities), ``confusion_matrix.png``, ``roc.png``, ``pr.png`` (skipped when a class
    has no sample), ``reliability.png`` and, given ``paths`` and at least one mistake,
    ``mistakes.png``. Every file is written atomically.

    Args:
        y_true, proba, classes, positive, threshold, prior, n_boot, seed: as ``compute_metrics``.
        out: output folder (created).
        paths: image paths in the order of ``y_true``, for the gallery and ``predictions.csv``.
        mistakes: at most this many images in the mistakes gallery.
        extra: more top-level entries for ``metrics.json`` (e.g. ``source``, ``localisation``);
            they may not replace a metric key.
        notes: more lines for the ``notes`` list (e.g. images left out).

    Returns:
        The metrics dict as written to ``metrics.json``.
    """
    out = Path(out)
    metrics = compute_metrics(
        y_true,
        proba,
        classes,
        positive=positive,
        threshold=threshold,
        prior=prior,
        n_boot=n_boot,
        seed=seed,
    )
    if extra:
        clash = sorted(set(extra) & (set(METRIC_KEYS) | set(EXTRA_KEYS)))
        if clash:
            raise ValueError(f"extra entries may not replace metric keys: {clash}")
        metrics.update(extra)
    metrics["notes"].extend(notes)
    classes = metrics["classes"]
    y, p = check_inputs(y_true, proba, classes)
    if paths is not None and len(paths) != y.size:
        raise ValueError(f"paths has {len(paths)} entries but there are {y.size} labels")
    pred, _, _ = decide_classes(p, classes, metrics["positive"], metrics["threshold"])

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    atomic_write_text(
        out / "classification_report.txt", classification_report_text(metrics, y, pred)
    )
    str_paths = [str(q) for q in paths] if paths is not None else None
    atomic_write_text(out / "predictions.csv", _predictions_csv(str_paths, y, pred, p, classes))
    plot_confusion_matrix(metrics["confusion_matrix"], classes, out / "confusion_matrix.png")
    for name, plot in (("roc.png", plot_roc), ("pr.png", plot_pr)):
        if plot(y, p, metrics, out / name) is None:
            (out / name).unlink(missing_ok=True)  # a stale plot from an earlier run would mislead
    plot_reliability(y, p, out / "reliability.png")
    written = None
    if str_paths is not None:
        written = plot_mistakes(
            str_paths, y, pred, p, classes, out / "mistakes.png", limit=mistakes
        )
    if written is None:
        (out / "mistakes.png").unlink(missing_ok=True)
    return metrics


def _probability_row(probabilities: Any, classes: list[str]) -> np.ndarray:
    """A Prediction's probabilities (mapping class -> p, or a sequence in class order)."""
    if isinstance(probabilities, dict):
        return np.array([float(probabilities[c]) for c in classes])
    if hasattr(probabilities, "detach"):
        probabilities = probabilities.detach().cpu().numpy()
    return np.asarray(probabilities, dtype=np.float64).ravel()


def _select_split(splits: Any, split: str, data: str | Path) -> tuple[list[Any], str]:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {', '.join(SPLITS)}")
    if split == "auto":
        # A held-out test split when the data define one; otherwise the folder is itself the
        # evaluation set (e.g. a separate test folder) and every image counts.
        if splits.test:
            return list(splits.test), "test"
        return [*splits.train, *splits.val, *splits.test], "all"
    if split == "all":
        return [*splits.train, *splits.val, *splits.test], "all"
    samples = list(getattr(splits, split))
    if not samples:
        raise ValueError(
            f"{data}: the data set has no {split} split; pass split='all' to evaluate every image "
            "(only for images the model never saw in training)"
        )
    return samples, split


def training_split_options(config: dict[str, Any] | None, data: str | Path) -> dict[str, Any]:
    """The split settings a checkpoint was trained with, when ``data`` is its training data.

    Evaluating a checkpoint on the data it was trained on must carve the same validation and
    test splits as training did (same seed, fractions, groups), or training images could be
    scored as test images. For other data (a separate test folder) nothing is carried over:
    that folder is split, or not, on its own terms.

    Args:
        config: the checkpoint's stored training config (``meta["config"]``), or None.
        data: the data about to be evaluated.

    Returns:
        ``load_dataset`` keyword arguments (possibly empty).
    """
    if not config or not config.get("data"):
        return {}
    try:
        same = Path(config["data"]).expanduser().resolve() == Path(data).expanduser().resolve()
    except (OSError, RuntimeError):
        return {}
    if not same:
        return {}
    return split_options(config)


def _decision_rule(
    predictor: Any, positive: str | None, threshold: float | None, prior: Any
) -> tuple[dict[str, Any], str]:
    """How an evaluation decides (``positive``, ``threshold`` and ``prior``: the keywords of
    ``evaluate_predictions``), and where the threshold came from.

    ``predictor`` was loaded with ``prior`` unless ``threshold`` is given: then the threshold is
    the user's and the prior only re-weights precision and F1 (``at_prior``).
    """

    def rule(threshold: float | None, prior: Any, how: str) -> tuple[dict[str, Any], str]:
        positive_class = None if how == "arg-max" else positive or predictor.positive
        return {"positive": positive_class, "threshold": threshold, "prior": prior}, how

    classes = predictor.classes
    if len(classes) != 2:
        return rule(None, predictor.prior, "arg-max")
    stored = predictor.positive or default_positive(classes)
    if threshold is not None:
        if isinstance(prior, dict):  # CLASS=P on a binary task: the positive class's share
            base = np.full(2, 0.5)
            prior = float(class_priors(prior, classes, base, stored)[classes.index(stored)])
        return rule(float(threshold), prior, "given")
    if predictor.prior is not None and positive not in (None, stored):
        raise ValueError(
            f"positive={positive!r}: a prior decides for the checkpoint's positive class "
            f"{stored!r}; pass a threshold to decide for another"
        )
    how = "prior" if predictor.prior is not None else "checkpoint"
    return rule(predictor.threshold, predictor.prior, how)


def evaluate_checkpoint(
    ckpt: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    batch_size: int = 32,
    positive: str | None = None,
    prior: float | None = None,
    threshold: float | None = None,
    split: str = "auto",
    layout: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    mistakes: int = 16,
    cams: int = 6,
    localisation: bool = True,
    **load_options: Any,
) -> dict[str, Any]:
    """Evaluate a checkpoint on labelled data through ``Predictor`` and write the evaluation.

    Args:
        ckpt: checkpoint path (``model.pt``).
        data: labelled data in any layout ``fracturekit.data.load_dataset`` reads.
        out: output folder for ``evaluate_predictions``' files.
        batch_size: inference batch size.
        positive: binary tasks: the positive class (default: the checkpoint's, else
            ``default_positive``).
        prior: decide at this prevalence (``Predictor.with_prior``: binary tasks, the threshold
            the checkpoint's rule gives on its validation scores re-weighted to positive-class
            prevalence ``P``, and precision/F1 re-weighted to ``P`` as ``at_prior``; multi-class
            tasks, ``{class: P}``, probabilities moved to those priors). Default: the
            checkpoint's ``config.prior``, else its stored threshold.
        threshold: override the decision threshold (then ``prior`` only gives ``at_prior``).
        split: ``auto`` (the test split when the data define one, else every image), ``test``,
            ``val``, ``train`` or ``all``.
        layout: data layout passed to ``load_dataset``.
        n_boot, seed: bootstrap resamples and seed.
        mistakes: at most this many images in the mistakes gallery.
        cams: images per group of the CAM gallery in ``out/cams`` (``explain.write_cam_gallery``;
            0: none). PyTorch checkpoints only.
        localisation: when samples have masks, add ``localisation`` (pointing game, energy in
            mask, pixel AUC: ``explain.evaluate_localisation``) to ``metrics.json``.
        **load_options: more keyword arguments for ``load_dataset``.

    Returns:
        The metrics dict, with a ``source`` entry (checkpoint, data, split, unreadable images)
        and, when the data have masks, a ``localisation`` entry.

    Raises:
        ValueError: when the data hold a class the checkpoint does not know, or no image can be
            read.
    """
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(ckpt, prior=prior if threshold is None else None)
    if getattr(predictor, "task", "classify") == "segment" and threshold is not None:
        raise ValueError(
            f"{ckpt}: a segmentation checkpoint decides with its stored pixel threshold and "
            "min_area; threshold= (--threshold) is for classifiers. Use prior= (--prior) to "
            "decide its images for another prevalence"
        )
    splits, samples, used = _load_samples(predictor, data, split, layout, load_options)
    if getattr(predictor, "task", "classify") == "segment":
        source = {"checkpoint": str(ckpt), "data": str(data), "split": used}
        return evaluate_segmenter(
            predictor, samples, out, source=source, batch_size=batch_size, n_boot=n_boot, seed=seed
        )
    scored = _score_samples(predictor, samples, data, ckpt, batch_size)
    rule, decided_by = _decision_rule(predictor, positive, threshold, prior)
    source = {
        "checkpoint": str(ckpt),
        "data": str(data),
        "split": used,
        "images": len(samples),
        "threshold_from": decided_by,  # checkpoint, prior, given or arg-max (multi-class)
        "unreadable": scored.unreadable,
        # Files the loader itself left out (unreadable image or mask, row without a label).
        "dropped": [{"path": str(issue[0]), "error": str(issue[1])} for issue in splits.dropped],
    }
    extra: dict[str, Any] = {"source": source, **_support_entry(predictor, decided_by)}
    if predictor.model is not None:  # heat maps need the PyTorch model
        extra.update(
            _heat_map_outputs(
                predictor, samples, scored, out, rule["threshold"], batch_size, cams, localisation
            )
        )
    return evaluate_predictions(
        np.array(scored.y),
        scored.probabilities,
        scored.classes,
        out,
        paths=scored.paths,
        **rule,
        n_boot=n_boot,
        seed=seed,
        mistakes=mistakes,
        extra=extra,
        notes=_source_notes(source, data),
    )


def _support_entry(predictor: Any, decided_by: str) -> dict[str, Any]:
    """``{"prior_support": ...}`` when the prior set the threshold (``Predictor.prior_support``:
    the validation cases at or above it), else nothing."""
    support = predictor.prior_support if decided_by == "prior" else None
    return {} if support is None else {"prior_support": support}


def _load_samples(
    predictor: Any, data: str | Path, split: str, layout: str, load_options: dict[str, Any]
) -> tuple[Any, list[Any], str]:
    """The data set, the samples of the split to evaluate and that split's name; the
    checkpoint's own split settings when ``data`` is its training data."""
    from fracturekit.data import load_dataset

    trained = training_split_options(predictor.meta.get("config"), data)
    stored_layout = trained.pop("layout", None)
    if layout == "auto" and stored_layout:
        layout = stored_layout
    splits = load_dataset(data, layout=layout, **{**trained, **load_options})
    samples, used = _select_split(splits, split, data)
    if not samples:
        raise ValueError(f"{data}: no labelled image found")
    return splits, samples, used


@dataclass
class _Scored:
    """The classifier's probabilities for the samples it could read, in sample order."""

    classes: list[str]
    y: list[int] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)

    @property
    def probabilities(self) -> np.ndarray:
        return np.stack(self.rows)


def _score_samples(
    predictor: Any, samples: list[Any], data: str | Path, ckpt: str | Path, batch_size: int
) -> _Scored:
    """Every sample through ``predictor.predict_paths``; unreadable images are set aside."""
    scored = _Scored([str(c) for c in predictor.classes])
    index = {c: i for i, c in enumerate(scored.classes)}
    unknown = sorted({s.class_name for s in samples} - set(index))
    if unknown:
        raise ValueError(
            f"{data}: class(es) {unknown} are not among the checkpoint's classes "
            f"{scored.classes} ({ckpt})"
        )
    predictions = predictor.predict_paths([s.path for s in samples], batch_size)
    # One Prediction per path, in order (an unreadable image gives one with ``error`` set).
    for sample, prediction in zip(samples, predictions, strict=True):
        if prediction.error is not None:
            scored.unreadable.append({"path": str(sample.path), "error": str(prediction.error)})
            continue
        scored.paths.append(str(sample.path))
        scored.y.append(index[sample.class_name])
        scored.rows.append(_probability_row(prediction.probabilities, scored.classes))
    if not scored.rows:
        raise ValueError(f"{data}: none of the {len(samples)} images could be read")
    return scored


def _source_notes(source: dict[str, Any], data: str | Path) -> list[str]:
    """The notes of ``metrics.json`` on images left out of the metrics."""
    notes = []
    if source["unreadable"]:
        notes.append(
            f"{len(source['unreadable'])} unreadable image(s) left out of the metrics "
            "(see source.unreadable)"
        )
    if source["dropped"]:
        notes.append(
            f"{len(source['dropped'])} file(s) of {data} left out by the data loader "
            "(see source.dropped)"
        )
    return notes


def _heat_map_outputs(
    predictor: Any,
    samples: list[Any],
    scored: _Scored,
    out: str | Path,
    threshold: float | None,
    batch_size: int,
    cams: int,
    localisation: bool,
) -> dict[str, Any]:
    """Localisation scores (when samples have masks) for ``metrics.json``; the CAM gallery in
    ``out/cams``."""
    from fracturekit.explain import evaluate_localisation, write_cam_gallery

    extra = {}
    if localisation and any(getattr(s, "mask", None) is not None for s in samples):
        extra["localisation"] = evaluate_localisation(predictor, samples, batch_size=batch_size)
    if cams:
        labels = [scored.classes[i] for i in scored.y]
        write_cam_gallery(
            predictor, scored.paths, labels, Path(out) / "cams", n_per_group=cams,
            probabilities=scored.probabilities, threshold=threshold,
        )  # fmt: skip
    return extra


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    out: str | Path | None = None,
    *,
    batch_size: int | None = None,
    log: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a training run's best model (``RUN/model.pt``) as ``fracturekit evaluate`` would.

    Shared by ``fracturekit train`` (the run's own test split), the demo (a separate test set)
    and the benchmarks (the test rows of a manifest).

    Args:
        run_dir: the run folder ``fracturekit.train.train`` wrote.
        data: labelled data to evaluate on; None: the run's own test split (the ``test`` rows of
            ``RUN/splits.csv``, written to ``RUN/test.csv`` and evaluated whole).
        out: where the evaluation files go (default: the run folder).
        batch_size: inference batch size (default: the run's ``batch_size``, else 32).
        log: called with a line of text before the evaluation starts (e.g. ``print``).
        **options: more keyword arguments for :func:`evaluate_checkpoint` (``split``,
            ``layout``, ``seed``...).

    Returns:
        The metrics dict of :func:`evaluate_checkpoint`.

    Raises:
        FileNotFoundError: the run folder holds no ``model.pt``.
        ValueError: as :func:`evaluate_checkpoint`.
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / MODEL_FILE
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run_dir}: no model.pt (not a finished training run?)")
    if batch_size is None:
        batch_size = _run_batch_size(run_dir)
    if data is None:
        data, n = _write_test_manifest(run_dir)
        options = {"split": "all", "layout": "csv", "val_fraction": 0.0, **options}
        if log is not None:
            log(f"evaluating {ckpt} on the test split ({n} images, {data})")
    elif log is not None:
        log(f"evaluating {ckpt} on {data}")
    return evaluate_checkpoint(
        ckpt, data, run_dir if out is None else out, batch_size=batch_size, **options
    )


def _run_batch_size(run_dir: Path) -> int:
    from fracturekit.config import load_yaml

    config = run_dir / "config.yaml"
    if config.is_file():
        value = load_yaml(config).get("batch_size")
        if isinstance(value, int) and value > 0:
            return value
    return 32


def _write_test_manifest(run_dir: Path) -> tuple[Path, int]:
    """``RUN/test.csv`` (path,label): the test rows of ``RUN/splits.csv``."""
    splits = run_dir / "splits.csv"
    try:
        with splits.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("split") == "test"]
    except OSError as exc:
        raise FileNotFoundError(f"{splits}: cannot read the run's splits ({exc})") from exc
    buf = io.StringIO()
    # A segmentation run's splits carry each image's mask.
    fields = ["path", "label", *(["mask"] if rows and "mask" in rows[0] else [])]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    test_csv = run_dir / "test.csv"
    atomic_write_text(test_csv, buf.getvalue())
    return test_csv, len(rows)


# --------------------------------------------------------------------------------------------
# Segmentation checkpoints
# --------------------------------------------------------------------------------------------

SEGMENT_PLOTS = ("iou_histogram.png", "overlays_worst.png", "overlays_best.png")


def _segment_outputs(
    predictor: Any, samples: Sequence[Any], batch_size: int
) -> tuple[list, list, list, list, list[dict[str, str]]]:
    """Probability maps at image size, masks (None: no pixel truth), kept paths and samples."""
    from fracturekit.io import read_image, read_mask

    maps, masks, paths, kept, unreadable = [], [], [], [], []
    for start in range(0, len(samples), batch_size):
        images, chunk = [], []
        for sample in samples[start : start + batch_size]:
            try:
                image = read_image(sample.path, channels=predictor.in_chans)
                mask = None
                if sample.mask is not None:
                    mask = read_mask(
                        sample.mask, size=image.size, orientation=image.info.get("orientation", 1)
                    )
            except (OSError, ValueError) as exc:
                unreadable.append({"path": str(sample.path), "error": str(exc)})
                continue
            images.append(image)
            chunk.append((sample, mask))
        maps += predictor.probability_maps(images)
        for sample, mask in chunk:
            masks.append(mask)
            paths.append(str(sample.path))
            kept.append(sample)
    return maps, masks, paths, kept, unreadable


def evaluate_segmenter(
    predictor: Any,
    samples: Sequence[Any],
    out: str | Path,
    *,
    source: dict[str, Any],
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a segmentation ``Predictor`` on samples and write the evaluation folder.

    ``metrics.json`` holds the classification keys of the image-level decision (positive when
    a predicted piece of at least ``min_area`` pixels remains; image score
    :func:`segment_image_score`), ``segmentation`` (``seg_metrics.segmentation_metrics`` pooled
    over every pixel of the images with pixel truth, at the stored pixel threshold; a prior
    moves the image decision only, see ``Predictor.with_prior``) and
    ``localisation.pointing_game``. Pixel truth: the mask file, else an empty mask for an image
    of a negative class; an image of the positive class without a mask file has none (named in
    the notes, left out of the pixel figures, kept in the image-level ones). Plots:
    ``iou_histogram.png`` (per-image IoU) and ``overlays_worst.png`` / ``overlays_best.png``.
    """
    from fracturekit.seg_metrics import per_image_iou, pointing_game, segmentation_metrics

    classes, positive = list(predictor.classes), predictor.positive
    threshold = predictor.threshold if predictor.threshold is not None else 0.5
    maps, masks, paths, kept, unreadable = _segment_outputs(predictor, samples, batch_size)
    if not maps:
        raise ValueError(f"{source['data']}: none of the {len(samples)} images could be read")
    truth = np.array(
        [
            image_is_positive(s.class_name, m, classes, positive)
            for s, m in zip(kept, masks, strict=True)
        ]
    )
    pieces = predictor.masks_from_maps(maps)
    scores = np.array(
        [segment_image_score(p, k, threshold) for p, k in zip(maps, pieces, strict=True)]
    )
    pix = [
        (p, m if m is not None else np.zeros(p.shape, bool), path)
        for p, m, path, t in zip(maps, masks, paths, truth, strict=True)
        if m is not None or not t
    ]
    notes = []
    missing = [path for (path, m, t) in zip(paths, masks, truth, strict=True) if m is None and t]
    if missing:
        notes.append(
            f"{len(missing)} positive image(s) without a mask file left out of the pixel metrics: "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    pix_maps, pix_masks, pix_paths = ([q[i] for q in pix] for i in range(3))
    decided_by = "prior" if predictor.prior is not None else "checkpoint"
    extra: dict[str, Any] = {
        "source": {
            **source,
            "images": len(samples),
            "threshold_from": decided_by,
            "unreadable": unreadable,
        },
        "segmentation": segmentation_metrics(pix_maps, pix_masks, threshold),
        "localisation": {"pointing_game": pointing_game(pix_maps, pix_masks)},
        "image_score": "max pixel probability; below the pixel threshold when no piece of min_area",
        "min_area": predictor.min_area,
        **_support_entry(predictor, decided_by),
    }
    y = truth.astype(int) if classes.index(positive) == 1 else 1 - truth.astype(int)
    proba = np.stack([1 - scores, scores], axis=1)
    if classes.index(positive) == 0:
        proba = proba[:, ::-1]
    # The image decision: the pixel threshold (a piece of min_area remains), or with a prior
    # the image-score threshold for that prevalence (Predictor.with_prior).
    metrics = evaluate_predictions(
        y, proba, classes, out, paths=paths, positive=positive,
        threshold=predictor.image_threshold, prior=predictor.prior,
        n_boot=n_boot, seed=seed, extra=extra, notes=notes,
    )  # fmt: skip
    ious = per_image_iou(pix_maps, pix_masks, threshold)
    plot_iou_histogram(ious, Path(out) / SEGMENT_PLOTS[0])
    plot_overlays(pix_paths, pix_maps, pix_masks, ious, threshold, Path(out))
    return metrics


def plot_iou_histogram(ious: Sequence[float], path: Path) -> Path:
    """Histogram of per-image IoU (crack/fracture class)."""
    fig = _figure(5.0, 3.2)
    ax = fig.subplots()
    ax.hist(list(ious), bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
    ax.set_xlabel("IoU per image")
    ax.set_ylabel("images")
    ax.set_title(f"per-image IoU ({len(ious)} images, median {np.median(ious):.3f})", fontsize=10)
    return _save(fig, path)


def plot_overlays(
    paths: Sequence[str],
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    ious: Sequence[float],
    threshold: float,
    out: Path,
    *,
    limit: int = 8,
) -> None:
    """``overlays_worst.png`` and ``overlays_best.png``: image, truth (green) and prediction
    (red, yellow where both) of the lowest- and highest-IoU images."""
    order = np.argsort(np.asarray(ious), kind="mergesort")
    for name, chosen in (
        ("overlays_worst.png", order[:limit]),
        ("overlays_best.png", order[::-1][:limit]),
    ):
        if len(chosen) == 0:
            continue
        cols = min(4, len(chosen))
        rows = math.ceil(len(chosen) / cols)
        fig = _figure(2.6 * cols, 2.8 * rows)
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, i in zip(axes, chosen, strict=False):
            ax.imshow(_overlay(paths[i], maps[i] >= threshold, masks[i]))
            ax.set_title(f"IoU {ious[i]:.3f}\n{Path(paths[i]).name[:28]}", fontsize=7.5)
        fig.suptitle(f"{name[9:-4]} images: truth green, prediction red, both yellow", fontsize=10)
        _save(fig, out / name)


def _overlay(path: str, pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from fracturekit.io import read_image
    from fracturekit.render import truth_overlay

    return truth_overlay(read_image(path, channels=3), pred, mask)


def write_probability_maps(
    predictor: Any, paths: Sequence[str | Path], out: str | Path, *, overwrite: bool = False
) -> tuple[list[Path], list[tuple[str, str]]]:
    """What ``fracturekit explain`` shows for a segmenter: per image ``<stem>_prob.png`` (the
    image, the probability map over it, the mask at the stored threshold) and ``<stem>_prob.npy``
    (float32 probabilities at the image's size).

    Returns:
        The figures written, and ``(path, error)`` of the images that could not be read.

    Raises:
        FileExistsError: a figure exists and ``overwrite`` is False.
    """
    from fracturekit._files import atomic_write
    from fracturekit.io import read_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for path in paths:
        figure, array = out / f"{Path(path).stem}_prob.png", out / f"{Path(path).stem}_prob.npy"
        if figure.exists() and not overwrite:
            raise FileExistsError(f"{figure} exists; pass --overwrite to replace it")
        try:
            image = read_image(path, channels=predictor.in_chans)
        except (OSError, ValueError) as exc:
            failed.append((str(path), str(exc)))
            continue
        prob = predictor.probability_maps([image])[0].astype(np.float32)
        mask = predictor.masks_from_maps([prob])[0]
        atomic_write(array, lambda tmp, prob=prob: _save_array(tmp, prob))
        written.append(_probability_figure(np.asarray(image.convert("RGB")), prob, mask, figure))
    return written, failed


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save on a name would append ".npy" to the temp name
        np.save(fh, array, allow_pickle=False)


def _probability_figure(image: np.ndarray, prob: np.ndarray, mask: np.ndarray, path: Path) -> Path:
    fig = _figure(9.0, 3.3)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(image)
    shown = axes[1].imshow(prob, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.6)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    axes[1].set_title(f"crack probability (max {prob.max():.3f})", fontsize=9)
    axes[2].imshow(mask, cmap="gray")
    axes[2].set_title(f"mask ({int(mask.sum())} px)", fontsize=9)
    for ax in axes:
        ax.axis("off")
    return _save(fig, path)
