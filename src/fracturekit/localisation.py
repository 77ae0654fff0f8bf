"""How well a heat map points at the annotated crack or fracture (numpy, scipy, scikit-learn).

Scores of one heat map against one binary mask of the same shape (``score_image``) and their
summary over a data set (``summarise``, or ``localisation_scores`` for both at once). Only
positive images with a non-empty mask are scored; the caller chooses them.

Per image, with the mask dilated by ``dilate_px`` pixels (a Euclidean disc: pixels whose
distance to the nearest mask pixel is at most ``dilate_px``), because annotations of thin cracks
are a few pixels wide and a class-activation map is upsampled from a coarse grid:

* ``hit`` (pointing game, Zhang et al., "Top-down neural attention by excitation backprop",
  ECCV 2016): the heat map's maximum lies inside the dilated mask. A flat map (maximum equal to
  minimum) points nowhere and counts as a miss.
* ``energy``: the share of the heat map's mass inside the dilated mask (the energy-based
  pointing game of Score-CAM, Wang et al., CVPRW 2020, with the mask in place of a box).
* ``auc``: the heat map as a per-pixel score of the *undilated* mask, scikit-learn's
  ``roc_auc_score``; undefined (NaN) when the mask covers the whole image.
* ``area``: the share of the image inside the dilated mask: what a uniformly random heat map
  scores on average for both ``hit`` and ``energy``, the chance level to compare them with.

``summarise`` averages over images: ``pixel_auc`` is the **mean of the per-image AUCs** (images
with a defined AUC), not an AUC over pooled pixels. Heat maps are normalised per image (each
class-activation map is scaled to [0, 1] on its own), so their values are not comparable between
images and pooling would rank one image's background against another's crack; averaging also
weighs every image the same whatever its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

DEFAULT_DILATE_PX = 8


def dilate_mask(mask: np.ndarray, dilate_px: float = DEFAULT_DILATE_PX) -> np.ndarray:
    """The mask grown by a Euclidean disc of radius ``dilate_px`` pixels (0: unchanged)."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    if dilate_px < 0:
        raise ValueError(f"dilate_px must be >= 0, got {dilate_px}")
    if dilate_px == 0 or not mask.any():
        return mask.copy()
    # Distance of every pixel to the nearest mask pixel; exact, and cheap at any radius.
    return ndi.distance_transform_edt(~mask) <= dilate_px


def _check_pair(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float64)
    mask = np.asarray(mask).astype(bool, copy=False)
    if cam.ndim != 2 or mask.ndim != 2:
        raise ValueError(f"heat map and mask must be 2-D, got shapes {cam.shape} and {mask.shape}")
    if cam.shape != mask.shape:
        raise ValueError(
            f"heat map {cam.shape} and mask {mask.shape} differ in shape: resize the heat map "
            "to the mask first"
        )
    if not np.isfinite(cam).all():
        raise ValueError("heat map holds NaN or infinite values")
    return cam, mask


def score_image(
    cam: np.ndarray, mask: np.ndarray, *, dilate_px: float = DEFAULT_DILATE_PX
) -> dict[str, float]:
    """Pointing-game hit, energy in the mask, pixel AUC and chance area of one heat map.

    Args:
        cam: ``(H, W)`` heat map, larger = more attention (any non-negative scale).
        mask: ``(H, W)`` binary annotation, not empty.
        dilate_px: tolerance in pixels for ``hit`` and ``energy``.

    Returns:
        ``{"hit": 0.0 or 1.0, "energy", "auc" (NaN when undefined), "area"}``.

    Raises:
        ValueError: shapes differ, the mask is empty, or the heat map is not finite.
    """
    from sklearn.metrics import roc_auc_score

    cam, mask = _check_pair(cam, mask)
    if not mask.any():
        raise ValueError("the mask is empty: localisation is scored on annotated images only")
    grown = dilate_mask(mask, dilate_px)
    lo, hi = float(cam.min()), float(cam.max())
    hit = 0.0
    if hi > lo:
        hit = float(grown.flat[int(np.argmax(cam))])
    weights = np.clip(cam - min(lo, 0.0), 0.0, None)  # mass needs non-negative values
    total = float(weights.sum())
    energy = float(weights[grown].sum() / total) if total > 0 else 0.0
    auc = float("nan")
    if not mask.all():
        auc = float(roc_auc_score(mask.ravel(), cam.ravel()))
    return {"hit": hit, "energy": energy, "auc": auc, "area": float(grown.mean())}


def summarise(
    per_image: Sequence[dict[str, float]], *, dilate_px: float = DEFAULT_DILATE_PX
) -> dict[str, Any]:
    """Average per-image scores (see ``score_image``) into the data-set figures.

    Returns:
        ``{"pointing_game", "energy_in_mask", "pixel_auc", "n", "n_auc", "chance", "dilate_px",
        "pixel_auc_kind"}``: means over the ``n`` images (``pixel_auc`` over the ``n_auc``
        images where it is defined); ``chance`` is the mean dilated-mask area share, the
        expected pointing game and energy of a random heat map. ``None`` where nothing was
        scored.
    """
    n = len(per_image)
    aucs = [s["auc"] for s in per_image if not math.isnan(s["auc"])]

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    return {
        "pointing_game": mean([s["hit"] for s in per_image]),
        "energy_in_mask": mean([s["energy"] for s in per_image]),
        "pixel_auc": mean(aucs),
        "n": n,
        "n_auc": len(aucs),
        "chance": mean([s["area"] for s in per_image]),
        "dilate_px": dilate_px,
        "pixel_auc_kind": "mean of per-image AUCs",
    }


def localisation_scores(
    cams: Iterable[np.ndarray],
    masks: Iterable[np.ndarray],
    *,
    dilate_px: float = DEFAULT_DILATE_PX,
) -> dict[str, Any]:
    """Localisation of heat maps against masks over images whose mask is not empty.

    Pairs with an empty mask are skipped (a negative image has nothing to point at); their count
    is ``n_empty``.

    Args:
        cams: heat maps, one per image (``(H, W)`` arrays; sizes may differ between images).
        masks: binary masks of the same shapes, in the same order.
        dilate_px: tolerance in pixels for the pointing game and the energy.

    Returns:
        ``summarise``'s dict plus ``n_empty``.

    Raises:
        ValueError: the two sequences differ in length, or a pair differs in shape.
    """
    per_image: list[dict[str, float]] = []
    empty = 0
    cam_list, mask_list = list(cams), list(masks)
    if len(cam_list) != len(mask_list):
        raise ValueError(f"{len(cam_list)} heat maps but {len(mask_list)} masks")
    for i, (cam, mask) in enumerate(zip(cam_list, mask_list, strict=True)):
        if not np.asarray(mask).any():
            empty += 1
            continue
        try:
            per_image.append(score_image(cam, mask, dilate_px=dilate_px))
        except ValueError as exc:
            raise ValueError(f"image {i}: {exc}") from None
    return {**summarise(per_image, dilate_px=dilate_px), "n_empty": empty}
