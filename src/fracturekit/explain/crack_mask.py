"""A crack mask from an image alone, guided by a checkpoint's heat map (``width --model``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fracturekit.explain._predictor import PredictorLike
from fracturekit.explain.cams import EXPLAIN_LAYER, EXPLAIN_METHOD, image_cam

if TYPE_CHECKING:
    from PIL import Image

RIDGE_SIGMAS = 6.0  # derive_crack_mask: ridge response this many robust SDs above its median


@dataclass
class DerivedMask:
    """A crack mask derived from an image and a checkpoint's heat map.

    Attributes:
        mask: ``(H, W)`` bool crack mask.
        cam: ``(H, W)`` float32 heat map in [0, 1] at the image's size (the positive class of
            a binary model, the predicted class otherwise).
        region: ``(H, W)`` bool where the heat map allowed cracks to be looked for.
        centre_lines: ``(H, W)`` bool ridge centre lines the mask was grown from.
    """

    mask: np.ndarray
    cam: np.ndarray
    region: np.ndarray
    centre_lines: np.ndarray


def derive_crack_mask(
    predictor: PredictorLike,
    image: Image.Image,
    *,
    method: str = EXPLAIN_METHOD,
    layer: Any = EXPLAIN_LAYER,
    cam_threshold: float = 0.3,
    max_width: float = 20.0,
    min_area: int = 30,
) -> DerivedMask:
    """Derive a crack mask from an image alone, guided by a checkpoint's heat map.

    How (for cracks *darker* than their surroundings, as on concrete, asphalt, masonry and
    rock, and fracture lines on most X-rays):

    1. The heat map of the positive class (``compute_cams``), resized to the image, marks the
       region where cracks are looked for: ``cam >= cam_threshold`` (relative to its maximum),
       grown by ``max_width`` px.
    2. Dark thin lines are enhanced with the Sato tubeness filter (``skimage.filters.sato``,
       ``black_ridges=True``) at scales 1-4 px; hysteresis thresholding keeps connected ridges
       standing out of the response's own noise inside the region (high: median +
       ``RIDGE_SIGMAS`` robust standard deviations (1.4826 MAD), low: half as many); pieces of
       at most ``min_area`` px are dropped; their skeletons are the centre lines.
    3. Width comes from the image itself, not the filter: the local background is a grey
       closing (which removes dark lines up to ``max_width`` wide), ``depth = background -
       image``, and a pixel within ``max_width / 2`` of a centre line belongs to the crack when
       its depth is at least half the depth at the nearest centre-line pixel (the full width at
       half depth, which matches a mask of pixels at least half covered by the crack).
       Centre-line pixels whose depth does not stand out of the texture (median + 3 robust
       standard deviations of the depth) are dropped first.

    Limits: bright cracks (filled, or bright lines on some X-rays) are missed; dark look-alikes
    inside the region (joints, shadows, stains, tyre marks, vessels, plate edges) are taken for
    cracks; widths beyond ``max_width`` px are clipped and widths under about 1 px are
    unreliable (blur spreads a hairline over several pixels at half its depth); the heat map's
    coarse grid (a 32 px cell at 224 px input for most backbones) only gates where to look, so
    the mask never follows it closely. A hand-drawn or segmentation mask (``--mask``) is always
    more reliable.

    Args:
        predictor: a ``Predictor`` (PyTorch backend).
        image: a PIL image (as ``fracturekit.io.read_image`` returns).
        method, layer: as ``compute_cams`` (default: ``EXPLAIN_METHOD`` at ``EXPLAIN_LAYER``).
        cam_threshold: share of the heat map's maximum that marks the search region.
        max_width: the widest crack expected, in px.
        min_area: smallest ridge piece kept, in px.

    Returns:
        A ``DerivedMask``.
    """
    from scipy import ndimage as ndi
    from skimage import filters, morphology

    if not 0.0 <= cam_threshold <= 1.0:
        raise ValueError(f"cam_threshold must lie in [0, 1], got {cam_threshold}")
    if max_width < 1:
        raise ValueError(f"max_width must be at least 1 px, got {max_width}")
    cam = image_cam(predictor, image, method=method, layer=layer)
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    region = cam >= cam_threshold * max(float(cam.max()), 1e-6)
    region = ndi.distance_transform_edt(~region) <= max_width if region.any() else region

    half = max_width / 2.0
    # Small scales only: larger ones answer to blotches and shading more than to cracks, and a
    # wide crack's centre line still shows at scale 4; its width comes from step 3.
    sigmas = [s for s in (1.0, 2.0, 3.0, 4.0) if s <= max(1.0, half)]
    ridge = filters.sato(gray, sigmas=sigmas, black_ridges=True)
    inside = ridge[region]
    lines = np.zeros(gray.shape, bool)
    if inside.size:
        # Robust noise level of the response (median and MAD): a crack is an outlier of it.
        med = float(np.median(inside))
        spread = 1.4826 * float(np.median(np.abs(inside - med)))
        if spread > 0:
            high = med + RIDGE_SIGMAS * spread
            lines = filters.apply_hysteresis_threshold(ridge, med + RIDGE_SIGMAS / 2 * spread, high)
            lines = morphology.remove_small_objects(lines & region, max_size=min_area)
    centre = morphology.skeletonize(lines)

    size = int(2 * math.ceil(half) + 3)
    background = ndi.grey_closing(gray, size=(size, size))
    depth = np.clip(background - gray, 0.0, None)
    # Centre-line pixels no deeper than the texture's own dips are ridge-filter noise (spurs,
    # blurred line ends): the floor is the median depth + 3 robust SDs.
    med = float(np.median(depth))
    floor = med + 3.0 * 1.4826 * float(np.median(np.abs(depth - med)))
    centre &= depth > floor
    mask = np.zeros(gray.shape, bool)
    if centre.any():
        dist, (iy, ix) = ndi.distance_transform_edt(~centre, return_indices=True)
        reference = depth[iy, ix]
        mask = (depth >= 0.5 * reference) & (dist <= half) & (reference > 0)
        mask |= centre
        labels, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
        keep = np.unique(labels[centre])
        mask = np.isin(labels, keep[keep > 0])
    return DerivedMask(mask=mask, cam=cam.astype(np.float32), region=region, centre_lines=centre)


def crack_mask_from_image(
    predictor: PredictorLike,
    image: Image.Image,
    *,
    prediction: Any = None,
    method: str = EXPLAIN_METHOD,
    layer: Any = EXPLAIN_LAYER,
) -> DerivedMask | None:
    """The crack mask of an image that has none of its own: the one path of ``fracturekit
    width --model`` and the service's ``/explain``.

    Args:
        predictor: a ``Predictor`` (PyTorch backend).
        image: a PIL image, at the size the mask is wanted.
        prediction: the image's ``Prediction`` when the caller has one: then a binary model
            whose predicted label is not its positive class (``predictor.positive_index``)
            gives None, as there is no crack to measure. Multi-class models, and calls without
            a prediction, always derive a mask.
        method, layer: as ``derive_crack_mask``.

    Returns:
        ``derive_crack_mask``'s ``DerivedMask`` (its ``cam`` explains the positive class of a
        binary model, the predicted class otherwise), or None (see ``prediction``).
    """
    pos = predictor.positive_index
    if prediction is not None and pos is not None and prediction.label != predictor.classes[pos]:
        return None
    return derive_crack_mask(predictor, image, method=method, layer=layer)
