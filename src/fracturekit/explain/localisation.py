"""Localisation scores of a predictor's heat maps against the crack masks of labelled images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fracturekit.explain._predictor import PredictorLike, torch_model
from fracturekit.explain.cams import (
    EXPLAIN_LAYER,
    EXPLAIN_METHOD,
    compute_cams,
    method_row,
    resolve_layers,
)
from fracturekit.io import read_image, read_mask
from fracturekit.render import resize_map


def evaluate_localisation(
    predictor: PredictorLike,
    samples: Sequence[Any],
    *,
    method: str = EXPLAIN_METHOD,
    batch_size: int = 16,
    layer: Any = EXPLAIN_LAYER,
    dilate_px: float = 8,
) -> dict[str, Any]:
    """Localisation scores of the predictor's heat maps against the masks of labelled samples.

    Scored images: samples of the positive class (binary; every class for multi-class models)
    that have a mask file with at least one foreground pixel. The heat map explains the
    sample's true class; it is resized (bilinear) to the image's size and scored against the
    mask there, so ``dilate_px`` is in image pixels (``fracturekit.localisation``).

    Args:
        predictor: a ``Predictor`` (PyTorch backend).
        samples: ``fracturekit.data.Sample`` records (``path``, ``mask``, ``class_name``).
        method, layer: as ``compute_cams`` (default: ``EXPLAIN_METHOD`` at ``EXPLAIN_LAYER``).
        batch_size: images per CAM pass.
        dilate_px: pointing-game and energy tolerance in pixels.

    Returns:
        ``localisation_scores``' figures plus ``method``, ``layer``, ``n_empty`` (masks without
        foreground), ``unreadable`` (``[{"path", "error"}]``); ``None`` figures when no image
        qualifies.
    """
    import torch

    from fracturekit.localisation import score_image, summarise

    row = method_row(method)
    model = torch_model(predictor)
    classes = list(predictor.classes)
    pos = predictor.positive_index
    chosen = [
        s
        for s in samples
        if getattr(s, "mask", None) is not None
        and s.class_name in classes
        and (pos is None or s.class_name == classes[pos])
    ]
    _, names = resolve_layers(model, layer)
    per_image: list[dict[str, float]] = []
    unreadable: list[dict[str, str]] = []
    empty = 0
    for start in range(0, len(chosen), batch_size):
        loaded = []
        for s in chosen[start : start + batch_size]:
            try:
                image = read_image(s.path, channels=predictor.in_chans)
                mask = read_mask(
                    s.mask, size=image.size, orientation=image.info.get("orientation", 1)
                )
            except (ValueError, OSError) as exc:
                unreadable.append({"path": str(s.path), "error": str(exc)})
                continue
            if not mask.any():
                empty += 1
                continue
            loaded.append((s, image, mask))
        by_class: dict[int, list[tuple[Any, Any, np.ndarray]]] = {}
        for item in loaded:
            by_class.setdefault(classes.index(item[0].class_name), []).append(item)
        for index, items in by_class.items():
            batch = torch.stack([predictor.preprocess(im) for _, im, _ in items])
            cams = compute_cams(
                model, batch, method=row.name, target=index, layer=layer, classes=classes
            )
            for (_, image, mask), cam in zip(items, cams, strict=True):
                per_image.append(
                    score_image(resize_map(cam, image.size), mask, dilate_px=dilate_px)
                )
    return {
        **summarise(per_image, dilate_px=dilate_px),
        "method": row.name,
        "layer": "+".join(names),
        "n_empty": empty,
        "unreadable": unreadable,
    }
