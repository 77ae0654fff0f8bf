"""Pictures of maps: colour maps, overlays and figures written as PNGs.

Heat maps from ``fracturekit.explain``, probability maps from ``fracturekit.scan`` and figures
of other stages are drawn here, so drawing needs neither torch nor ``grad-cam``: only numpy,
Pillow and matplotlib (imported inside the functions, for a fast ``fracturekit --help``).
Figures use matplotlib's object API with the Agg canvas (no pyplot state, safe in servers) and
are written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fracturekit._files import atomic_write

if TYPE_CHECKING:
    from PIL import Image


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A heat map resized (bilinear) to ``size = (width, height)``, float32."""
    from PIL import Image

    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape[::-1] == tuple(size):
        return cam
    out = Image.fromarray(cam, mode="F").resize(tuple(size), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def as_rgb_array(image: Any) -> np.ndarray:
    """An image (PIL, ``(H, W)`` or ``(H, W, 3|4)`` array) as ``(H, W, 3)`` uint8 RGB."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 3) or a PIL image, got {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return arr[..., :3]


def colorize(cam: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] heat map as ``(H, W, 3)`` uint8 colours of a matplotlib colour map."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown colour map {colormap!r} (see matplotlib.colormaps)") from None
    rgba = cmap(np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(
    image: Any, cam: np.ndarray, *, alpha: float = 0.45, colormap: str = "jet"
) -> Image.Image:
    """The heat map blended over the image, at the image's size.

    Args:
        image: a PIL image or an ``(H, W[, 3])`` array.
        cam: ``(h, w)`` heat map in [0, 1]; resized to the image.
        alpha: weight of the heat map (0: the image only, 1: the heat map only).
        colormap: a matplotlib colour map name.
    """
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rgb = as_rgb_array(image)
    heat = colorize(resize_map(cam, (rgb.shape[1], rgb.shape[0])), colormap)
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def mask_overlay(
    image: Any,
    mask: np.ndarray,
    *,
    colour: tuple[int, int, int] = (255, 32, 32),
    alpha: float = 0.55,
) -> Image.Image:
    """A binary mask painted in ``colour`` over the image, at the image's size.

    A mask of another size is reduced (or enlarged) so that a cell holding any mask pixel is
    painted: a 1-px crack of a full-size mask stays visible on a small picture.

    Args:
        image: a PIL image or an ``(H, W[, 3])`` array.
        mask: ``(h, w)`` binary mask.
        colour: RGB of the mask.
        alpha: weight of the colour on mask pixels (0: the image only, 1: solid colour).
    """
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rgb = as_rgb_array(image).astype(np.float32)
    size = (rgb.shape[1], rgb.shape[0])
    mask = np.asarray(mask, bool)
    if mask.shape[::-1] != size:
        grey = Image.fromarray(mask.astype(np.uint8) * 255)
        mask = np.asarray(grey.resize(size, Image.Resampling.BOX)) > 0
    rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def truth_overlay(image: Any, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """A predicted mask and its truth over the image: truth green, prediction red, both yellow.

    Args:
        image: a PIL image or an ``(H, W[, 3])`` array.
        predicted: ``(H, W)`` boolean mask at the image's size.
        truth: ``(H, W)`` boolean mask at the image's size.

    Returns:
        ``(H, W, 3)`` float32 RGB in [0, 1]; pixels of neither mask are the image's own.
    """
    rgb = as_rgb_array(image).astype(np.float32) / 255.0
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.shape != rgb.shape[:2] or truth.shape != rgb.shape[:2]:
        raise ValueError(
            f"masks {predicted.shape} and {truth.shape} must match the image {rgb.shape[:2]}"
        )
    colour = np.zeros_like(rgb)
    colour[..., 0] = predicted
    colour[..., 1] = truth
    shown = predicted | truth
    rgb[shown] = 0.4 * rgb[shown] + 0.6 * colour[shown]
    return rgb


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib ``Figure`` as a PNG at ``path`` (Agg canvas, atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def save_overlay_figure(
    image: Any,
    cam: np.ndarray,
    path: str | Path,
    title: str,
    *,
    alpha: float = 0.45,
    colormap: str = "jet",
) -> Path:
    """The image beside its heat-map overlay with a colour bar, written as a PNG (atomically).

    Uses matplotlib's object API with the Agg canvas (no pyplot state, safe in servers).

    Args:
        image: a PIL image or an array.
        cam: heat map in [0, 1] (resized to the image).
        path: the PNG to write.
        title: the figure title (e.g. the predicted class and its probability).
    """
    from matplotlib import cm, colors
    from matplotlib.figure import Figure

    rgb = as_rgb_array(image)
    over = np.asarray(overlay(rgb, cam, alpha=alpha, colormap=colormap))
    h, w = rgb.shape[:2]
    panel = 3.6
    fig = Figure(figsize=(2 * panel * max(w / h, 0.5) + 1.0, panel + 0.7))
    axes = fig.subplots(1, 2)
    axes[0].imshow(rgb)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(over)
    axes[1].set_title("heat map", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    mappable = cm.ScalarMappable(norm=colors.Normalize(0.0, 1.0), cmap=colormap)
    bar = fig.colorbar(mappable, ax=axes[1], fraction=0.046, pad=0.03)
    bar.set_label("relative attention", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, Path(path))


def save_feature_grid(
    maps: np.ndarray,
    path: str | Path,
    title: str,
    *,
    image: Any = None,
    max_channels: int = 15,
) -> Path:
    """The most structured channels of one image's feature maps ``(C, h, w)`` as a grid PNG.

    Channels are ranked by their spatial standard deviation (the ones that respond to where
    something is, rather than uniformly) and each is scaled to its own range; ``image``, when
    given, comes first so that what a channel responds to can be seen.
    """
    from matplotlib.figure import Figure

    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"feature maps must be (C, h, w), got {maps.shape}")
    order = np.argsort(-maps.reshape(maps.shape[0], -1).std(axis=1), kind="stable")[:max_channels]
    panels = len(order) + (image is not None)
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(2.0 * cols, 2.0 * rows + 0.6))
    axes = list(np.atleast_1d(fig.subplots(rows, cols)).ravel())
    for ax in axes:
        ax.set_axis_off()
    if image is not None:
        axes[0].imshow(as_rgb_array(image))
        axes[0].set_title("image", fontsize=7)
        axes = axes[1:]
    for ax, ch in zip(axes, order, strict=False):
        m = maps[ch]
        lo, hi = float(m.min()), float(m.max())
        ax.imshow((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m), cmap="viridis")
        ax.set_title(f"channel {int(ch)}", fontsize=7)
    fig.suptitle(f"{title}\n{maps.shape[0]} channels, {maps.shape[1]}x{maps.shape[2]}", fontsize=9)
    return save_figure(fig, Path(path))
