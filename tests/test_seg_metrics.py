"""Pixel metrics of a segmentation on hand-made arrays whose answers are known exactly."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from fracturekit.seg_metrics import (
    SEGMENTATION_KEYS,
    per_image_iou,
    pointing_game,
    segmentation_metrics,
)


def _line(col: int, size: int = 16) -> np.ndarray:
    """A 1-px vertical line at ``col`` (rows 2..13)."""
    mask = np.zeros((size, size), dtype=bool)
    mask[2:14, col] = True
    return mask


def test_keys_are_exactly_the_contract() -> None:
    """The keys, in order, are those docs/design.md promises (a change needs both)."""
    design = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text("utf-8")
    promised = re.search(r"`SEGMENTATION_KEYS`: `([^`]+)`", " ".join(design.split()))
    assert promised, "docs/design.md no longer lists SEGMENTATION_KEYS"
    out = segmentation_metrics([_line(5).astype(float)], [_line(5)], 0.5)
    assert tuple(out) == SEGMENTATION_KEYS == tuple(promised.group(1).split(", "))
    assert all(type(v) in (int, float) for v in out.values())


def test_perfect_prediction() -> None:
    out = segmentation_metrics([_line(5) * 0.9], [_line(5)], 0.5)
    assert out["n"] == 1 and out["threshold"] == 0.5
    for key in ("pixel_precision", "pixel_recall", "pixel_f1", "iou", "miou", "pixel_f1_tol2"):
        assert out[key] == 1.0, key


def test_one_pixel_shift_is_wrong_exactly_but_right_within_tolerance() -> None:
    out = segmentation_metrics([_line(6).astype(float)], [_line(5)], 0.5)
    assert out["pixel_precision"] == out["pixel_recall"] == out["pixel_f1"] == 0.0
    assert out["iou"] == 0.0
    # Background: 256 pixels, 12 FP, 12 FN -> TN = 232.
    assert out["miou"] == pytest.approx((0.0 + 232 / 256) / 2)
    assert out["pixel_f1_tol2"] == 1.0
    # Two pixels off is still within the tolerance; three is not.
    assert segmentation_metrics([_line(7) * 1.0], [_line(5)], 0.5)["pixel_f1_tol2"] == 1.0
    assert segmentation_metrics([_line(8) * 1.0], [_line(5)], 0.5)["pixel_f1_tol2"] == 0.0


def test_tolerance_is_euclidean() -> None:
    # One true pixel; predictions at distance 2 (straight) and sqrt(5) (knight's move).
    mask = np.zeros((9, 9), dtype=bool)
    mask[4, 4] = True
    near = np.zeros((9, 9))
    near[4, 6] = 1.0
    far = np.zeros((9, 9))
    far[5, 6] = 1.0
    assert segmentation_metrics([near], [mask], 0.5)["pixel_f1_tol2"] == 1.0
    assert segmentation_metrics([far], [mask], 0.5)["pixel_f1_tol2"] == 0.0


def test_pooled_counts_over_images() -> None:
    # Image 1: 12 true pixels, predicted exactly. Image 2: the same line, nothing predicted.
    # Image 3: clean, 4 false-alarm pixels.
    clean_alarm = np.zeros((16, 16))
    clean_alarm[0, :4] = 1.0
    probs = [_line(5) * 1.0, np.zeros((16, 16)), clean_alarm]
    masks = [_line(5), _line(5), np.zeros((16, 16), dtype=bool)]
    out = segmentation_metrics(probs, masks, 0.5)
    tp, fp, fn = 12, 4, 12
    tn = 3 * 256 - tp - fp - fn
    assert out["n"] == 3
    assert out["pixel_precision"] == pytest.approx(tp / (tp + fp))
    assert out["pixel_recall"] == pytest.approx(tp / (tp + fn))
    assert out["pixel_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert out["miou"] == pytest.approx((tp / (tp + fp + fn) + tn / (tn + fp + fn)) / 2)
    # Within 2 px: the alarm row 0 is 2 px from nothing true (the line starts at row 2 in
    # column 5), so precision 12/16 and recall 12/24 as without tolerance.
    p, r = 12 / 16, 12 / 24
    assert out["pixel_f1_tol2"] == pytest.approx(2 * p * r / (p + r))


def test_threshold_rule_is_greater_or_equal() -> None:
    prob = _line(5) * 0.5
    assert segmentation_metrics([prob], [_line(5)], 0.5)["pixel_f1"] == 1.0
    assert segmentation_metrics([prob], [_line(5)], 0.51)["pixel_f1"] == 0.0


def test_empty_conventions_never_nan() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    both_empty = segmentation_metrics([np.zeros((8, 8))], [empty], 0.5)
    assert all(both_empty[k] == 1.0 for k in SEGMENTATION_KEYS[2:])
    alarm = np.zeros((8, 8))
    alarm[3, 3] = 1.0
    false_alarm = segmentation_metrics([alarm], [empty], 0.5)
    missed = segmentation_metrics([np.zeros((8, 8))], [alarm > 0], 0.5)
    for out in (false_alarm, missed):
        for key in ("pixel_precision", "pixel_recall", "pixel_f1", "iou", "pixel_f1_tol2"):
            assert out[key] == 0.0, key
        assert out["miou"] == pytest.approx(63 / 64 / 2)
    # Everything positive in truth and prediction: background IoU has nothing either side.
    full = segmentation_metrics([np.ones((4, 4))], [np.ones((4, 4), dtype=bool)], 0.5)
    assert full["miou"] == 1.0
    # No images at all: no pixel, the clean convention.
    none = segmentation_metrics([], [], 0.5)
    assert none["n"] == 0 and not any(math.isnan(v) for v in none.values())


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="2 probability maps but 1 masks"):
        segmentation_metrics([np.zeros((4, 4))] * 2, [np.zeros((4, 4))], 0.5)
    with pytest.raises(ValueError, match="image 0: .*same 2-D shape"):
        segmentation_metrics([np.zeros((4, 5))], [np.zeros((4, 4))], 0.5)
    with pytest.raises(ValueError, match="image 0: .*NaN"):
        segmentation_metrics([np.full((4, 4), np.nan)], [np.zeros((4, 4))], 0.5)


def test_per_image_iou() -> None:
    half = np.zeros((16, 16))
    half[2:8, 5] = 1.0  # 6 of the 12 line pixels
    probs = [half, np.zeros((4, 4)), np.ones((4, 4))]
    masks = [_line(5), np.zeros((4, 4), dtype=bool), np.zeros((4, 4), dtype=bool)]
    assert per_image_iou(probs, masks, 0.5) == [0.5, 1.0, 0.0]


def test_pointing_game() -> None:
    mask = np.zeros((32, 32), dtype=bool)
    mask[16, 16] = True
    on = np.zeros((32, 32))
    on[16, 24] = 1.0  # 8 px away: inside the 8 px dilation
    off = np.zeros((32, 32))
    off[16, 25] = 1.0  # 9 px away
    flat = np.full((32, 32), 0.3)  # points nowhere
    negative = (np.ones((32, 32)), np.zeros((32, 32), dtype=bool))  # left out
    probs = [on, off, flat, negative[0]]
    masks = [mask, mask, mask, negative[1]]
    assert pointing_game(probs, masks) == pytest.approx(1 / 3)
    assert pointing_game(probs, masks, tolerance=9) == pytest.approx(2 / 3)
    assert pointing_game([negative[0]], [negative[1]]) is None
