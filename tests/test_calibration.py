"""Decision thresholds, temperature scaling and ECE (fracturekit.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from fracturekit.calibration import (
    THRESHOLD_METRICS,
    _nll,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
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
