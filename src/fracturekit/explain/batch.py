"""Explaining image files through a predictor: figures, overlays, heat maps, feature grids."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fracturekit._files import atomic_write
from fracturekit.explain._predictor import PredictorLike, torch_model
from fracturekit.explain.cams import (
    EXPLAIN_LAYER,
    EXPLAIN_METHOD,
    CamMethod,
    _find_layer,
    _num_outputs,
    compute_cams,
    feature_maps,
    method_row,
    resolve_layers,
    resolve_target,
)
from fracturekit.io import read_image
from fracturekit.render import overlay, resize_map, save_feature_grid, save_overlay_figure


@dataclass
class ExplainResult:
    """What ``explain_images`` produced for one image (``error`` set when it failed).

    Attributes:
        path: the input image.
        label: predicted class; ``confidence`` its probability; ``probabilities`` all classes.
        target: the class the heat map explains; ``method`` and ``layer`` how it was made.
        figure: PNG with the image, the overlay, a colour bar and the prediction in the title.
        overlay: PNG of the overlay alone at the image's size.
        heatmap: ``.npy`` float32 heat map in [0, 1] at the image's size.
        layer_grids: ``{layer name: PNG}`` feature-map grids (``feature_grids=``).
    """

    path: str
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    target: str | None = None
    method: str = EXPLAIN_METHOD
    layer: str | None = None
    figure: Path | None = None
    overlay: Path | None = None
    heatmap: Path | None = None
    layer_grids: dict[str, Path] = field(default_factory=dict)
    error: str | None = None


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = re.sub(r"[^\w.-]+", "_", p.stem) or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n + 1}")
    return stems


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "layer"


def _class_name(predictor: PredictorLike, index: int | None) -> str | None:
    """The name of class ``index`` (None stays None: "the predicted class")."""
    return None if index is None else list(predictor.classes)[index]


def explain_images(
    predictor: PredictorLike,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    method: str = EXPLAIN_METHOD,
    target: int | str | None = None,
    feature_grids: Sequence[str] | None = None,
    cam_layer: Any = EXPLAIN_LAYER,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[ExplainResult]:
    """Heat maps, overlays and (optionally) feature-map grids for image files.

    Per image ``<stem>`` it writes into ``out``: ``<stem>_cam.png`` (image, overlay, colour bar,
    predicted class and probability in the title), ``<stem>_overlay.png`` (the overlay alone,
    full size), ``<stem>_cam.npy`` (float32 heat map in [0, 1] at the image's size) and, for
    each name in ``feature_grids``, ``<stem>_layer_<name>.png`` (the layer's most structured channels).
    Preprocessing and the prediction in the title come from ``predictor``.

    Args:
        predictor: a ``fracturekit.predict.Predictor`` with the PyTorch backend.
        paths: image files.
        out: output folder (created).
        method: a ``CAM_METHODS`` name (default ``EXPLAIN_METHOD``).
        target: class name or index to explain (default: see ``compute_cams``).
        feature_grids: intermediate layers whose feature maps to save as grids
            (``layer_choices`` names or dotted module names); nothing to do with the heat map.
        cam_layer: the layer(s) the heat map is computed at (default ``EXPLAIN_LAYER``; see
            ``resolve_layers``).
        batch_size: images per forward/backward pass.
        overwrite: replace existing output files; otherwise an existing one is an error.
        progress: called with ``(done, total)`` after each batch.

    Returns:
        One ``ExplainResult`` per input path, in order; an unreadable image gives one with
        ``error`` set (the others are still explained).

    Raises:
        ValueError: unknown method, class or layer, an ONNX predictor, or ``batch_size < 1``.
        FileExistsError: an output file exists and ``overwrite`` is false.
    """
    row = method_row(method)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    model = torch_model(predictor)
    index = resolve_target(
        target,
        classes=list(predictor.classes),
        positive=predictor.positive,
        n_out=_num_outputs(model),
    )
    cam_layers, cam_names = resolve_layers(model, cam_layer)
    grid_layers = [str(n) for n in (feature_grids or [])]
    for name in grid_layers:
        _find_layer(model, name)  # fail before any work when a name is wrong
    paths = [Path(p) for p in paths]
    planned = _planned_files(paths, Path(out), grid_layers, overwrite)
    explain = partial(
        _explain_batch,
        predictor,
        model,
        row=row,
        index=index,
        cam_layers=cam_layers,
        cam_name="+".join(cam_names),
        grid_layers=grid_layers,
    )
    results: list[ExplainResult] = []
    total = len(paths)
    for start in range(0, total, batch_size):
        chunk = range(start, min(start + batch_size, total))
        results.extend(_explain_chunk(predictor, paths, planned, chunk, row.name, explain))
        if progress is not None:
            progress(min(start + batch_size, total), total)
    order = {str(p): k for k, p in enumerate(paths)}
    results.sort(key=lambda r: order.get(r.path, 0))
    return results


def _planned_files(
    paths: list[Path], out: Path, grid_layers: list[str], overwrite: bool
) -> list[dict[str, Path]]:
    """The files each image will get (unique stems), checked against existing ones; ``out`` is
    created."""
    planned = [
        {
            "figure": out / f"{stem}_cam.png",
            "overlay": out / f"{stem}_overlay.png",
            "heatmap": out / f"{stem}_cam.npy",
            **{f"layer:{n}": out / f"{stem}_layer_{_safe(n)}.png" for n in grid_layers},
        }
        for stem in _unique_stems(paths)
    ]
    if not overwrite:
        existing = [str(p) for files in planned for p in files.values() if p.exists()]
        if existing:
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            raise FileExistsError(
                f"{', '.join(existing[:3])}{more} already exist(s): pass overwrite=True "
                "(--overwrite) to replace, or choose another output folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    return planned


def _explain_chunk(
    predictor: PredictorLike,
    paths: list[Path],
    planned: list[dict[str, Path]],
    chunk: range,
    method: str,
    explain: Callable[..., list[ExplainResult]],
) -> list[ExplainResult]:
    """Read the images of ``chunk`` (an unreadable one gives an error result) and explain the
    rest in one batch."""
    results: list[ExplainResult] = []
    images: dict[int, Any] = {}
    for i in chunk:
        try:
            images[i] = read_image(paths[i], channels=predictor.in_chans)
        except (ValueError, OSError) as exc:
            results.append(ExplainResult(str(paths[i]), method=method, error=str(exc)))
    good = [i for i in chunk if i in images]
    if good:
        results.extend(
            explain([paths[i] for i in good], [images[i] for i in good], [planned[i] for i in good])
        )
    return results


def _explain_batch(
    predictor: PredictorLike,
    model: Any,
    paths: list[Path],
    images: list[Any],
    files: list[dict[str, Path]],
    *,
    row: CamMethod,
    index: int | None,
    cam_layers: list[Any],
    cam_name: str,
    grid_layers: list[str],
) -> list[ExplainResult]:
    import torch

    predictions = predictor.predict_images(images, [str(p) for p in paths])
    batch = torch.stack([predictor.preprocess(im) for im in images])
    cams = compute_cams(
        model,
        batch,
        method=row.name,
        target=index,
        layer=cam_layers,
        classes=predictor.classes,
        positive=predictor.positive,
    )
    grids = feature_maps(model, batch, grid_layers) if grid_layers else {}
    results = []
    for k, (path, image, pred, where) in enumerate(
        zip(paths, images, predictions, files, strict=True)
    ):
        explained = _class_name(predictor, index) or pred.label
        heat = resize_map(cams[k], image.size)
        atomic_write(where["heatmap"], lambda tmp, heat=heat: _save_npy(tmp, heat))
        atomic_write(where["overlay"], lambda tmp, im=image, h=heat: _save_png(overlay(im, h), tmp))
        title = (
            f"{path.name}: predicted {pred.label} (p = {pred.confidence:.3f})\n"
            f"{row.name} for class {explained}, layer {cam_name}"
        )
        save_overlay_figure(image, heat, where["figure"], title)
        layer_files = {}
        for name in grid_layers:
            layer_files[name] = save_feature_grid(
                grids[name][k], where[f"layer:{name}"], f"{path.name}: layer {name}", image=image
            )
        results.append(
            ExplainResult(
                path=str(path),
                label=pred.label,
                confidence=pred.confidence,
                probabilities=dict(pred.probabilities),
                target=explained,
                method=row.name,
                layer=cam_name,
                figure=where["figure"],
                overlay=where["overlay"],
                heatmap=where["heatmap"],
                layer_grids=layer_files,
            )
        )
    return results


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fp:
        np.save(fp, np.asarray(array, dtype=np.float32))


def _save_png(image: Any, path: Path) -> None:
    image.save(path, format="PNG")
