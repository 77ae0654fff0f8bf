"""Class-activation heat maps: where the network sees the crack or fracture.

``CAM_METHODS`` is the table of methods (one row a method of the ``grad-cam`` package);
``compute_cams`` runs one of them on a batch and returns heat maps in [0, 1] at the input size.
Everything that reads images or writes files works through a ``fracturekit.predict.Predictor``
(the one inference path: its preprocessing, temperature and threshold), passed in by the caller.

**Targets.** A heat map explains one class. By default that is the positive class of a binary
model (the evidence for a crack, whatever the decision) and the predicted class otherwise. The
score whose gradient Grad-CAM follows (Selvaraju et al., ICCV 2017, eq. 1) is:

* single-logit (sigmoid) heads: the logit ``z`` for the class it scores (index 1) and ``-z`` for
  the other class;
* two-logit heads: the log-odds ``z_c - z_other``, which is exactly what the class probability
  depends on (so a two-logit head and its single-logit twin give the same map);
* multi-class heads: the raw class score ``z_c`` (pre-softmax, as in the paper).

**Layers.** ``compute_cams``' target layer defaults to ``FractureNet.cam_layer()`` (the last
convolutional stage of every backbone row); ``layer`` picks another: ``"fine"`` (the last
stride-16 block and the next one, see ``fine_layers``), ``"cam"``, ``"blockN"`` for the N-th trunk
block of ``FractureNet.blocks()``, a dotted module name, a module, or a list of them (the maps of
several layers are averaged, each scaled to [0, 1] first, as the ``grad-cam`` package does).

**Defaults.** ``compute_cams`` defaults to the classic Grad-CAM at the last stage. Everything
built on it for users (``explain_images``, the gallery, ``evaluate_localisation``,
``derive_crack_mask``, the CLI) defaults to ``EXPLAIN_METHOD`` at ``EXPLAIN_LAYER`` (HiResCAM at
the ``fine`` layers): on held-out CRACK500 tiles with the fine-tuned default backbone its pointing
game was 0.94 against 0.70 for Grad-CAM at the last stage, and it led on the other sets too
(``benchmarks/localisation.py``).

**Resources.** Hooks live in ``with`` blocks for one call: the ``grad-cam`` object (a context
manager removing its hooks) and ours (which make gradients start at the target layer, so no
parameter gradient is ever computed or kept). The model's train/eval mode and its parameters'
``requires_grad`` flags are restored afterwards, and calls on one model are serialised by a lock:
hooks are per model, so two threads explaining on the same model at once would see each other's
activations. A long-running server therefore keeps a flat memory profile
(``benchmarks/explain_memory.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fracturekit._files import atomic_write
from fracturekit.io import read_image, read_mask

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass(frozen=True)
class CamMethod:
    """One row of ``CAM_METHODS``: a class of the ``grad-cam`` package.

    Attributes:
        name: the name users type (``--method NAME``).
        class_name: the class in ``pytorch_grad_cam`` (imported on first use: the package pulls
            in torch and OpenCV, too heavy for ``fracturekit --help``).
        gradients: whether the method back-propagates (the others only run forward passes).
        reference: the paper.
    """

    name: str
    class_name: str
    gradients: bool
    reference: str

    def load(self) -> type:
        """The ``grad-cam`` class of this row."""
        import pytorch_grad_cam

        return getattr(pytorch_grad_cam, self.class_name)


def _rows(*methods: CamMethod) -> dict[str, CamMethod]:
    return {m.name: m for m in methods}


CAM_METHODS: dict[str, CamMethod] = _rows(
    CamMethod("gradcam", "GradCAM", True, "Selvaraju et al., Grad-CAM, ICCV 2017"),
    CamMethod("gradcam++", "GradCAMPlusPlus", True, "Chattopadhyay et al., Grad-CAM++, WACV 2018"),
    CamMethod("hirescam", "HiResCAM", True, "Draelos & Carin, HiResCAM, arXiv:2011.08891"),
    CamMethod("scorecam", "ScoreCAM", False, "Wang et al., Score-CAM, CVPRW 2020"),
    CamMethod("eigencam", "EigenCAM", False, "Muhammad & Yeasin, Eigen-CAM, IJCNN 2020"),
    CamMethod("layercam", "LayerCAM", True, "Jiang et al., LayerCAM, IEEE TIP 2021"),
)
DEFAULT_METHOD = "gradcam"  # compute_cams: the standard method at the standard layer
# What explaining images, the gallery, localisation scores and `width --model` use: HiResCAM
# (element-wise gradient x activation, faithful at intermediate layers: Draelos & Carin) at the
# "fine" layers (see fine_layers). It localised best across the sets of
# benchmarks/localisation.py (pavement tiles and photos, masonry, X-rays), two models.
EXPLAIN_METHOD = "hirescam"
EXPLAIN_LAYER = "fine"
SCORECAM_BATCH = 32  # masked copies of the input per forward pass in Score-CAM
RIDGE_SIGMAS = 6.0  # derive_crack_mask: ridge response this many robust SDs above its median

# Gallery groups, in the order the report shows them (file names sort the same way).
GALLERY_GROUPS_BINARY = ("true_positive", "false_positive", "false_negative")
GALLERY_GROUPS_MULTICLASS = ("correct", "mistake")
_GALLERY_FILE = re.compile(
    r"^(?:true_positive|false_positive|false_negative|correct|mistake)_\d+_.*\.png$"
)


# --------------------------------------------------------------------------------------------
# targets and layers


def method_row(method: str) -> CamMethod:
    """The ``CAM_METHODS`` row for ``method`` (case-insensitive), or a ValueError listing them."""
    row = CAM_METHODS.get(str(method).lower())
    if row is None:
        raise ValueError(f"unknown CAM method {method!r}: use one of {', '.join(CAM_METHODS)}")
    return row


def _num_outputs(model: torch.nn.Module) -> int:
    arch = getattr(model, "arch", None)
    if isinstance(arch, dict) and "num_classes" in arch:
        return int(arch["num_classes"])
    head = getattr(model, "head", None)
    out = getattr(head[-1], "out_features", None) if head is not None and len(head) else None
    if out is None:
        raise ValueError("cannot tell how many outputs the model has: give it an `arch` dict")
    return int(out)


class _ClassScore:
    """The score of one class that the CAM explains (see the module docstring).

    ``grad-cam`` calls a target on one sample's output vector; ``index=None`` explains the
    predicted class of that sample.
    """

    def __init__(self, index: int | None, n_out: int) -> None:
        self.index = index
        self.n_out = n_out

    def chosen(self, output: torch.Tensor) -> int:
        if self.index is not None:
            return self.index
        if self.n_out == 1:
            return int(output[0] > 0)
        return int(output.argmax())

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        c = self.chosen(output)
        if self.n_out == 1:
            return output[0] if c == 1 else -output[0]
        if self.n_out == 2:
            return output[c] - output[1 - c]
        return output[c]


def resolve_target(
    target: int | str | None,
    *,
    classes: Sequence[str] | None = None,
    positive: str | None = None,
    n_out: int = 2,
) -> int | None:
    """The class index a heat map explains, or None for "the predicted class" (multi-class).

    Args:
        target: a class index, a class name (needs ``classes``), or None for the default: the
            positive class of a binary model (``positive``, else index 1, the class a
            single-logit head scores) and the predicted class of a multi-class model.
        classes: class names in output order.
        positive: the positive class name of a binary model.
        n_out: the model's number of outputs (1 for a single-logit head).

    Raises:
        ValueError: an unknown class name or an index out of range; the message lists the
            classes.
    """
    n_classes = len(classes) if classes else max(n_out, 2)
    names = list(classes) if classes else [str(i) for i in range(n_classes)]
    if target is None:
        if n_classes != 2:
            return None
        return names.index(positive) if positive in names else 1
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in names:
            raise ValueError(f"unknown target class {target!r}: use one of {', '.join(names)}")
        return names.index(target)
    index = int(target)
    if not 0 <= index < n_classes:
        raise ValueError(
            f"target class index {index} is out of range: the model has {n_classes} classes "
            f"({', '.join(names)})"
        )
    return index


def layer_choices(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Short layer names a user may give: ``cam`` (the default CAM layer) and ``block0..``.

    Any dotted module name of ``model.named_modules()`` is accepted too.
    """
    choices: dict[str, Any] = {}
    if hasattr(model, "cam_layer"):
        choices["cam"] = model.cam_layer()
    if hasattr(model, "blocks"):
        for i, block in enumerate(model.blocks()):
            choices[f"block{i}"] = block
    return choices


def _find_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    choices = layer_choices(model)
    if name in choices:
        return choices[name]
    try:
        return model.get_submodule(name)
    except AttributeError:
        top = [n for n, _ in model.named_children()]
        raise ValueError(
            f"unknown layer {name!r}: use one of {', '.join(choices) or '(none)'} (CAM layers "
            f"also 'fine'), or a dotted module name such as {', '.join(top[:3])}... (see "
            "model.named_modules())"
        ) from None


def layer_name(model: torch.nn.Module, layer: torch.nn.Module) -> str:
    """The short name (``cam``, ``blockN``) or dotted module name of a layer of ``model``."""
    for name, module in layer_choices(model).items():
        if module is layer and name != "cam":
            return name
    for name, module in model.named_modules():
        if module is layer:
            return name
    return type(layer).__name__


_FINE: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()
_PROBE_PX = 128  # input size of the forward pass that measures each block's stride


def fine_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``fine`` CAM layers: the last trunk block at stride 16 and the block after it.

    Thin cracks and fracture lines are a few pixels wide: at the last stage (stride 32, a 7x7
    map at 224 px) a heat map can only name a 32 px cell. The last stride-16 stage still
    carries class-specific features at twice the resolution (14x14), and fusing it with the
    next stage (maps scaled to [0, 1] and averaged, as LayerCAM fuses layers: Jiang et al.,
    IEEE TIP 2021) keeps the deeper stage's confidence. Strides are measured once per model by
    a forward pass at 128 px through ``model.blocks()``; a model without a stride-16 block
    (LeNet, a generic timm trunk) falls back to ``cam_layer()``. Measured in
    ``benchmarks/localisation.py``.
    """
    import torch

    blocks = model.blocks() if hasattr(model, "blocks") else []
    if model not in _FINE:
        chosen: list[int] = []
        if len(blocks) > 1:
            in_chans = int(getattr(model, "arch", {}).get("in_chans", 3))
            x = torch.zeros(1, in_chans, _PROBE_PX, _PROBE_PX)
            x = x.to(next(model.parameters()).device)
            sizes = []
            with _model_lock(model), torch.no_grad():
                was_training = model.training
                model.eval()
                try:
                    for block in blocks:
                        x = block(x)
                        sizes.append(int(x.shape[-1]) if x.ndim == 4 else 0)
                finally:
                    model.train(was_training)
            at16 = [i for i, s in enumerate(sizes) if s >= _PROBE_PX // 16]
            if at16 and at16[-1] < len(blocks) - 1:
                chosen = [at16[-1], at16[-1] + 1]
        _FINE[model] = chosen
    idx = _FINE[model]
    if not idx:
        return [model.cam_layer()]
    return [blocks[i] for i in idx]


def resolve_layers(
    model: torch.nn.Module, layer: Any = None
) -> tuple[list[torch.nn.Module], list[str]]:
    """Target modules and their names for ``layer`` (see the module docstring)."""
    if layer is None:
        if not hasattr(model, "cam_layer"):
            raise ValueError("the model has no cam_layer(): name the target layer (layer=...)")
        modules = [model.cam_layer()]
    else:
        items = layer if isinstance(layer, list | tuple) else [layer]
        if not items:
            raise ValueError("layer=[] names no layer")
        modules = []
        for item in items:
            if item == "fine":
                modules += fine_layers(model)
            else:
                modules.append(_find_layer(model, item) if isinstance(item, str) else item)
    return modules, [layer_name(model, m) for m in modules]


# --------------------------------------------------------------------------------------------
# computing heat maps

_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: Any) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


class _CutMissed(Exception):
    """A target layer ran outside the gradient path started at the first one (see _cam_mode)."""


@contextlib.contextmanager
def _cam_mode(model: torch.nn.Module, layers: list[torch.nn.Module], cut: bool):
    """Eval mode, no parameter gradients, gradients starting at a target layer; all undone.

    With every parameter frozen and an input that needs no gradient, nothing upstream of the
    target layers is differentiated: a forward hook turns the output of the first target layer
    to run in each forward pass into a fresh leaf that requires a gradient, so back-propagation
    stops there (and never fills ``.grad``), and its activations upstream are freed. A later
    target layer that is not downstream of that leaf (a parallel branch) raises ``_CutMissed``;
    the caller then runs again with ``cut=False`` and an input that requires a gradient.
    """
    import torch

    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    handles = []
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        if cut:
            state = {"cut": False}

            def reset(module: Any, args: Any) -> None:
                state["cut"] = False

            def leaf(module: Any, args: Any, output: Any) -> Any:
                if not isinstance(output, torch.Tensor):
                    raise _CutMissed
                if not state["cut"]:
                    state["cut"] = True
                    return output.detach().requires_grad_(True)
                if not output.requires_grad:
                    raise _CutMissed
                return None

            handles = [model.register_forward_pre_hook(reset)]
            handles += [layer.register_forward_hook(leaf) for layer in dict.fromkeys(layers)]
        yield
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def compute_cams(
    model: torch.nn.Module,
    batch: torch.Tensor,
    *,
    method: str = DEFAULT_METHOD,
    target: int | str | None = None,
    layer: Any = None,
    classes: Sequence[str] | None = None,
    positive: str | None = None,
) -> np.ndarray:
    """Class-activation heat maps of a preprocessed batch.

    Args:
        model: a ``FractureNet`` (or any classifier whose target ``layer`` is given).
        batch: ``(N, C, H, W)`` preprocessed images (``Predictor.preprocess``).
        method: a ``CAM_METHODS`` name.
        target: class index or name to explain (see ``resolve_target``); default: the positive
            class of a binary model, the predicted class of a multi-class model.
        layer: target layer(s) (see the module docstring); default ``model.cam_layer()``.
        classes: class names in output order (to name ``target`` and find ``positive``).
        positive: the positive class name of a binary model.

    Returns:
        ``(N, H, W)`` float32 heat maps in [0, 1], each scaled to its own maximum, at the input
        size. A class with no positive evidence anywhere gives an all-zero map.

    Raises:
        ValueError: unknown method, class or layer, or a batch that is not ``(N, C, H, W)``.
    """
    import torch

    row = method_row(method)
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        shape = tuple(batch.shape) if hasattr(batch, "shape") else type(batch).__name__
        raise ValueError(f"batch must be an (N, C, H, W) tensor, got {shape}")
    n_out = _num_outputs(model)
    index = resolve_target(target, classes=classes, positive=positive, n_out=n_out)
    layers, _ = resolve_layers(model, layer)
    targets = [_ClassScore(index, n_out) for _ in range(batch.shape[0])]
    device = next(model.parameters()).device
    x = batch.detach().to(device)
    with _model_lock(model):
        try:
            return _run_cam(row, model, layers, x, targets, cut=row.gradients)
        except _CutMissed:
            x.requires_grad_(True)  # gradients from the input: every layer is on the path
            return _run_cam(row, model, layers, x, targets, cut=False)


def _run_cam(
    row: CamMethod,
    model: torch.nn.Module,
    layers: list[torch.nn.Module],
    x: torch.Tensor,
    targets: list[Any],
    *,
    cut: bool,
) -> np.ndarray:
    cls = row.load()
    with (
        _cam_mode(model, layers, cut),
        cls(model=model, target_layers=layers) as cam,
    ):
        if row.name == "scorecam":
            # Masked copies per forward pass: SCORECAM_BATCH at 224 px, more for small inputs
            # (same memory, far fewer passes).
            pixels = int(x.shape[-1]) * int(x.shape[-2])
            cam.batch_size = int(np.clip(SCORECAM_BATCH * 224 * 224 // pixels, 1, 256))
        try:
            with _quiet_progress(row.name == "scorecam"):
                maps = cam(input_tensor=x, targets=targets)
        except IndexError as exc:
            # The grad-cam context manager swallows IndexError (it prints it instead);
            # re-raise as another type so that the caller sees the failure.
            raise RuntimeError(f"{row.name} failed: {exc}") from exc
        finally:
            cam.outputs = None  # drop the autograd graph kept for retain_graph
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0)
    return np.clip(maps, 0.0, 1.0)


@contextlib.contextmanager
def _quiet_progress(quiet: bool) -> Iterator[None]:
    """Silence the per-image progress bar Score-CAM prints to stderr (tqdm, not switchable)."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def feature_maps(
    model: torch.nn.Module, batch: torch.Tensor, layers: Sequence[str]
) -> dict[str, np.ndarray]:
    """Activations ``(N, C, h, w)`` of named layers for a batch (one forward pass, no grad).

    Raises:
        ValueError: a name is not a layer of the model (the message lists the valid names).
    """
    import torch

    modules = {name: _find_layer(model, name) for name in layers}
    found: dict[str, np.ndarray] = {}
    handles = []

    def keep(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                found[name] = output.detach().float().cpu().numpy()

        return hook

    device = next(model.parameters()).device
    with _model_lock(model):
        was_training = model.training
        try:
            model.eval()
            handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
            with torch.no_grad():
                model(batch.to(device))
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
    missing = [n for n in layers if n not in found]
    if missing:
        raise ValueError(f"layer(s) {', '.join(missing)} give no 2-D feature maps")
    return found


# --------------------------------------------------------------------------------------------
# pictures


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A heat map resized (bilinear) to ``size = (width, height)``, float32."""
    from PIL import Image

    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape[::-1] == tuple(size):
        return cam
    out = Image.fromarray(cam, mode="F").resize(tuple(size), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _as_rgb_array(image: Any) -> np.ndarray:
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
    rgb = _as_rgb_array(image)
    heat = colorize(resize_map(cam, (rgb.shape[1], rgb.shape[0])), colormap)
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def _save_figure(fig: Any, path: Path) -> Path:
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

    rgb = _as_rgb_array(image)
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
    return _save_figure(fig, Path(path))


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
        axes[0].imshow(_as_rgb_array(image))
        axes[0].set_title("image", fontsize=7)
        axes = axes[1:]
    for ax, ch in zip(axes, order, strict=False):
        m = maps[ch]
        lo, hi = float(m.min()), float(m.max())
        ax.imshow((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m), cmap="viridis")
        ax.set_title(f"channel {int(ch)}", fontsize=7)
    fig.suptitle(f"{title}\n{maps.shape[0]} channels, {maps.shape[1]}x{maps.shape[2]}", fontsize=9)
    return _save_figure(fig, Path(path))


# --------------------------------------------------------------------------------------------
# explaining files through a Predictor


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
        layer_grids: ``{layer name: PNG}`` feature-map grids (``layers=``).
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


def _torch_model(predictor: Any) -> Any:
    model = getattr(predictor, "model", None)
    if model is None:
        raise ValueError(
            f"{getattr(predictor, 'source', 'this model')}: heat maps need the PyTorch "
            "checkpoint (model.pt); an ONNX model has no gradients to follow"
        )
    return model


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


def _class_names(predictor: Any, index: int | None) -> str | None:
    return None if index is None else list(predictor.classes)[index]


def explain_images(
    predictor: Any,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    method: str = EXPLAIN_METHOD,
    target: int | str | None = None,
    layers: Sequence[str] | None = None,
    layer: Any = EXPLAIN_LAYER,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[ExplainResult]:
    """Heat maps, overlays and (optionally) feature-map grids for image files.

    Per image ``<stem>`` it writes into ``out``: ``<stem>_cam.png`` (image, overlay, colour bar,
    predicted class and probability in the title), ``<stem>_overlay.png`` (the overlay alone,
    full size), ``<stem>_cam.npy`` (float32 heat map in [0, 1] at the image's size) and, for
    each name in ``layers``, ``<stem>_layer_<name>.png`` (the layer's most structured channels).
    Preprocessing and the prediction in the title come from ``predictor``.

    Args:
        predictor: a ``fracturekit.predict.Predictor`` with the PyTorch backend.
        paths: image files.
        out: output folder (created).
        method: a ``CAM_METHODS`` name (default ``EXPLAIN_METHOD``).
        target: class name or index to explain (default: see ``compute_cams``).
        layers: intermediate layers whose feature maps to save (``layer_choices`` names or
            dotted module names).
        layer: CAM target layer(s) (default ``EXPLAIN_LAYER``; see ``resolve_layers``).
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
    model = _torch_model(predictor)
    classes = list(predictor.classes)
    index = resolve_target(
        target, classes=classes, positive=predictor.positive, n_out=_num_outputs(model)
    )
    cam_layers, cam_names = resolve_layers(model, layer)
    layers = [str(n) for n in (layers or [])]
    for name in layers:
        _find_layer(model, name)  # fail before any work when a name is wrong
    out = Path(out)
    paths = [Path(p) for p in paths]
    stems = _unique_stems(paths)
    planned = {
        stem: {
            "figure": out / f"{stem}_cam.png",
            "overlay": out / f"{stem}_overlay.png",
            "heatmap": out / f"{stem}_cam.npy",
            **{f"layer:{n}": out / f"{stem}_layer_{_safe(n)}.png" for n in layers},
        }
        for stem in stems
    }
    if not overwrite:
        existing = [str(p) for files in planned.values() for p in files.values() if p.exists()]
        if existing:
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            raise FileExistsError(
                f"{', '.join(existing[:3])}{more} already exist(s): pass overwrite=True "
                "(--overwrite) to replace, or choose another output folder"
            )
    out.mkdir(parents=True, exist_ok=True)

    results: list[ExplainResult] = []
    total = len(paths)
    for start in range(0, total, batch_size):
        chunk = list(range(start, min(start + batch_size, total)))
        images: dict[int, Any] = {}
        for i in chunk:
            try:
                images[i] = read_image(paths[i], channels=predictor.in_chans)
            except (ValueError, OSError) as exc:
                results.append(ExplainResult(str(paths[i]), method=row.name, error=str(exc)))
        good = [i for i in chunk if i in images]
        if good:
            results.extend(
                _explain_batch(
                    predictor,
                    model,
                    [paths[i] for i in good],
                    [images[i] for i in good],
                    [planned[stems[i]] for i in good],
                    row=row,
                    index=index,
                    cam_layers=cam_layers,
                    cam_name="+".join(cam_names),
                    layers=layers,
                )
            )
        if progress is not None:
            progress(min(start + batch_size, total), total)
    order = {str(p): k for k, p in enumerate(paths)}
    results.sort(key=lambda r: order.get(r.path, 0))
    return results


def _explain_batch(
    predictor: Any,
    model: Any,
    paths: list[Path],
    images: list[Any],
    files: list[dict[str, Path]],
    *,
    row: CamMethod,
    index: int | None,
    cam_layers: list[Any],
    cam_name: str,
    layers: list[str],
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
    grids = feature_maps(model, batch, layers) if layers else {}
    results = []
    for k, (path, image, pred, where) in enumerate(
        zip(paths, images, predictions, files, strict=True)
    ):
        explained = _class_names(predictor, index) or pred.label
        heat = resize_map(cams[k], image.size)
        atomic_write(where["heatmap"], lambda tmp, heat=heat: _save_npy(tmp, heat))
        atomic_write(where["overlay"], lambda tmp, im=image, h=heat: _save_png(overlay(im, h), tmp))
        title = (
            f"{path.name}: predicted {pred.label} (p = {pred.confidence:.3f})\n"
            f"{row.name} for class {explained}, layer {cam_name}"
        )
        save_overlay_figure(image, heat, where["figure"], title)
        layer_files = {}
        for name in layers:
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


# --------------------------------------------------------------------------------------------
# the run report's gallery and localisation scores


def _label_index(label: Any, classes: list[str]) -> int:
    if isinstance(label, str) and label in classes:
        return classes.index(label)
    if isinstance(label, int | np.integer) and 0 <= int(label) < len(classes):
        return int(label)
    raise ValueError(f"label {label!r} is not one of the classes {classes}")


def _positive_index(predictor: Any) -> int | None:
    classes = list(predictor.classes)
    if len(classes) != 2:
        return None
    positive = predictor.positive
    return classes.index(positive) if positive in classes else 1


def write_cam_gallery(
    predictor: Any,
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
    model = _torch_model(predictor)
    y = np.array([_label_index(v, classes) for v in labels], dtype=int)
    if probabilities is None:
        rows = []
        for pred in predictor.predict_paths([str(p) for p in paths], batch_size):
            if pred.error is not None:
                rows.append(np.full(len(classes), np.nan))
            else:
                rows.append(np.array([pred.probabilities[c] for c in classes]))
        proba = np.stack(rows) if rows else np.zeros((0, len(classes)))
    else:
        proba = np.asarray(probabilities, dtype=np.float64)
        if proba.shape != (len(paths), len(classes)):
            raise ValueError(
                f"probabilities must be {(len(paths), len(classes))}, got {proba.shape}"
            )
    ok = np.isfinite(proba).all(axis=1)

    pos = _positive_index(predictor)
    groups: dict[str, list[int]] = {}
    if pos is not None:
        p = proba[:, pos] if len(proba) else np.zeros(0)
        if threshold is None:
            threshold = predictor.threshold if predictor.threshold is not None else 0.5
        pred_pos = p >= threshold
        is_pos = y == pos
        order_high = np.argsort(-np.nan_to_num(p, nan=-1.0), kind="stable")
        order_low = np.argsort(np.nan_to_num(p, nan=2.0), kind="stable")
        groups["true_positive"] = [i for i in order_high if ok[i] and is_pos[i] and pred_pos[i]]
        groups["false_positive"] = [
            i for i in order_high if ok[i] and not is_pos[i] and pred_pos[i]
        ]
        groups["false_negative"] = [i for i in order_low if ok[i] and is_pos[i] and not pred_pos[i]]
        target: int | None = pos
    else:
        pred = np.nan_to_num(proba, nan=-1.0).argmax(axis=1) if len(proba) else np.zeros(0, int)
        conf = np.nan_to_num(proba.max(axis=1), nan=-1.0) if len(proba) else np.zeros(0)
        order = np.argsort(-conf, kind="stable")
        groups["correct"] = [i for i in order if ok[i] and pred[i] == y[i]]
        groups["mistake"] = [i for i in order if ok[i] and pred[i] != y[i]]
        target = None

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
            target=target,
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


def evaluate_localisation(
    predictor: Any,
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
    model = _torch_model(predictor)
    classes = list(predictor.classes)
    pos = _positive_index(predictor)
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


# --------------------------------------------------------------------------------------------
# a crack mask from an image alone (``fracturekit width --model``)


@dataclass
class DerivedMask:
    """A crack mask derived from an image and a checkpoint's heat map.

    Attributes:
        mask: ``(H, W)`` bool crack mask.
        cam: ``(H, W)`` float32 heat map in [0, 1] at the image's size (positive class).
        region: ``(H, W)`` bool where the heat map allowed cracks to be looked for.
        centre_lines: ``(H, W)`` bool ridge centre lines the mask was grown from.
    """

    mask: np.ndarray
    cam: np.ndarray
    region: np.ndarray
    centre_lines: np.ndarray


def image_cam(
    predictor: Any, image: Any, *, method: str = EXPLAIN_METHOD, layer: Any = EXPLAIN_LAYER
) -> np.ndarray:
    """The heat map of one PIL image at the image's size (float32 in [0, 1]).

    It explains the positive class of a binary model (the predicted class otherwise).
    """
    import torch

    batch = torch.stack([predictor.preprocess(image)])
    cam = compute_cams(
        _torch_model(predictor),
        batch,
        method=method,
        target=_positive_index(predictor),
        layer=layer,
        classes=predictor.classes,
        positive=predictor.positive,
    )[0]
    return np.clip(resize_map(cam, image.size), 0.0, 1.0).astype(np.float32)


def derive_crack_mask(
    predictor: Any,
    image: Any,
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


# --------------------------------------------------------------------------------------------
# attention along the crack against its width (seed 1's figure 13)


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def attention_along_crack(cam: np.ndarray, measurement: Any) -> dict[str, Any]:
    """The heat map sampled along one measured crack's skeleton, against its width profile.

    Args:
        cam: ``(H, W)`` heat map at the mask's size.
        measurement: a ``fracturekit.width.CrackMeasurement`` (``skeleton_rc``, ``widths_px``,
            ``segment``, ``s_px``).

    Returns:
        ``{"crack", "n", "pearson", "spearman", "attention", "width", "order"}``: the
        correlations (scipy.stats; None with fewer than 3 points or a constant series) of the
        heat map (bilinear at each skeleton point) with the width there, both series
        normalised to [0, 1] (min-max; correlations do not change), ``order`` sorting points
        by chain and arc length.
    """
    from scipy import ndimage as ndi
    from scipy import stats

    rc = np.asarray(measurement.skeleton_rc, dtype=np.float64).reshape(-1, 2)
    widths = np.asarray(measurement.widths_px, dtype=np.float64)
    attention = ndi.map_coordinates(np.asarray(cam, np.float64), rc.T, order=1, mode="nearest")
    ok = np.isfinite(widths) & np.isfinite(attention)
    a, w = attention[ok], widths[ok]
    pearson = spearman = None
    if a.size >= 3 and np.ptp(a) > 0 and np.ptp(w) > 0:
        pearson = float(stats.pearsonr(a, w)[0])
        spearman = float(stats.spearmanr(a, w)[0])
    order = np.lexsort((np.asarray(measurement.s_px)[ok], np.asarray(measurement.segment)[ok]))
    return {
        "crack": int(measurement.crack),
        "n": int(a.size),
        "pearson": pearson,
        "spearman": spearman,
        "attention": _minmax(a) if a.size else a,
        "width": _minmax(w) if w.size else w,
        "order": order,
    }


def attention_width_figure(
    rows: Sequence[dict[str, Any]], path: str | Path, title: str, *, image: Any = None
) -> Path:
    """The normalised heat map and width along each crack, and their scatter, as a PNG."""
    from matplotlib.figure import Figure

    panels = 2 + (image is not None)
    fig = Figure(figsize=(4.2 * panels, 3.8))
    axes = fig.subplots(1, panels)
    k = 0
    if image is not None:
        axes[0].imshow(_as_rgb_array(image))
        axes[0].set_axis_off()
        axes[0].set_title("image", fontsize=9)
        k = 1
    along, scatter = axes[k], axes[k + 1]
    offset = 0
    for row in rows:
        idx = row["order"]
        x = np.arange(len(idx)) + offset
        along.plot(x, row["width"][idx], color="tab:blue", lw=1)
        along.plot(x, row["attention"][idx], color="tab:red", lw=1)
        scatter.scatter(row["width"], row["attention"], s=4, alpha=0.5)
        offset += len(idx) + 5
    along.set_xlabel("skeleton point (cracks one after another)")
    along.set_ylabel("normalised value")
    along.legend(["width", "heat map"], fontsize=8, loc="upper right")
    scatter.set_xlabel("normalised width")
    scatter.set_ylabel("normalised heat map")
    scatter.set_xlim(-0.05, 1.05)
    scatter.set_ylim(-0.05, 1.05)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, Path(path))


def write_attention_width(
    measurements: dict[str, Sequence[Any]],
    cams: dict[str, np.ndarray],
    out: str | Path,
    *,
    images: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """``attention_<name>.png`` per image and ``attention_width.csv`` (one row per crack).

    Args:
        measurements: ``{name: [CrackMeasurement, ...]}`` (``WidthReport.measurements``).
        cams: ``{name: heat map at the mask's size}``; names without one are skipped.
        out: output folder.
        images: ``{name: image}`` for the figures' first panel.

    Returns:
        ``{name: {"pearson", "spearman", "n"}}`` over all of the image's crack points pooled
        (None where undefined).
    """
    import csv
    import io

    from scipy import stats

    from fracturekit._files import atomic_write_text

    out = Path(out)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "crack", "points", "pearson", "spearman"])
    summary: dict[str, dict[str, Any]] = {}

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.4f}"

    for name, cracks in measurements.items():
        if name not in cams:
            continue
        rows = [attention_along_crack(cams[name], m) for m in cracks]
        for row in rows:
            writer.writerow(
                [name, row["crack"], row["n"], fmt(row["pearson"]), fmt(row["spearman"])]
            )
        a = np.concatenate([r["attention"] for r in rows]) if rows else np.zeros(0)
        w = np.concatenate([r["width"] for r in rows]) if rows else np.zeros(0)
        pooled: dict[str, Any] = {"pearson": None, "spearman": None, "n": int(a.size)}
        if a.size >= 3 and np.ptp(a) > 0 and np.ptp(w) > 0:
            pooled["pearson"] = float(stats.pearsonr(a, w)[0])
            pooled["spearman"] = float(stats.spearmanr(a, w)[0])
        summary[name] = pooled
        if rows:
            title = (
                f"{name}: heat map vs width along the cracks; Pearson {fmt(pooled['pearson'])}, "
                f"Spearman {fmt(pooled['spearman'])}"
            )
            image = None if images is None else images.get(name)
            attention_width_figure(rows, out / f"attention_{name}.png", title, image=image)
    atomic_write_text(out / "attention_width.csv", buf.getvalue())
    return summary
