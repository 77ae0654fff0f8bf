"""Class-activation heat maps: the ``CAM_METHODS`` table, targets, target layers, computing.

``CAM_METHODS`` is the table of methods (one row a method of the ``grad-cam`` package);
``compute_cams`` runs one of them on a batch and returns heat maps in [0, 1] at the input size.

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
the ``fine`` layers), which localised cracks best in ``benchmarks/localisation.py`` (its
figures are in the README).

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
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fracturekit.contracts import EXPLAIN_LAYER, EXPLAIN_METHOD
from fracturekit.explain._predictor import PredictorLike, torch_model
from fracturekit.render import resize_map

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
# compute_cams alone, with no method or layer named, is the classic Grad-CAM at the model's
# last stage (the textbook set-up). Every command uses contracts.EXPLAIN_METHOD at
# contracts.EXPLAIN_LAYER instead (re-exported here).
CLASSIC_METHOD = "gradcam"
DEFAULT_METHOD = CLASSIC_METHOD  # the name of earlier releases
SCORECAM_BATCH = 32  # masked copies of the input per forward pass in Score-CAM


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
    method: str = CLASSIC_METHOD,
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


def image_cam(
    predictor: PredictorLike,
    image: Image.Image,
    *,
    method: str = EXPLAIN_METHOD,
    layer: Any = EXPLAIN_LAYER,
) -> np.ndarray:
    """The heat map of one PIL image at the image's size (float32 in [0, 1]).

    It explains ``predictor.positive_index`` (a binary model's positive class), the predicted
    class of any other model.
    """
    import torch

    batch = torch.stack([predictor.preprocess(image)])
    cam = compute_cams(
        torch_model(predictor),
        batch,
        method=method,
        target=predictor.positive_index,
        layer=layer,
        classes=predictor.classes,
    )[0]
    return np.clip(resize_map(cam, image.size), 0.0, 1.0).astype(np.float32)
