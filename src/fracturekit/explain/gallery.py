"""The run report's gallery: heat maps of the most telling images of an evaluation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit.explain._predictor import PredictorLike, torch_model
from fracturekit.explain.cams import EXPLAIN_LAYER, EXPLAIN_METHOD, compute_cams, method_row
from fracturekit.io import read_image
from fracturekit.render import resize_map, save_overlay_figure

# Gallery groups, in the order the report shows them (file names sort the same way).
GALLERY_GROUPS_BINARY = ("true_positive", "false_positive", "false_negative")
GALLERY_GROUPS_MULTICLASS = ("correct", "mistake")
_GALLERY_FILE = re.compile(
    r"^(?:true_positive|false_positive|false_negative|correct|mistake)_\d+_.*\.png$"
)


def _label_index(label: Any, classes: list[str]) -> int:
    if isinstance(label, str) and label in classes:
        return classes.index(label)
    if isinstance(label, int | np.integer) and 0 <= int(label) < len(classes):
        return int(label)
    raise ValueError(f"label {label!r} is not one of the classes {classes}")


def _probabilities(
    predictor: PredictorLike,
    paths: Sequence[str | Path],
    batch_size: int,
    probabilities: np.ndarray | None,
) -> np.ndarray:
    """``(N, C)`` class probabilities of ``paths``: given, or predicted (NaN rows: unreadable)."""
    classes = list(predictor.classes)
    if probabilities is not None:
        proba = np.asarray(probabilities, dtype=np.float64)
        if proba.shape != (len(paths), len(classes)):
            raise ValueError(
                f"probabilities must be {(len(paths), len(classes))}, got {proba.shape}"
            )
        return proba
    rows = []
    for pred in predictor.predict_paths([str(p) for p in paths], batch_size):
        if pred.error is not None:
            rows.append(np.full(len(classes), np.nan))
        else:
            rows.append(np.array([pred.probabilities[c] for c in classes]))
    return np.stack(rows) if rows else np.zeros((0, len(classes)))


def _groups(
    proba: np.ndarray, y: np.ndarray, pos: int | None, threshold: float
) -> dict[str, list[int]]:
    """Image indices per gallery group, most telling first (see ``write_cam_gallery``)."""
    ok = np.isfinite(proba).all(axis=1)
    groups: dict[str, list[int]] = {}
    if pos is not None:
        p = proba[:, pos] if len(proba) else np.zeros(0)
        pred_pos = p >= threshold
        is_pos = y == pos
        order_high = np.argsort(-np.nan_to_num(p, nan=-1.0), kind="stable")
        order_low = np.argsort(np.nan_to_num(p, nan=2.0), kind="stable")
        groups["true_positive"] = [i for i in order_high if ok[i] and is_pos[i] and pred_pos[i]]
        groups["false_positive"] = [
            i for i in order_high if ok[i] and not is_pos[i] and pred_pos[i]
        ]
        groups["false_negative"] = [i for i in order_low if ok[i] and is_pos[i] and not pred_pos[i]]
        return groups
    pred = np.nan_to_num(proba, nan=-1.0).argmax(axis=1) if len(proba) else np.zeros(0, int)
    conf = np.nan_to_num(proba.max(axis=1), nan=-1.0) if len(proba) else np.zeros(0)
    order = np.argsort(-conf, kind="stable")
    groups["correct"] = [i for i in order if ok[i] and pred[i] == y[i]]
    groups["mistake"] = [i for i in order if ok[i] and pred[i] != y[i]]
    return groups


def write_cam_gallery(
    predictor: PredictorLike,
    paths: Sequence[str | Path],
    labels: Sequence[int | str],
    out_dir: str | Path,
    *,
    n_per_group: int = 6,
    method: str = EXPLAIN_METHOD,
    layer: Any = EXPLAIN_LAYER,
    batch_size: int = 16,
    probabilities: np.ndarray | None = None,
    threshold: float | None = None,
) -> list[Path]:
    """CAM figures of the most telling images of an evaluation, for the run report.

    Binary models: the ``n_per_group`` most confident true positives, the most confident false
    positives and the most confidently missed positives (false negatives), each explaining the
    positive class. Multi-class models: the most confident correct predictions and mistakes,
    each explaining the predicted class. Files are ``<group>_<NN>_<image stem>.png`` in
    ``out_dir`` (the report captions a picture from its file name); gallery files of an earlier
    run in ``out_dir`` are removed first so the report never mixes two runs.

    Args:
        predictor: a ``Predictor`` (PyTorch backend).
        paths: image files; ``labels``: their true classes (names or indices).
        out_dir: the gallery folder (normally ``RUN/cams``).
        n_per_group: images per group.
        method, layer: as ``compute_cams`` (default: ``EXPLAIN_METHOD`` at ``EXPLAIN_LAYER``).
        batch_size: inference batch size.
        probabilities: ``(N, C)`` class probabilities already computed for ``paths`` (skips
            the prediction pass); unreadable images may be rows of NaN.
        threshold: binary decision threshold (default: the predictor's).

    Returns:
        The PNGs written, in gallery order.
    """
    import torch

    classes = list(predictor.classes)
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    model = torch_model(predictor)
    y = np.array([_label_index(v, classes) for v in labels], dtype=int)
    proba = _probabilities(predictor, paths, batch_size, probabilities)
    pos = predictor.positive_index
    if threshold is None:
        threshold = predictor.threshold if predictor.threshold is not None else 0.5
    groups = _groups(proba, y, pos, threshold)

    out_dir = Path(out_dir)
    if out_dir.is_dir():
        for old in out_dir.iterdir():
            if old.is_file() and _GALLERY_FILE.match(old.name):
                old.unlink()
    chosen = [(g, k, i) for g, idx in groups.items() for k, i in enumerate(idx[:n_per_group])]
    if not chosen:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for start in range(0, len(chosen), batch_size):
        part = chosen[start : start + batch_size]
        images = [read_image(paths[i], channels=predictor.in_chans) for _, _, i in part]
        batch = torch.stack([predictor.preprocess(im) for im in images])
        cams = compute_cams(
            model,
            batch,
            method=method,
            target=pos,
            layer=layer,
            classes=classes,
            positive=predictor.positive,
        )
        for (group, k, i), image, cam in zip(part, images, cams, strict=True):
            stem = re.sub(r"[^\w.-]+", "_", Path(paths[i]).stem)
            shown = pos if pos is not None else int(np.argmax(proba[i]))
            title = (
                f"{Path(paths[i]).name}: true {classes[y[i]]}, "
                f"p({classes[shown]}) = {proba[i, shown]:.3f}\n"
                f"{group.replace('_', ' ')}, {method_row(method).name} for {classes[shown]}"
            )
            path = out_dir / f"{group}_{k + 1:02d}_{stem}.png"
            written.append(save_overlay_figure(image, resize_map(cam, image.size), path, title))
    return written
