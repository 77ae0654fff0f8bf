"""Classification metrics with bootstrap intervals: the numbers of ``metrics.json``.

Level 1 (numpy, scikit-learn and ``calibration``'s ECE and positive-class naming), so that
``evaluate`` (which computes them) and ``report`` (which renders them) share one list of keys. ``compute_metrics`` returns the keys of
``METRIC_KEYS`` in that order, always, then ``EXTRA_KEYS``; a value that is undefined on the data
is ``None`` and ``notes`` says why.

Definitions (binary tasks decide ``positive if p(positive) >= threshold``; multi-class tasks take
the arg-max class):

- ``threshold``: the decision threshold used (binary; None for multi-class).
- ``prior``: the positive-class prevalence the decisions were made for (binary, a float), or the
  class priors the probabilities were adjusted to (multi-class, ``{class: P}``); None when the
  decisions are the checkpoint's own (see ``calibration.threshold_at_prior``).
- ``precision``/``recall``/``f1``: of the positive class (binary) or macro averages (multi-class).
- ``roc_auc``: binary, of the positive-class probability; multi-class, the macro mean of the
  one-vs-rest AUCs (as scikit-learn's ``multi_class="ovr", average="macro"``). ``None`` when a class
  has no sample, since an AUC needs both a positive and a negative.
- ``average_precision``: step-wise AP (scikit-learn's ``average_precision_score``), macro over
  classes for multi-class tasks.
- ``ece``: expected calibration error with 15 equal-width bins on the top-label confidence (the
  largest class probability, counted correct when the arg-max class is true), Guo et al. 2017,
  eq. 3. It measures the probabilities and so does not depend on the decision threshold.
- ``ci95``: 95 % percentile intervals from a stratified bootstrap (each class resampled with
  replacement to its own size, so every resample holds every class; Efron & Tibshirani 1993).
  ``bootstrap`` records the number of resamples and the seed.
- ``at_prior`` (binary, with ``prior=P``): precision and F1 at positive-class prevalence ``P`` with
  the recall and specificity measured here: ``precision = P*TPR / (P*TPR + (1-P)*(1-TNR))``
  (Bayes' rule; recall and specificity do not depend on prevalence, precision does). On an
  evaluation set whose prevalence is not ``P`` (a balanced test split), this is what the
  decisions made for ``P`` would score where positives are that rare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fracturekit.calibration import (
    ECE_BINS,
    default_positive,
    expected_calibration_error,
    looks_negative,
)

METRIC_KEYS: tuple[str, ...] = (
    "n",
    "classes",
    "positive",
    "threshold",
    "prior",
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "f1",
    "macro_f1",
    "weighted_f1",
    "roc_auc",
    "average_precision",
    "cohen_kappa",
    "ece",
    "per_class",
    "confusion_matrix",
    "ci95",
)
# Keys compute_metrics adds after METRIC_KEYS (``at_prior`` only with a binary prior).
EXTRA_KEYS: tuple[str, ...] = ("at_prior", "bootstrap", "notes")

# Bootstrap resamples are processed in chunks of about this many (resample x sample) cells, so
# memory stays bounded (~32 MB per array) however large the evaluation set.
_BOOT_CELLS = 4_000_000

# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def check_inputs(y_true: Any, proba: Any, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels as class indices (from indices or names) and probabilities as float (N, C)."""
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(f"need at least two classes, got {list(classes)}")
    if len(set(classes)) != n_classes:
        raise ValueError(f"class names must be unique, got {list(classes)}")
    if hasattr(proba, "detach"):
        proba = proba.detach().cpu().numpy()
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(
            f"proba must have shape (N, {n_classes}) for classes {list(classes)}, got {p.shape}"
        )
    y_raw = np.asarray(y_true)
    if y_raw.ndim != 1 or y_raw.size != p.shape[0]:
        raise ValueError(
            f"y_true must hold {p.shape[0]} labels (one per row of proba), got {y_raw.shape}"
        )
    if p.shape[0] == 0:
        raise ValueError("cannot evaluate zero samples")
    if y_raw.dtype.kind in "USO":
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({str(v) for v in y_raw.tolist()} - set(index))
        if unknown:
            raise ValueError(f"y_true holds labels not among classes {list(classes)}: {unknown}")
        y = np.array([index[str(v)] for v in y_raw.tolist()], dtype=np.int64)
    elif y_raw.dtype.kind in "iub":
        y = y_raw.astype(np.int64)
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"y_true holds class indices outside [0, {n_classes - 1}]")
    else:
        raise ValueError(f"y_true must hold class indices or class names, got dtype {y_raw.dtype}")
    if not np.isfinite(p).all():
        raise ValueError("proba contains NaN or infinite values")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise ValueError("proba must lie in [0, 1]: pass class probabilities, not logits")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > 1e-3)
    if bad.size:
        raise ValueError(
            f"each row of proba must sum to 1 (row {bad[0]} sums to {sums[bad[0]]:.4f}): "
            "pass class probabilities (softmax), not logits or independent sigmoids"
        )
    return y, np.clip(p, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Metric kernels, vectorised over a stack of bootstrap weightings
# --------------------------------------------------------------------------------------------


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (scikit-learn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _confusion_stack(weights: np.ndarray, y: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    """(B, C, C) confusion matrices, one per row of ``weights`` (B, N) sample multiplicities."""
    code = y * c + pred
    order = np.argsort(code, kind="stable")
    sorted_code = code[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_code)) + 1]
    # Sum the weights of the samples sharing each (true, predicted) cell: one pass over (B, N),
    # and memory B x C^2 however many classes there are.
    sums = np.add.reduceat(weights[:, order], starts, axis=1)
    out = np.zeros((weights.shape[0], c * c))
    out[:, sorted_code[starts]] = sums
    return out.reshape(-1, c, c)


def _f1_stack(cm: np.ndarray, pos: int | None) -> np.ndarray:
    """F1 of class ``pos`` (binary) or macro F1 (``pos`` None) for each confusion matrix."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    fp = cm.sum(axis=1) - tp
    fn = cm.sum(axis=2) - tp
    f1 = safe_div(2 * tp, 2 * tp + fp + fn)
    return f1[:, pos] if pos is not None else f1.mean(axis=1)


def _auc_stack(weights: np.ndarray, is_pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of ``weights`` by the Mann-Whitney statistic.

    AUC = P(score of a positive > score of a negative) + 1/2 P(tie) (Hanley & McNeil 1982), the
    area under the empirical ROC curve that scikit-learn's trapezoidal ``roc_auc_score`` gives.
    With weights w: sum over positives i of w_i * (W_neg(s < s_i) + W_neg(s = s_i) / 2), divided by
    W_pos * W_neg. Negatives are sorted once; each resample only needs a cumulative sum.
    """
    neg = np.flatnonzero(~is_pos)
    pos = np.flatnonzero(is_pos)
    order = neg[np.argsort(score[neg], kind="mergesort")]
    s_neg = score[order]
    below = np.searchsorted(s_neg, score[pos], side="left")
    upto = np.searchsorted(s_neg, score[pos], side="right")
    w_neg = weights[:, order]
    cum = np.zeros((weights.shape[0], order.size + 1))
    np.cumsum(w_neg, axis=1, out=cum[:, 1:])
    wins = 0.5 * (cum[:, below] + cum[:, upto])  # W(s < s_i) + W(s = s_i) / 2
    w_pos = weights[:, pos]
    total = w_pos.sum(axis=1) * cum[:, -1]
    return safe_div((w_pos * wins).sum(axis=1), total)


def _auc_macro_stack(
    weights: np.ndarray, y: np.ndarray, p: np.ndarray, pos: int | None
) -> np.ndarray:
    if pos is not None:
        return _auc_stack(weights, y == pos, p[:, pos])
    return np.mean([_auc_stack(weights, y == c, p[:, c]) for c in range(p.shape[1])], axis=0)


def _bootstrap(
    y: np.ndarray,
    pred: np.ndarray,
    p: np.ndarray,
    pos: int | None,
    *,
    n_boot: int,
    seed: int,
    with_auc: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """F1 and AUC over ``n_boot`` stratified resamples, as multiplicity weights (B, N).

    Resampling N indices with replacement is the same as giving each sample a multiplicity; within
    each class the multiplicities of a resample are the bincount of n_c uniform draws.
    """
    n, c = y.size, p.shape[1]
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(y == k) for k in range(c)]
    chunk = max(1, min(n_boot, _BOOT_CELLS // max(n, 1)))
    f1s: list[np.ndarray] = []
    aucs: list[np.ndarray] = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        weights = np.zeros((b, n))
        rows = np.arange(b)[:, None]
        for idx in members:
            if idx.size == 0:
                continue
            draws = rng.integers(0, idx.size, size=(b, idx.size))
            counts = np.bincount((rows * idx.size + draws).ravel(), minlength=b * idx.size)
            weights[:, idx] = counts.reshape(b, idx.size)
        f1s.append(_f1_stack(_confusion_stack(weights, y, pred, c), pos))
        if with_auc:
            aucs.append(_auc_macro_stack(weights, y, p, pos))
    return np.concatenate(f1s), (np.concatenate(aucs) if with_auc else None)


def _interval(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def _opt(x: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------
# compute_metrics
# --------------------------------------------------------------------------------------------


def decide_classes(
    p: np.ndarray, classes: list[str], positive: str | None, threshold: float | None
) -> tuple[np.ndarray, int | None, float | None]:
    """Predicted class indices, the positive index (binary) and the threshold used."""
    if len(classes) == 2:
        name = positive if positive is not None else default_positive(classes)
        if name not in classes:
            raise ValueError(f"positive class {name!r} is not one of the classes {classes}")
        if threshold is None:
            threshold = 0.5
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold={threshold}: must lie in [0, 1]")
        pos = classes.index(name)
        pred = np.where(p[:, pos] >= threshold, pos, 1 - pos)
        return pred, pos, float(threshold)
    if positive is not None:
        raise ValueError(
            f"positive={positive!r} applies to binary tasks; this one has {len(classes)} classes"
        )
    return p.argmax(axis=1), None, None


def _check_prior(
    prior: Any, pos: int | None, classes: list[str]
) -> float | dict[str, float] | None:
    """The prior as recorded in ``metrics.json``: a float (binary) or ``{class: P}``."""
    if prior is None:
        return None
    if isinstance(prior, Mapping):
        if pos is not None:
            raise ValueError("a prior per class ({class: P}) applies to multi-class tasks")
        unknown = sorted(set(map(str, prior)) - set(classes))
        if unknown:
            raise ValueError(f"prior names class(es) {unknown} not among {classes}")
        return {str(k): float(v) for k, v in prior.items()}
    if pos is None:
        raise ValueError("prior= applies to binary tasks only; pass {class: P} for multi-class")
    if not 0.0 < float(prior) < 1.0:
        raise ValueError(f"prior={prior}: must lie in (0, 1)")
    return float(prior)


def _decision_notes(classes: list[str], positive: str | None, pos: int | None) -> list[str]:
    """Notes on how the positive class was chosen and how multi-class tasks decide."""
    if pos is None:
        return ["threshold: multi-class decisions take the arg-max class"]
    if positive is None and looks_negative(classes[0]) == looks_negative(classes[1]):
        return [
            f"positive class {classes[pos]!r} chosen by position (neither or both class names "
            "look negative); pass positive= to choose"
        ]
    return []


def _count_metrics(cm: np.ndarray, pos: int | None, notes: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, kappa, per-class and headline precision/recall/F1 from counts."""
    n = cm.sum()
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision_c = safe_div(tp, predicted)
    recall_c = safe_div(tp, support)
    f1_c = safe_div(2 * tp, support + predicted)
    accuracy = float(tp.sum() / n)
    # Cohen's kappa from the confusion matrix: (p_o - p_e) / (1 - p_e) (Cohen 1960).
    p_e = float((support * predicted).sum() / n**2)
    kappa = (accuracy - p_e) / (1.0 - p_e) if p_e < 1.0 else None
    if kappa is None:
        notes.append("cohen_kappa: undefined, true and predicted labels are one single class")
    pick = (lambda v: v[pos]) if pos is not None else (lambda v: v.mean())
    return {
        "accuracy": accuracy,
        # scikit-learn's balanced accuracy: mean recall over the classes present in y_true.
        "balanced_accuracy": float(recall_c[support > 0].mean()),
        "precision": float(pick(precision_c)),
        "recall": float(pick(recall_c)),
        "f1": float(pick(f1_c)),
        "macro_f1": float(f1_c.mean()),
        "weighted_f1": float((f1_c * support).sum() / n),
        "cohen_kappa": _opt(kappa),
        "per_class": [precision_c, recall_c, f1_c, support],
    }


def _ranking_metrics(
    y: np.ndarray, p: np.ndarray, pos: int | None, absent: list[str], notes: list[str]
) -> tuple[float | None, float | None]:
    """ROC AUC and average precision (None, with a note, when a class has no sample)."""
    if absent:
        notes.append(
            "roc_auc, average_precision, ci95.roc_auc: undefined, no sample of class(es) "
            + ", ".join(repr(a) for a in absent)
        )
        return None, None
    from sklearn.metrics import average_precision_score

    roc_auc = float(_auc_macro_stack(np.ones((1, y.size)), y, p, pos)[0])
    if pos is not None:
        return roc_auc, float(average_precision_score(y == pos, p[:, pos]))
    per_class = [average_precision_score(y == k, p[:, k]) for k in range(p.shape[1])]
    return roc_auc, float(np.mean(per_class))


def _intervals(
    y: np.ndarray, pred: np.ndarray, p: np.ndarray, pos: int | None, notes: list[str], **boot: Any
) -> dict[str, list[float] | None]:
    """``ci95``: bootstrap percentile intervals of F1 and ROC AUC (None where not computed).

    ``boot``: ``_bootstrap``'s keyword arguments (n_boot, seed, with_auc).
    """
    ci95: dict[str, list[float] | None] = {"f1": None, "roc_auc": None}
    if boot["n_boot"] == 0:
        notes.append("ci95: n_boot=0, no bootstrap intervals")
        return ci95
    f1_samples, auc_samples = _bootstrap(y, pred, p, pos, **boot)
    ci95["f1"] = _interval(f1_samples)
    if auc_samples is not None:
        ci95["roc_auc"] = _interval(auc_samples)
    return ci95


def compute_metrics(
    y_true: Any,
    proba: Any,
    classes: Sequence[str],
    *,
    positive: str | None = None,
    threshold: float | None = 0.5,
    prior: float | Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Classification metrics, calibration and bootstrap intervals.

    Args:
        y_true: (N,) true labels, as class indices into ``classes`` or as class names.
        proba: (N, C) class probabilities (rows sum to 1), columns in ``classes`` order.
        classes: the C class names.
        positive: binary tasks: the positive class (default: ``default_positive(classes)``).
        threshold: binary tasks: decide positive when p(positive) >= threshold. Ignored (and
            reported as None) for multi-class tasks, which take the arg-max class.
        prior: the prevalence the decisions were made for, recorded as ``prior``. Binary tasks
            (a float): also report precision and F1 at this positive-class prevalence
            (``at_prior``), keeping the recall and specificity measured here. Multi-class tasks:
            ``{class: P}``, recorded only (the probabilities passed in are already adjusted).
        n_boot: bootstrap resamples for ``ci95`` (0 disables the intervals).
        seed: seed of the bootstrap's random generator.

    Returns:
        A JSON-ready dict with the keys of ``METRIC_KEYS`` in that order, then ``at_prior`` (with
        a binary ``prior``), ``bootstrap`` ({n_boot, seed, method, level}) and ``notes`` (why a
        value is None, or how a default was chosen). See the module docstring for definitions.

    Raises:
        ValueError: on inconsistent shapes, labels outside ``classes``, values that are not
            probabilities, an unknown positive class, or a ``prior`` outside (0, 1) / of the
            wrong kind for the task.
    """
    classes = [str(c) for c in classes]
    y, p = check_inputs(y_true, proba, classes)
    n, c = y.size, len(classes)
    pred, pos, threshold = decide_classes(p, classes, positive, threshold)
    notes = _decision_notes(classes, positive, pos)
    prior = _check_prior(prior, pos, classes)
    if n_boot < 0:
        raise ValueError(f"n_boot={n_boot}: must be >= 0")

    cm = _confusion_stack(np.ones((1, n)), y, pred, c)[0]
    counts = _count_metrics(cm, pos, notes)
    precision_c, recall_c, f1_c, support = counts.pop("per_class")
    absent = [classes[k] for k in range(c) if support[k] == 0]
    notes += [f"per_class[{a!r}]: no sample of this class; recall and F1 are 0" for a in absent]
    roc_auc, average_precision = _ranking_metrics(y, p, pos, absent, notes)
    ci95 = _intervals(y, pred, p, pos, notes, n_boot=n_boot, seed=seed, with_auc=not absent)
    metrics: dict[str, Any] = {
        "n": int(n),
        "classes": classes,
        "positive": classes[pos] if pos is not None else None,
        "threshold": threshold,
        "prior": prior,
        **counts,
        "roc_auc": roc_auc,
        "average_precision": average_precision,
        "ece": _opt(expected_calibration_error(p, y, ECE_BINS)),
        "per_class": {
            classes[k]: {
                "precision": float(precision_c[k]),
                "recall": float(recall_c[k]),
                "f1": float(f1_c[k]),
                "support": int(support[k]),
            }
            for k in range(c)
        },
        "confusion_matrix": cm.astype(np.int64).tolist(),
        "ci95": ci95,
    }
    metrics = {k: metrics[k] for k in METRIC_KEYS}  # the documented order, always
    if isinstance(prior, float):
        metrics["at_prior"] = _at_prior(cm, pos, prior, notes)
    metrics["bootstrap"] = {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "method": "stratified percentile",
        "level": 0.95,
    }
    metrics["notes"] = notes
    return metrics


def precision_at_prior(recall: float, specificity: float, prior: float) -> float | None:
    """Precision at positive-class prevalence ``prior`` for a given recall and specificity.

    Bayes' rule: PPV = P*TPR / (P*TPR + (1-P)*(1-TNR)). None when nothing would be predicted
    positive (recall 0 and specificity 1).
    """
    hits = prior * recall
    false_alarms = (1.0 - prior) * (1.0 - specificity)
    if hits + false_alarms <= 0:
        return None
    return hits / (hits + false_alarms)


def _at_prior(cm: np.ndarray, pos: int, prior: float, notes: list[str]) -> dict[str, Any]:
    neg = 1 - pos
    tp, fn = cm[pos, pos], cm[pos, neg]
    tn, fp = cm[neg, neg], cm[neg, pos]
    recall = float(safe_div(tp, tp + fn))
    specificity = float(safe_div(tn, tn + fp))
    precision = precision_at_prior(recall, specificity, prior)
    if precision is None:
        notes.append("at_prior: nothing is predicted positive, precision and F1 are undefined")
        f1 = None
    else:
        f1 = float(safe_div(2 * precision * recall, precision + recall))
    return {
        "prior": prior,
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
        "evaluated_prevalence": float((tp + fn) / cm.sum()),
    }
