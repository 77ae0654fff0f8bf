"""Class-activation heat maps: where the network sees the crack or fracture.

One module a concern; every name is imported from ``fracturekit.explain``:

* ``cams``: the ``CAM_METHODS`` table, targets, target layers and ``compute_cams`` (heat maps
  of a preprocessed batch), ``feature_maps``, ``image_cam`` (one image through a predictor);
* ``batch``: ``explain_images`` (figures, overlays, heat maps and feature grids of image files);
* ``gallery``: ``write_cam_gallery`` (the run report's most telling images);
* ``localisation``: ``evaluate_localisation`` (heat maps scored against crack masks);
* ``crack_mask``: ``derive_crack_mask`` and ``crack_mask_from_image`` (a crack mask from an
  image alone, guided by the heat map);
* ``attention``: the heat map along a measured crack against its width;
* ``measure``: ``measure_files`` (crack widths of image and mask files, a model supplying the
  masks an image lacks: the library path of ``fracturekit width``).

Colour maps, overlays and figures live in ``fracturekit.render`` (no torch, no ``grad-cam``), and
are re-exported here. Everything that reads images or writes files works through a predictor
(``PredictorLike``: ``fracturekit.predict.Predictor`` fits it, the one inference path with its
preprocessing, temperature and threshold), passed in by the caller. See ``cams`` for the
targets, layers and defaults (``EXPLAIN_METHOD`` at ``EXPLAIN_LAYER``).
"""

from __future__ import annotations

from fracturekit.explain._predictor import PredictorLike
from fracturekit.explain.attention import (
    attention_along_crack,
    attention_width_figure,
    write_attention_width,
)
from fracturekit.explain.batch import ExplainResult, explain_images
from fracturekit.explain.cams import (
    CAM_METHODS,
    CLASSIC_METHOD,
    DEFAULT_METHOD,
    EXPLAIN_LAYER,
    EXPLAIN_METHOD,
    SCORECAM_BATCH,
    CamMethod,
    compute_cams,
    feature_maps,
    fine_layers,
    image_cam,
    layer_choices,
    layer_name,
    method_row,
    resolve_layers,
    resolve_target,
)
from fracturekit.explain.crack_mask import (
    RIDGE_SIGMAS,
    DerivedMask,
    crack_mask_from_image,
    derive_crack_mask,
)
from fracturekit.explain.gallery import (
    GALLERY_GROUPS_BINARY,
    GALLERY_GROUPS_MULTICLASS,
    write_cam_gallery,
)
from fracturekit.explain.localisation import evaluate_localisation
from fracturekit.explain.measure import WidthFiles, measure_files
from fracturekit.render import (
    colorize,
    overlay,
    resize_map,
    save_feature_grid,
    save_overlay_figure,
)

__all__ = [
    "CAM_METHODS",
    "CLASSIC_METHOD",
    "DEFAULT_METHOD",
    "EXPLAIN_LAYER",
    "EXPLAIN_METHOD",
    "GALLERY_GROUPS_BINARY",
    "GALLERY_GROUPS_MULTICLASS",
    "RIDGE_SIGMAS",
    "SCORECAM_BATCH",
    "CamMethod",
    "DerivedMask",
    "ExplainResult",
    "PredictorLike",
    "WidthFiles",
    "attention_along_crack",
    "attention_width_figure",
    "colorize",
    "compute_cams",
    "crack_mask_from_image",
    "derive_crack_mask",
    "evaluate_localisation",
    "explain_images",
    "feature_maps",
    "fine_layers",
    "image_cam",
    "layer_choices",
    "layer_name",
    "measure_files",
    "method_row",
    "overlay",
    "resize_map",
    "resolve_layers",
    "resolve_target",
    "save_feature_grid",
    "save_overlay_figure",
    "write_attention_width",
    "write_cam_gallery",
]
