"""Decision thresholds and probability calibration, fitted on validation data.

Level 0 (numpy/scipy only) so that training (which stores the threshold and temperature in the
checkpoint) and evaluation (which reports calibration) share one implementation.

- ``choose_threshold``: the binary decision threshold on the positive-class probability
  (max F1 by default; ``target_recall`` for screening, where a missed fracture costs more than a
  false alarm).
- ``threshold_at_prior``: the same rule on validation data re-weighted to another prevalence (a
  pavement survey with 3 % cracks, a model validated on a balanced split); ``adjust_to_priors``:
  multi-class posteriors moved to other class priors (Saerens et al. 2002); ``parse_prior`` reads
  ``P`` or ``CLASS=P,...``; ``prior_support``: how many validation cases set such a threshold,
  and the precision at that prevalence that the validation split vouches for.
- ``fit_temperature``: temperature scaling, one scalar ``T`` dividing the logits, fitted by
  minimising the validation negative log-likelihood (Guo et al. 2017, "On Calibration of Modern
  Neural Networks", ICML, section 4.2). It changes confidences, never the arg-max class.
- ``reliability_bins`` / ``expected_calibration_error``: ECE with equal-width confidence bins on the
  top-label confidence (Guo et al. 2017, eq. 3; Naeini et al. 2015).
- ``default_positive`` / ``looks_negative``: the positive class of a binary task from its class
  names (the one not named like ``no_crack``, ``not fractured``, ``normal``, ``negative``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Temperatures are searched in [1/20, 20]: wide enough for any network we train, and the lower
# bound stops the fit from collapsing towards T -> 0 when validation data are perfectly separated
# (then the NLL keeps falling as T shrinks and has no finite minimiser).
T_MIN, T_MAX = 0.05, 20.0
ECE_BINS = 15


def _to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, lists and torch tensors (without importing torch)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _binary_targets(y_true: Any, name: str = "y_true") -> np.ndarray:
    y = _to_numpy(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    if y.dtype == bool:
        return y
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"{name} must hold 0/1 (1 = positive class), got values {sorted(values)}")
    return y.astype(bool)


# Threshold criteria: one row per criterion, each a function of the confusion counts at every
# candidate threshold (arrays). Zero divided by zero counts as 0, as in scikit-learn.
def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    return _safe_div(2 * tp, 2 * tp + fp + fn)


def _balanced_accuracy(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray
) -> np.ndarray:
    return 0.5 * (_safe_div(tp, tp + fn) + _safe_div(tn, tn + fp))


def _accuracy(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    return _safe_div(tp + tn, tp + fp + fn + tn)


THRESHOLD_METRICS: dict[str, Callable[..., np.ndarray]] = {
    "f1": _f1,
    "balanced_accuracy": _balanced_accuracy,  # = Youden's J / 2 + 1/2
    "accuracy": _accuracy,
}


def _counts_at_each_score(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, ...]:
    """Distinct scores (descending) and the confusion counts of the rule ``p >= score``."""
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    # The last index of each run of equal scores: ties are all in or all out.
    last = np.r_[np.flatnonzero(np.diff(p_sorted) != 0), p_sorted.size - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    n_pos = int(y.sum())
    fn = n_pos - tp
    tn = (y.size - n_pos) - fp
    return p_sorted[last], tp, fp, fn, tn


SMOOTH_GRID = 4001  # thresholds tried by the smoothed rule, evenly spaced on the logit scale
SMOOTH_BINS = 2000  # larger validation classes are binned before smoothing
_LOGIT_CLIP = 1e-7  # probabilities are clipped to [clip, 1 - clip] before the logit


def _silverman_bandwidth(z: np.ndarray) -> float:
    """Silverman's rule of thumb, ``0.9 min(sd, IQR / 1.34) n^(-1/5)``, never zero."""
    if z.size < 2:
        return 1.0
    q75, q25 = np.percentile(z, [75, 25])
    sd = float(np.std(z, ddof=1))
    spread = min(sd, float(q75 - q25) / 1.34) or sd or 1.0
    return max(0.9 * spread * z.size ** (-0.2), 1e-3)


def _smoothed_counts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, ...]:
    """Thresholds (descending) and expected confusion counts under per-class kernel estimates.

    Each class's scores are mapped to logits and smoothed with a normal kernel of that class's
    Silverman bandwidth; ``tp`` at threshold ``t`` is the expected number of positives with a
    logit at or above ``logit(t)``, and so on. The counts keep the class totals, so they are
    weighted and scored exactly as the raw counts of ``_counts_at_each_score``.
    """
    from scipy.special import expit, logit, ndtr

    z = logit(np.clip(p, _LOGIT_CLIP, 1 - _LOGIT_CLIP))
    z_pos, z_neg = z[y], z[~y]
    pad = 4 * max(_silverman_bandwidth(z_pos), _silverman_bandwidth(z_neg))
    grid = np.linspace(z.max() + pad, z.min() - pad, SMOOTH_GRID)  # descending thresholds

    def above(zc: np.ndarray) -> np.ndarray:
        # Expected count of scores >= each grid value: the sum of the kernels' upper tails.
        # Past SMOOTH_BINS scores, the kernels sit at the centres of that many equal bins,
        # weighted by their counts (a bin is then a small fraction of the bandwidth).
        h = _silverman_bandwidth(zc)
        weights = np.ones_like(zc)
        if zc.size > SMOOTH_BINS:
            weights, edges = np.histogram(zc, bins=SMOOTH_BINS)
            zc = (edges[:-1] + edges[1:]) / 2
        return ndtr((zc[None, :] - grid[:, None]) / h) @ weights

    tp, fp = above(z_pos), above(z_neg)
    return expit(grid), tp, fp, z_pos.size - tp, z_neg.size - fp


def choose_threshold(
    y_true: Any, p_pos: Any, *, metric: str = "f1", target_recall: float | None = None
) -> float:
    """Pick the binary decision threshold on validation data.

    The decision rule is ``positive if p_pos >= threshold``.

    Args:
        y_true: 0/1 or bool labels, 1 (True) for the positive class.
        p_pos: probability of the positive class for each sample.
        metric: criterion to maximise, a key of ``THRESHOLD_METRICS`` ("f1", "balanced_accuracy",
            "accuracy"). The threshold returned lies halfway between the lowest validation score
            taken as positive and the next lower score, so it does not sit on a validation sample.
        target_recall: when given, ignore ``metric`` and return the highest threshold that keeps
            recall >= ``target_recall`` on these data (screening: a missed fracture costs more
            than a false alarm). That threshold is the score of the positive sample that reaches
            the target recall.

    Returns:
        The threshold, a float in [0, 1] for probabilities.

    Raises:
        ValueError: on mismatched lengths, non-binary labels, no positive samples, an unknown
            metric or a target recall outside (0, 1].
    """
    y = _binary_targets(y_true)
    p = _to_numpy(p_pos).astype(float).ravel()
    if p.size != y.size:
        raise ValueError(f"y_true has {y.size} labels but p_pos has {p.size} scores")
    if y.size == 0:
        raise ValueError("cannot choose a threshold on zero samples")
    if not np.isfinite(p).all():
        raise ValueError("p_pos contains NaN or infinite values")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("cannot choose a threshold: the validation data hold no positive sample")

    scores, tp, fp, fn, tn = _counts_at_each_score(y, p)
    return _best_threshold(scores, tp, fp, fn, tn, metric=metric, target_recall=target_recall)


def _best_threshold(
    scores: np.ndarray,
    tp: np.ndarray,
    fp: np.ndarray,
    fn: np.ndarray,
    tn: np.ndarray,
    *,
    metric: str,
    target_recall: float | None,
) -> float:
    """The threshold rule of ``choose_threshold`` on (possibly weighted) counts at each score."""
    if target_recall is not None:
        if not 0 < target_recall <= 1:
            raise ValueError(f"target_recall={target_recall}: must lie in (0, 1]")
        recall = tp / (tp[-1] + fn[-1])
        # Recall grows as the threshold falls; the first (highest) score reaching the target.
        # A tiny tolerance so that e.g. 19/20 counts as reaching 0.95 despite rounding.
        k = int(np.flatnonzero(recall >= target_recall - 1e-12)[0])
        return float(scores[k])

    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"metric={metric!r}: use one of {', '.join(THRESHOLD_METRICS)}")
    values = THRESHOLD_METRICS[metric](tp, fp, fn, tn)
    k = int(np.argmax(values))  # the first maximum: the highest threshold among equal scores
    if k + 1 < scores.size:
        return float((scores[k] + scores[k + 1]) / 2)
    return float(scores[k])


# --------------------------------------------------------------------------------------------
# Decisions at another prevalence, from the validation scores a checkpoint stores

NO_VALIDATION = (
    "stores no validation scores (meta['validation']), so it cannot decide at another "
    "prevalence; retrain it with this version of fracturekit, or pass no prior"
)


def validation_scores(meta: dict[str, Any], source: str = "checkpoint") -> tuple[np.ndarray, ...]:
    """The validation labels (N,) and class probabilities (N, C) stored in a checkpoint's meta.

    Training stores them as ``meta["validation"] = {"labels": [...], "probabilities": [[...]]}``:
    the probabilities exactly as the deployed model gives them (temperature and test-time
    augmentation applied).

    Raises:
        ValueError: naming ``source`` when the meta holds none (an older checkpoint) or they
            are malformed; never a made-up substitute.
    """
    stored = meta.get("validation")
    if not isinstance(stored, dict) or not stored.get("labels"):
        raise ValueError(f"{source}: {NO_VALIDATION}")
    labels = np.asarray(stored["labels"], dtype=np.int64)
    proba = np.asarray(stored.get("probabilities"), dtype=np.float64)
    n_classes = len(meta.get("classes") or []) or (proba.shape[1] if proba.ndim == 2 else 0)
    if proba.shape != (labels.size, n_classes) or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(
            f"{source}: meta['validation'] must hold {n_classes}-class probabilities for each "
            f"label; got labels {labels.shape} and probabilities {proba.shape}"
        )
    return labels, proba


def class_frequencies(labels: Any, n_classes: int) -> np.ndarray:
    """The share of each class among ``labels`` (class indices): the validation priors."""
    y = _to_numpy(labels).astype(np.int64).ravel()
    return np.bincount(y, minlength=n_classes)[:n_classes] / max(y.size, 1)


def _prior_inputs(
    labels: Any, probabilities: Any, positive_index: int, prior: float, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validation truth (True: positive) and positive-class scores for a prior's rule; refuses a
    prior outside (0, 1) and data without both classes (the error says it cannot ``what``)."""
    if not 0.0 < float(prior) < 1.0:
        raise ValueError(f"prior={prior}: must lie in (0, 1)")
    y = _to_numpy(labels).astype(np.int64).ravel() == positive_index
    p = _to_numpy(probabilities).astype(float)[:, positive_index]
    if y.all() or not y.any():
        raise ValueError(f"cannot {what}: the validation data hold only one class")
    return y, p


def threshold_at_prior(
    labels: Any,
    probabilities: Any,
    positive_index: int,
    prior: float,
    *,
    metric: str = "f1",
    target_recall: float | None = None,
    smooth: bool = False,
) -> float:
    """The binary decision threshold that is best where positives make up ``prior`` of the cases.

    The validation set, with positive share ``pi``, is re-weighted to prevalence ``prior``:
    each positive counts ``prior / pi`` and each negative ``(1 - prior) / (1 - pi)``
    (importance weights), and the rule of :func:`choose_threshold` is applied to the weighted
    confusion counts. For F1 that moves the threshold up as positives get rarer (precision
    falls with prevalence; recall does not). With ``target_recall`` the threshold is the same
    at every prior, because recall counts positives only; balanced accuracy does not depend on
    prevalence either. Accuracy at ``prior`` gives the Bayes-optimal threshold for that
    prevalence.

    At a low prior a false positive weighs many true positives, so this rule puts the threshold
    just above the top one to three validation negatives. ``smooth=True`` counts instead the
    expected positives and negatives under a kernel estimate of each class's scores (on the
    logit scale, a normal kernel of Silverman's bandwidth per class, a fine grid of
    thresholds): steadier, and closer to the best threshold when the validation labels are
    right (``benchmarks/prior_rule.py``). It is not the default because it spreads the mass of
    mislabelled negatives too: on CRACK500, whose ``no_crack`` tiles include unannotated
    cracks, it chose higher thresholds and lower F1 at 3 % on held-out photos than the raw
    counts (README, "Deciding at 3% cracks").

    Args:
        labels: (N,) validation class indices.
        probabilities: (N, C) validation class probabilities (C = 2).
        positive_index: the column of the positive class.
        prior: the positive-class prevalence to decide for, in (0, 1).
        metric, target_recall: the threshold rule, as :func:`choose_threshold` (the checkpoint's
            ``config.threshold_metric`` and ``config.target_recall``). A target recall is
            read off the raw counts: it does not depend on the prior.
        smooth: kernel-smoothed expected counts instead of the raw weighted counts.

    Returns:
        The threshold on the positive-class probability.

    Raises:
        ValueError: ``prior`` outside (0, 1), or validation data without both classes.
    """
    y, p = _prior_inputs(labels, probabilities, positive_index, prior, "re-weight to a prior")
    pi = float(y.mean())
    if smooth and target_recall is None:
        scores, tp, fp, fn, tn = _smoothed_counts(y, p)
    else:
        scores, tp, fp, fn, tn = _counts_at_each_score(y, p)
    w_pos, w_neg = prior / pi, (1.0 - prior) / (1.0 - pi)
    return _best_threshold(
        scores, tp * w_pos, fp * w_neg, fn * w_pos, tn * w_neg,
        metric=metric, target_recall=target_recall,
    )  # fmt: skip


SUPPORT_LEVEL = 0.9  # the two-sided level of prior_support's interval
FEW_NEGATIVES = 3  # prior_support: at most this many validation negatives above the threshold


def prior_support(
    labels: Any,
    probabilities: Any,
    positive_index: int,
    threshold: float,
    prior: float,
    *,
    level: float = SUPPORT_LEVEL,
) -> dict[str, Any]:
    """How firmly the validation split sets a threshold decided for prevalence ``prior``.

    At a low prior the threshold of :func:`threshold_at_prior` sits just above the top one to
    three validation negatives, so the false-positive rate it stands for, and with it the
    precision at ``prior``, rests on those few cases: another training (or another validation
    split) puts it elsewhere. This counts the validation cases at or above ``threshold`` and
    turns the negatives' count into a Clopper-Pearson interval (two-sided ``level``) on the
    false-positive rate; ``precision_range`` is the precision at ``prior`` over that interval,
    with recall held at its validation value (the false-positive rate dominates at a low prior).
    ``precision`` is read on the scores that chose the threshold, which sits just above the
    negatives it counts, so it is optimistic; the range is the figure to go by (on CRACK500's
    five folds by photo the held-out precision at 3 % lay inside it on four folds and below the
    point value on four: README, "Deciding at the prevalence of use").

    Returns:
        ``validation_negatives``, ``negatives_at_or_above``, ``validation_positives``,
        ``positives_at_or_above``, ``false_positive_rate`` (count / negatives) and its
        ``false_positive_range``, ``recall``, ``precision`` (at ``prior``; None when nothing is
        decided positive) and ``precision_range``, ``level``, and ``few``: at most
        :data:`FEW_NEGATIVES` validation negatives at or above the threshold.

    Raises:
        ValueError: ``prior`` outside (0, 1), or validation data without both classes.
    """
    from scipy.stats import beta

    y, p = _prior_inputs(labels, probabilities, positive_index, prior, "tell a prior's support")
    n_neg, n_pos = int((~y).sum()), int(y.sum())
    k = int((p[~y] >= threshold).sum())
    m = int((p[y] >= threshold).sum())
    tail = (1.0 - level) / 2
    fpr_lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n_neg - k + 1))
    fpr_hi = 1.0 if k == n_neg else float(beta.ppf(1 - tail, k + 1, n_neg - k))
    recall = m / n_pos

    def precision(fpr: float) -> float | None:
        hits = prior * recall
        return None if hits + (1 - prior) * fpr <= 0 else hits / (hits + (1 - prior) * fpr)

    low, high = precision(fpr_hi), precision(fpr_lo)
    return {
        "validation_negatives": n_neg,
        "negatives_at_or_above": k,
        "validation_positives": n_pos,
        "positives_at_or_above": m,
        "false_positive_rate": k / n_neg,
        "false_positive_range": [fpr_lo, fpr_hi],
        "recall": recall,
        "precision": precision(k / n_neg),
        "precision_range": None if low is None or high is None else [low, high],
        "level": level,
        "few": k <= FEW_NEGATIVES,
    }


def parse_prior(text: str) -> float | dict[str, float]:
    """``"0.03"`` (the positive class of a binary task) or ``"CLASS=P,CLASS=P"`` (per class).

    Raises:
        ValueError: a value that is not a number in (0, 1), or a malformed ``CLASS=P`` list.
    """
    text = str(text).strip()
    if "=" not in text:
        return _prior_value(text, "prior")
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"prior {text!r}: write P or CLASS=P,CLASS=P (got {part!r})")
        out[name.strip()] = _prior_value(value, f"prior of {name.strip()!r}")
    return out


def _prior_value(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text.strip()!r}: not a number") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{what} {value}: must lie in (0, 1)")
    return value


def class_priors(
    prior: float | dict[str, float],
    classes: list[str],
    base: np.ndarray,
    positive: str | None = None,
) -> np.ndarray:
    """A full vector of class priors from a positive-class prior or a ``{class: P}`` mapping.

    Classes left out of the mapping share what the named ones leave, in proportion to their
    ``base`` (validation) frequencies; a float is the prior of ``positive`` (binary tasks).

    Raises:
        ValueError: an unknown class, priors summing to more than 1, or a float for a
            multi-class task.
    """
    if not isinstance(prior, dict):
        if positive is None or len(classes) != 2:
            raise ValueError(
                f"a single prior applies to binary tasks; this one has classes {classes}: "
                "pass CLASS=P,... instead"
            )
        prior = {positive: float(prior)}
    unknown = sorted(set(prior) - set(classes))
    if unknown:
        raise ValueError(f"prior names class(es) {unknown} that are not among {classes}")
    given = np.array([prior.get(c, np.nan) for c in classes], dtype=float)
    named = ~np.isnan(given)
    rest = 1.0 - given[named].sum()
    if rest < -1e-6 or (rest <= 1e-9 and not named.all()):
        raise ValueError(f"priors {prior} leave nothing for the other classes (they sum to >= 1)")
    if named.all():
        if abs(rest) > 1e-3:
            raise ValueError(f"priors {prior} must sum to 1 when every class is named")
        return given / given.sum()
    others = np.where(named, 0.0, base)
    if others.sum() <= 0:
        others = (~named).astype(float)
    return np.where(named, given, rest * others / others.sum())


def adjust_to_priors(proba: Any, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Posteriors under new class priors: ``p'_k ∝ p_k * new_k / old_k`` (Saerens et al. 2002).

    Bayes' rule with the class-conditional likelihoods unchanged: a model trained (and
    calibrated) where classes had frequencies ``old`` gives, where they have frequencies
    ``new``, the posteriors re-weighted by ``new / old`` and renormalised.

    Raises:
        ValueError: a class with ``old`` prior 0 (no validation sample to re-weight).
    """
    old = np.asarray(old, dtype=float)
    if (old <= 0).any():
        raise ValueError(
            f"class(es) {np.flatnonzero(old <= 0).tolist()} have no validation sample: "
            "their probabilities cannot be re-weighted to a prior"
        )
    p = _to_numpy(proba).astype(float) * (np.asarray(new, dtype=float) / old)
    return p / p.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)`` (sigmoid for one logit)."""
    z = logits / temperature
    if z.shape[1] == 1:
        # Single-logit binary head: p(positive) = sigmoid(z); -log sigmoid(s) = log(1 + e^-s).
        signed = np.where(y == 1, z[:, 0], -z[:, 0])
        return float(np.mean(np.logaddexp(0.0, -signed)))
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(z.shape[0]), y]))


def fit_temperature(logits: Any, y_true: Any) -> float:
    """Temperature scaling: the ``T`` minimising the validation NLL of ``softmax(logits / T)``.

    Guo et al. 2017, section 4.2. The search runs over ``log T`` (so ``T`` stays positive) in
    ``[T_MIN, T_MAX]`` with a bounded scalar minimiser; one parameter needs nothing heavier.

    Args:
        logits: (N, C) raw logits, or (N,) / (N, 1) for a single-logit (sigmoid) binary head.
            numpy arrays or torch tensors.
        y_true: (N,) integer class indices (0/1 for a single-logit head).

    Returns:
        The fitted temperature (> 1 softens over-confident predictions, < 1 sharpens them).

    Raises:
        ValueError: on mismatched shapes, labels out of range or non-finite logits.
    """
    from scipy.optimize import minimize_scalar

    z = _to_numpy(logits).astype(np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (N, C) or (N,), got {z.shape}")
    y = _to_numpy(y_true).astype(np.int64).ravel()
    if y.size != z.shape[0]:
        raise ValueError(f"logits have {z.shape[0]} rows but y_true has {y.size} labels")
    if y.size == 0:
        raise ValueError("cannot fit a temperature on zero samples")
    n_classes = max(z.shape[1], 2)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true holds class indices outside [0, {n_classes - 1}]")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")

    result = minimize_scalar(
        lambda log_t: _nll(z, y, float(np.exp(log_t))),
        bounds=(np.log(T_MIN), np.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


@dataclass
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram (equal-width bins on [0, 1])."""

    edges: np.ndarray  # (n_bins + 1,)
    count: np.ndarray  # (n_bins,) samples per bin
    accuracy: np.ndarray  # (n_bins,) fraction correct, NaN for an empty bin
    confidence: np.ndarray  # (n_bins,) mean confidence, NaN for an empty bin

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of |B|/N * |acc(B) - conf(B)|."""
        n = self.count.sum()
        if n == 0:
            return float("nan")
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.count[filled] / n * gaps))


def reliability_bins(confidence: Any, correct: Any, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Group top-label confidences into ``n_bins`` equal-width bins.

    Bin ``m`` holds confidences in ``((m-1)/M, m/M]`` as in Guo et al. 2017 (a confidence of
    exactly 0 falls in the first bin).
    """
    conf = _to_numpy(confidence).astype(float).ravel()
    ok = _to_numpy(correct).astype(bool).ravel()
    if conf.size != ok.size:
        raise ValueError(f"{conf.size} confidences but {ok.size} correctness flags")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    hits = np.bincount(idx, weights=ok.astype(float), minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, hits / count, np.nan)
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
    return ReliabilityBins(edges, count, accuracy, mean_conf)


def expected_calibration_error(proba: Any, y_true: Any, n_bins: int = ECE_BINS) -> float:
    """ECE of class probabilities (Guo et al. 2017, eq. 3).

    The confidence of a sample is its largest class probability and it counts as correct when
    that arg-max class is the true one: top-label calibration, independent of any decision
    threshold, so that it measures the probabilities themselves.

    Args:
        proba: (N, C) class probabilities.
        y_true: (N,) integer class indices.
        n_bins: number of equal-width confidence bins (15 as in Guo et al.).
    """
    p = _to_numpy(proba).astype(float)
    y = _to_numpy(y_true).astype(np.int64).ravel()
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"proba must have shape (N, C) with N = {y.size}, got {p.shape}")
    return reliability_bins(p.max(axis=1), p.argmax(axis=1) == y, n_bins).ece


# --------------------------------------------------------------------------------------------
# Positive class of a binary task (level 0 so that train, below evaluate, can use it too)

# Class names that mean "nothing found": the positive class of a binary task is the other one.
NEGATIVE_PREFIXES = ("no", "not", "non", "without")
NEGATIVE_WORDS = frozenset(
    {"normal", "negative", "healthy", "intact", "none", "no", "false", "0", "background"}
)


def _name_words(name: str) -> list[str]:
    """Lower-case words of a class name: ``"NoCrack"``, ``"no_crack"``, ``"no crack"`` -> no, crack."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(name))
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def looks_negative(name: str) -> bool:
    """True for class names like ``no_crack``, ``not fractured``, ``non-defect``, ``normal``."""
    words = _name_words(name)
    if not words:
        return False
    if words[0] in NEGATIVE_PREFIXES and len(words) > 1:
        return True
    return any(w in NEGATIVE_WORDS for w in words)


def default_positive(classes: Any) -> str:
    """The positive class of a binary task: the class not named like a negative.

    A class is negative-looking when its name starts with ``no``/``not``/``non``/``without`` as a
    separate word (``no_crack``, ``not fractured``, ``Non-Defective``, ``NoCrack``) or contains
    ``normal``, ``negative``, ``healthy``, ``intact``, ``none``, ``background``, ``false`` or
    ``0`` as a word. When neither or both names look negative, the second class is positive
    (scikit-learn's convention that label 1 is the positive one).

    Raises:
        ValueError: when ``classes`` does not hold exactly two names.
    """
    classes = [str(c) for c in classes]
    if len(classes) != 2:
        raise ValueError(
            f"a positive class is defined for binary tasks only; got {len(classes)} classes "
            f"({', '.join(classes)})"
        )
    negative = [looks_negative(c) for c in classes]
    if negative == [False, True]:
        return classes[0]
    return classes[1]
