"""Decision thresholds, temperature scaling and ECE (fracturekit.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from fracturekit.calibration import (
    THRESHOLD_METRICS,
    _nll,
    adjust_to_priors,
    choose_threshold,
    class_frequencies,
    class_priors,
    expected_calibration_error,
    fit_temperature,
    parse_prior,
    prior_support,
    reliability_bins,
    threshold_at_prior,
    validation_scores,
)

# Seven validation samples, scores descending. Taking the top k as positive gives
# F1 = 2/5, 4/6, 6/7, 6/8, 8/9, 8/10, 8/11: the best is k = 5 (score 0.6).
y_val = np.array([1, 1, 1, 0, 1, 0, 0])
p_val = np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.3, 0.2])


def test_max_f1_threshold_by_hand() -> None:
    t = choose_threshold(y_val, p_val)
    assert t == pytest.approx((0.6 + 0.3) / 2)  # halfway to the next lower score
    assert f1_score(y_val, p_val >= t) == pytest.approx(8 / 9)


@pytest.mark.parametrize("target, expected", [(0.5, 0.8), (0.75, 0.7), (1.0, 0.6), (0.25, 0.9)])
def test_target_recall_is_the_highest_threshold_reaching_it(target: float, expected: float) -> None:
    t = choose_threshold(y_val, p_val, target_recall=target)
    assert t == pytest.approx(expected)
    recall = ((p_val >= t) & (y_val == 1)).sum() / y_val.sum()
    assert recall >= target
    higher = p_val[p_val > t]
    if higher.size:  # the next higher candidate misses the target
        assert ((p_val >= higher.min()) & (y_val == 1)).sum() / y_val.sum() < target


@pytest.mark.parametrize("metric", sorted(THRESHOLD_METRICS))
def test_threshold_is_optimal_among_all_cut_points(metric: str) -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1), 2)  # rounding makes ties
    score = {
        "f1": f1_score,
        "balanced_accuracy": balanced_accuracy_score,
        "accuracy": lambda a, b: float((a == b).mean()),
    }[metric]
    t = choose_threshold(y, p, metric=metric)
    best = max(score(y, (p >= c).astype(int)) for c in np.unique(p))
    assert score(y, (p >= t).astype(int)) == pytest.approx(best)


def test_threshold_errors() -> None:
    with pytest.raises(ValueError, match="no positive"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="metric"):
        choose_threshold(y_val, p_val, metric="auc")
    with pytest.raises(ValueError, match="target_recall"):
        choose_threshold(y_val, p_val, target_recall=1.5)
    with pytest.raises(ValueError, match="0/1"):
        choose_threshold([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 labels but p_pos has 2"):
        choose_threshold([0, 1, 1], [0.1, 0.2])


def test_temperature_recovers_known_overconfidence() -> None:
    # Labels drawn from softmax(z); a model reporting 3z is over-confident by T = 3.
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, size=(4000, 3))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    t = fit_temperature(3 * z, y)
    assert t == pytest.approx(3.0, rel=0.1)
    # A minimum: nudging T either way raises the NLL.
    logits = 3 * z
    assert _nll(logits, y, t) <= min(_nll(logits, y, t * 1.05), _nll(logits, y, t / 1.05))


def test_temperature_single_logit_head_and_torch_input() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.0, size=3000)
    y = (rng.random(3000) < 1 / (1 + np.exp(-z))).astype(int)
    t = fit_temperature(torch.tensor(0.5 * z)[:, None], torch.tensor(y))  # under-confident
    assert t == pytest.approx(0.5, rel=0.15)


def test_temperature_errors() -> None:
    with pytest.raises(ValueError, match="2 rows but y_true has 3"):
        fit_temperature(np.zeros((2, 2)), [0, 1, 1])
    with pytest.raises(ValueError, match="outside"):
        fit_temperature(np.zeros((2, 2)), [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[np.nan, 0.0], [0.0, 1.0]]), [0, 1])


def test_ece_by_hand() -> None:
    # Four samples at confidence 0.75 with 2 correct (gap 0.25), four at 0.95 all correct
    # (gap 0.05): ECE = 0.5 * 0.25 + 0.5 * 0.05 = 0.15.
    proba = np.array([[0.75, 0.25]] * 4 + [[0.05, 0.95]] * 4)
    y = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    assert expected_calibration_error(proba, y) == pytest.approx(0.15)


def test_ece_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(500, 4))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, 500)
    conf, correct = proba.max(axis=1), proba.argmax(axis=1) == y
    expected = 0.0
    for m in range(15):
        lo, hi = m / 15, (m + 1) / 15
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            expected += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    assert expected_calibration_error(proba, y) == pytest.approx(expected)
    bins = reliability_bins(conf, correct)
    assert bins.count.sum() == 500 and len(bins.edges) == 16


# --------------------------------------------------------------------------------------------
# Decisions at another prevalence
#
# A balanced validation set whose positive-class scores have density 2s on [0, 1] and whose
# negatives have density 2(1 - s): recall(t) = 1 - t^2, false positive rate(t) = (1 - t)^2. The
# scores are the exact quantiles of those distributions (u = (i + 1/2) / n), so the empirical
# curves follow the closed forms to O(1/n).


def _triangular_validation(n: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    u = (np.arange(n) + 0.5) / n
    pos = np.sqrt(u)  # inverse of the CDF s^2
    neg = 1 - np.sqrt(1 - u)  # inverse of the CDF 1 - (1 - s)^2
    s = np.r_[pos, neg]
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    return y, np.stack([1 - s, s], axis=1)


def _f1_closed_form(t: np.ndarray, prior: float) -> np.ndarray:
    tp = prior * (1 - t**2)
    fp = (1 - prior) * (1 - t) ** 2
    fn = prior * t**2
    return 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize("prior", [0.03, 0.18, 0.5, 0.8])
def test_threshold_at_prior_is_the_closed_form_optimum(prior: float, smooth: bool) -> None:
    y, proba = _triangular_validation()
    # Accuracy at prevalence P is maximal where the posterior P s / (P s + (1-P)(1-s)) is 1/2:
    # the Bayes threshold t = 1 - P.
    t_acc = threshold_at_prior(y, proba, 1, prior, metric="accuracy", smooth=smooth)
    assert t_acc == pytest.approx(1 - prior, abs=0.01)  # the optimum is flat: O(1/sqrt(n))
    # F1 at prevalence P: the maximiser of the closed-form F1(t).
    grid = np.linspace(0, 1, 200001)
    best = grid[np.argmax(_f1_closed_form(grid, prior))]
    assert threshold_at_prior(y, proba, 1, prior, smooth=smooth) == pytest.approx(best, abs=0.01)


def test_threshold_at_prior_matches_a_resampled_validation_set() -> None:
    """Weighting by P/pi and (1-P)/(1-pi) is counting on a set that has prevalence P."""
    from functools import partial

    raw = partial(threshold_at_prior, smooth=False)  # the smoothed rule tends to it (test below)
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05, 0.35])
    proba = np.stack([1 - s, s], axis=1)
    # pi = 0.4; at P = 0.25 a positive weighs 0.625 and a negative 1.25, i.e. 1 : 2, the same as
    # repeating every negative twice (8 positives... 4 positives : 12 negatives = 25 %).
    repeated = np.r_[np.flatnonzero(y == 1), np.repeat(np.flatnonzero(y == 0), 2)]
    expected = choose_threshold(y[repeated], s[repeated])
    assert raw(y, proba, 1, 0.25) == pytest.approx(expected)
    # The validation prevalence itself gives choose_threshold's answer.
    assert raw(y, proba, 1, 0.4) == pytest.approx(choose_threshold(y, s))
    # Rarer positives, higher F1 threshold; the positive column is honoured.
    assert raw(y, proba, 1, 0.05) > raw(y, proba, 1, 0.4)
    flipped = raw(1 - y, proba[:, ::-1], 0, 0.25)
    assert flipped == pytest.approx(expected)


def test_smoothed_rule_is_steadier_and_closer_to_the_best_at_a_low_prior() -> None:
    """On small validation sets the smoothed counts pick better 3 % thresholds than raw ones.

    Binormal logits (positives N(2, 1.5), negatives N(-2, 1.5)); the F1 at 3 % positives of a
    threshold is known in closed form. Over 40 validation sets of 160 per class, the smoothed
    rule's thresholds vary less and score higher on average than the raw rule's.
    """
    from scipy.special import expit, ndtr

    def f1_at(t: float, prior: float = 0.03) -> float:
        z = np.log(t / (1 - t))
        tpr, fpr = ndtr((2 - z) / 1.5), ndtr((-2 - z) / 1.5)
        return 2 * prior * tpr / (prior * tpr + (1 - prior) * fpr + prior)

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(160, int), np.zeros(160, int)]
    picked: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(40):
        s = expit(np.r_[rng.normal(2, 1.5, 160), rng.normal(-2, 1.5, 160)])
        proba = np.stack([1 - s, s], axis=1)
        for smooth in picked:
            picked[smooth].append(threshold_at_prior(y, proba, 1, 0.03, smooth=smooth))
    logit_sd = {k: np.std(np.log(np.array(v) / (1 - np.array(v)))) for k, v in picked.items()}
    mean_f1 = {k: np.mean([f1_at(t) for t in v]) for k, v in picked.items()}
    assert logit_sd[True] < 0.8 * logit_sd[False]
    assert mean_f1[True] > mean_f1[False] + 0.005


def test_target_recall_does_not_depend_on_the_prior() -> None:
    y, proba = _triangular_validation(500)
    ts = {threshold_at_prior(y, proba, 1, p, target_recall=0.9) for p in (0.01, 0.3, 0.9)}
    assert ts == {choose_threshold(y, proba[:, 1], target_recall=0.9)}


def test_threshold_at_prior_rejects_bad_input() -> None:
    y, proba = _triangular_validation(10)
    with pytest.raises(ValueError, match=r"prior=1.5: must lie in \(0, 1\)"):
        threshold_at_prior(y, proba, 1, 1.5)
    with pytest.raises(ValueError, match="only one class"):
        threshold_at_prior(np.ones(20, int), proba, 1, 0.1)


def test_prior_support_counts_and_interval_by_hand() -> None:
    from scipy.stats import beta

    # 200 negatives, 2 of them at or above 0.9; 100 positives, 80 at or above it.
    neg = np.r_[np.full(198, 0.1), 0.95, 0.9]
    pos = np.r_[np.full(80, 0.99), np.full(20, 0.5)]
    s = np.r_[neg, pos]
    y = np.r_[np.zeros(200, int), np.ones(100, int)]
    support = prior_support(y, np.stack([1 - s, s], 1), 1, 0.9, 0.03)
    assert support["validation_negatives"] == 200 and support["negatives_at_or_above"] == 2
    assert support["validation_positives"] == 100 and support["positives_at_or_above"] == 80
    assert support["false_positive_rate"] == 0.01 and support["recall"] == 0.8
    # Precision at 3 %: 0.03 * 0.8 / (0.03 * 0.8 + 0.97 * 0.01).
    assert support["precision"] == pytest.approx(0.024 / (0.024 + 0.0097))
    lo, hi = support["false_positive_range"]
    assert lo == pytest.approx(beta.ppf(0.05, 2, 199)) and hi == pytest.approx(
        beta.ppf(0.95, 3, 198)
    )
    assert lo < 0.01 < hi
    p_lo, p_hi = support["precision_range"]
    assert p_lo == pytest.approx(0.024 / (0.024 + 0.97 * hi))
    assert p_lo < support["precision"] < p_hi and support["few"] is True and support["level"] == 0.9
    # The positive column is honoured; many negatives above the threshold are not "few".
    flipped = prior_support(1 - y, np.stack([s, 1 - s], 1), 0, 0.9, 0.03)
    assert flipped == support
    wide = prior_support(y, np.stack([1 - s, s], 1), 1, 0.05, 0.03)
    assert wide["negatives_at_or_above"] == 200 and wide["false_positive_range"][1] == 1.0
    assert wide["few"] is False
    # No negative above the threshold: the interval starts at 0 and precision reaches 1.
    top = prior_support(y, np.stack([1 - s, s], 1), 1, 0.98, 0.03)
    assert top["false_positive_range"][0] == 0.0 and top["precision_range"][1] == 1.0
    with pytest.raises(ValueError, match="only one class"):
        prior_support(np.ones(5, int), np.full((5, 2), 0.5), 1, 0.5, 0.03)
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        prior_support(y, np.stack([1 - s, s], 1), 1, 0.9, 0.0)


def test_validation_scores_from_meta() -> None:
    meta = {
        "classes": ["a", "b"],
        "validation": {"labels": [0, 1], "probabilities": [[0.8, 0.2], [0.3, 0.7]]},
    }
    labels, proba = validation_scores(meta)
    assert labels.tolist() == [0, 1] and proba.shape == (2, 2)
    with pytest.raises(ValueError, match="old.pt: stores no validation scores.*retrain"):
        validation_scores({"classes": ["a", "b"]}, "old.pt")
    meta["validation"]["labels"] = [0, 2]
    with pytest.raises(ValueError, match="2-class probabilities"):
        validation_scores(meta, "bad.pt")


def test_parse_prior() -> None:
    assert parse_prior("0.03") == 0.03
    assert parse_prior(" crack = 0.03 ") == {"crack": 0.03}
    assert parse_prior("a=0.2,b=0.5") == {"a": 0.2, "b": 0.5}
    for bad, message in (
        ("3%", "not a number"),
        ("1.2", r"must lie in \(0, 1\)"),
        ("a=0.2,0.3", "CLASS=P"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_prior(bad)


def test_class_priors_fill_the_rest_by_validation_frequency() -> None:
    classes = ["a", "b", "c"]
    base = class_frequencies([0, 1, 1, 2, 2, 2, 2, 2], 3)
    assert base.tolist() == [1 / 8, 2 / 8, 5 / 8]
    # b and c share the 0.7 that a leaves in the ratio 2 : 5.
    np.testing.assert_allclose(class_priors({"a": 0.3}, classes, base), [0.3, 0.2, 0.5])
    np.testing.assert_allclose(
        class_priors({"a": 0.5, "b": 0.25, "c": 0.25}, classes, base), [0.5, 0.25, 0.25]
    )
    np.testing.assert_allclose(class_priors(0.03, ["no", "yes"], base[:2], "yes"), [0.97, 0.03])
    with pytest.raises(ValueError, match=r"\['d'\]"):
        class_priors({"d": 0.1}, classes, base)
    with pytest.raises(ValueError, match="sum to"):
        class_priors({"a": 0.6, "b": 0.5}, classes, base)
    with pytest.raises(ValueError, match="CLASS=P"):
        class_priors(0.1, classes, base)


def test_adjust_to_priors_is_bayes_rule() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=50)
    old = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(adjust_to_priors(p, old, old), p)
    new = np.array([0.1, 0.1, 0.8])
    q = adjust_to_priors(p, old, new)
    np.testing.assert_allclose(q.sum(axis=1), 1)
    # Binary case: the prior ratio shifts the log-odds by log(P/(1-P)) - log(pi/(1-pi)).
    b = np.stack([1 - p[:, 0], p[:, 0]], axis=1)
    shifted = adjust_to_priors(b, np.array([0.5, 0.5]), np.array([0.97, 0.03]))[:, 1]
    logit = np.log(b[:, 1] / b[:, 0]) + np.log(0.03 / 0.97)
    np.testing.assert_allclose(shifted, 1 / (1 + np.exp(-logit)))
    with pytest.raises(ValueError, match="no validation sample"):
        adjust_to_priors(p, np.array([0.5, 0.5, 0.0]), new)
