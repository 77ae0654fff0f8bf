"""Pixel metrics of a segmentation: probability maps against binary masks (numpy/scipy only).

``segmentation_metrics`` gives the ``segmentation`` object of ``metrics.json``, pooled over all
pixels of all images at one threshold (a pixel is predicted positive when its probability is
``>= threshold``, the classifier's rule):

* ``pixel_precision``, ``pixel_recall``, ``pixel_f1``, ``iou`` of the crack/fracture class from
  the pooled counts TP, FP, FN; ``miou`` is the mean of that IoU and the background's
  (TN / (TN + FP + FN)).
* ``pixel_f1_tol2``: the ODS-style tolerance crack papers use (e.g. CrackForest, DeepCrack): a
  predicted positive pixel counts as right when a true pixel lies within ``TOLERANCE_PX`` = 2 px
  of it (Euclidean distance, so the 12 neighbours of a disc of radius 2 besides itself), and a
  true pixel counts as found when a predicted pixel lies within 2 px of it. Precision is the
  pooled share of right predicted pixels, recall the pooled share of found true pixels, F1 their
  harmonic mean. A prediction one pixel off scores ``pixel_f1`` 0 but ``pixel_f1_tol2`` 1.

Empty sets never give NaN. The one convention: a ratio whose denominator is 0 is 1.0 when the
prediction and the truth it compares are both empty (nothing to find, nothing claimed: exactly
right), else 0.0. So all-negative images predicted empty score 1 everywhere; a missed crack or
a false alarm on a clean image scores 0; background IoU follows the same rule.

``pointing_game`` is the localisation figure of a segmenter: the share of positive images (a
non-empty mask) whose most probable pixel lies in the true mask dilated by 8 px.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

TOLERANCE_PX = 2
POINTING_TOLERANCE_PX = 8
SEGMENTATION_KEYS = (
    "n",
    "threshold",
    "pixel_precision",
    "pixel_recall",
    "pixel_f1",
    "iou",
    "miou",
    "pixel_f1_tol2",
)


def _ratio(num: float, den: float, both_empty: bool) -> float:
    """``num / den``; 1.0 or 0.0 when ``den`` is 0 (see the module's convention)."""
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


def _f1(precision: float, recall: float) -> float:
    total = precision + recall
    return 2.0 * precision * recall / total if total > 0 else 0.0


def _pairs(
    probs_list: Sequence[np.ndarray], masks_list: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check lengths, shapes and values; return ``(probability float, mask bool)`` pairs."""
    probs_list, masks_list = list(probs_list), list(masks_list)
    if len(probs_list) != len(masks_list):
        raise ValueError(f"{len(probs_list)} probability maps but {len(masks_list)} masks")
    pairs = []
    for i, (prob, mask) in enumerate(zip(probs_list, masks_list, strict=True)):
        prob = np.asarray(prob, dtype=np.float64)
        mask = np.asarray(mask)
        if prob.ndim != 2 or prob.shape != mask.shape:
            raise ValueError(
                f"image {i}: probability map {prob.shape} and mask {mask.shape} must be the "
                "same 2-D shape"
            )
        if not np.isfinite(prob).all():
            raise ValueError(f"image {i}: probability map holds NaN or infinite values")
        pairs.append((prob, mask.astype(bool, copy=False)))
    return pairs


def _near(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels within ``tolerance`` px (Euclidean) of a ``mask`` pixel; none when it is empty."""
    from scipy import ndimage as ndi

    if not mask.any():
        # distance_transform_edt has no zero to measure from: nothing is near an empty mask.
        return np.zeros(mask.shape, dtype=bool)
    return ndi.distance_transform_edt(~mask) <= tolerance


def _counts(pred: np.ndarray, mask: np.ndarray, tolerance: float) -> np.ndarray:
    """``[tp, fp, fn, tn, pred right within tolerance, true found within tolerance]``."""
    tp = np.count_nonzero(pred & mask)
    fp = np.count_nonzero(pred & ~mask)
    fn = np.count_nonzero(~pred & mask)
    tn = pred.size - tp - fp - fn
    right = np.count_nonzero(pred & _near(mask, tolerance))
    found = np.count_nonzero(mask & _near(pred, tolerance))
    return np.array([tp, fp, fn, tn, right, found], dtype=np.int64)


def segmentation_metrics(
    probs_list: Sequence[np.ndarray], masks_list: Sequence[np.ndarray], threshold: float
) -> dict[str, Any]:
    """Pooled pixel metrics over all images at ``threshold``: the ``segmentation`` object.

    Args:
        probs_list: ``(H, W)`` probability maps of the crack/fracture class, one per image
            (sizes may differ between images).
        masks_list: binary masks of the same shapes, in the same order (an image without
            crack/fracture has an all-zero mask).
        threshold: a pixel is positive when its probability is ``>= threshold``.

    Returns:
        A dict with exactly ``SEGMENTATION_KEYS``, in that order: ``n`` (images),
        ``threshold``, ``pixel_precision``, ``pixel_recall``, ``pixel_f1``, ``iou``, ``miou``,
        ``pixel_f1_tol2``; plain floats, never NaN (see the module docstring for empty sets).

    Raises:
        ValueError: the sequences differ in length, a pair differs in shape, or a map is not
            finite.
    """
    pairs = _pairs(probs_list, masks_list)
    total = np.zeros(6, dtype=np.int64)
    for prob, mask in pairs:
        total += _counts(prob >= threshold, mask, TOLERANCE_PX)
    tp, fp, fn, tn, right, found = (int(v) for v in total)
    n_pred, n_true = tp + fp, tp + fn
    clean = n_pred == 0 and n_true == 0
    iou = _ratio(tp, tp + fp + fn, clean)
    background = _ratio(tn, tn + fp + fn, tn + fn == 0 and tn + fp == 0)
    tol_precision = _ratio(right, n_pred, clean)
    tol_recall = _ratio(found, n_true, clean)
    return {
        "n": len(pairs),
        "threshold": float(threshold),
        "pixel_precision": _ratio(tp, n_pred, clean),
        "pixel_recall": _ratio(tp, n_true, clean),
        "pixel_f1": _ratio(2 * tp, 2 * tp + fp + fn, clean),
        "iou": iou,
        "miou": (iou + background) / 2.0,
        "pixel_f1_tol2": 1.0 if clean else _f1(tol_precision, tol_recall),
    }


def per_image_iou(
    probs_list: Sequence[np.ndarray], masks_list: Sequence[np.ndarray], threshold: float
) -> list[float]:
    """The crack/fracture IoU of each image at ``threshold`` (for histograms).

    An image with an empty mask and an empty prediction scores 1.0; an empty mask with any
    predicted pixel, or a mask with nothing predicted, scores 0.0.
    """
    out = []
    for prob, mask in _pairs(probs_list, masks_list):
        pred = prob >= threshold
        inter = np.count_nonzero(pred & mask)
        union = np.count_nonzero(pred | mask)
        out.append(_ratio(inter, union, union == 0))
    return out


def pointing_game(
    probs_list: Sequence[np.ndarray],
    masks_list: Sequence[np.ndarray],
    tolerance: float = POINTING_TOLERANCE_PX,
) -> float | None:
    """Share of positive images whose most probable pixel lies in the mask dilated by ``tolerance``.

    Images with an empty mask are left out (nothing to point at); ``None`` when none is left.
    The most probable pixel is the first maximum in row-major order; a flat map (maximum equal
    to minimum) points nowhere and counts as a miss, as in ``localisation``.
    """
    hits = []
    for prob, mask in _pairs(probs_list, masks_list):
        if not mask.any():
            continue
        hit = prob.max() > prob.min() and _near(mask, tolerance).flat[int(np.argmax(prob))]
        hits.append(float(hit))
    return float(np.mean(hits)) if hits else None
