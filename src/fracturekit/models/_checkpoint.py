"""Self-describing checkpoints: the model's weights plus everything needed to use it.

File layout (a plain dict, loadable with ``torch.load(weights_only=True)``)::

    {"format": "fracturekit-checkpoint", "format_version": 1,
     "meta": {...plain Python values...}, "state_dict": {name: tensor}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fracturekit._files import atomic_write
from fracturekit.models._net import FractureNet, build_model
from fracturekit.models._table import data_config
from fracturekit.models._weights import CHECKPOINT_FORMAT

FORMAT_VERSION = 1
META_KEYS = (
    "backbone",
    "classes",
    "num_classes",
    "in_chans",
    "img_size",
    "mean",
    "std",
    "interpolation",
    "threshold",
    "temperature",
    "tta",
    "positive",
    "hidden",
    "dropout",
    "pretrained",
    "config",
    "metrics",
    "versions",
)
_ARCH_KEYS = ("backbone", "num_classes", "in_chans", "hidden", "dropout")


class CheckpointError(ValueError):
    """A file is not a usable fracturekit checkpoint; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _plain(value: Any, where: str) -> Any:
    """Convert to types ``torch.load(weights_only=True)`` accepts; refuse anything else."""
    # Exact builtin types: subclasses (torch's TorchVersion str, numpy.float64) would be pickled
    # as their own class, which weights_only loading refuses.
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy/torch scalars
        return _plain(value.item(), where)
    if hasattr(value, "tolist"):  # small numpy arrays
        return _plain(value.tolist(), where)
    raise TypeError(f"checkpoint meta {where} has type {type(value).__name__}: not storable")


def _versions() -> dict[str, str]:
    import timm

    import fracturekit

    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "fracturekit": fracturekit.__version__,
    }


def build_meta(model: FractureNet, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Complete ``meta`` with the model's architecture and defaults for missing keys.

    Architecture keys (backbone, num_classes, in_chans, hidden, dropout) come from the model;
    a conflicting value in ``meta`` is an error, and ``pretrained`` is always the model's
    recorded source. Missing preprocessing keys come from ``data_config``; ``threshold``
    defaults to 0.5, ``temperature`` to 1.0 and ``classes`` to ``class_0..``.
    """
    meta = dict(meta or {})
    for key in _ARCH_KEYS:
        if key in meta and meta[key] is not None and _plain(meta[key], key) != model.arch[key]:
            raise ValueError(
                f"checkpoint meta {key}={meta[key]!r} contradicts the model ({model.arch[key]!r})"
            )
    n_out = model.arch["num_classes"]
    cfg = data_config(model.arch["backbone"], meta.get("img_size"), in_chans=model.arch["in_chans"])
    out: dict[str, Any] = {
        **{k: v for k, v in cfg.items()},
        "classes": [f"class_{i}" for i in range(max(n_out, 2))],
        "threshold": 0.5,
        "temperature": 1.0,
        "tta": 1,
        "positive": None,
        "config": {},
        "metrics": {},
    }
    out.update({k: v for k, v in meta.items() if v is not None or k not in out})
    out.update(model.arch)
    out["pretrained"] = model.pretrained  # the truth about the trunk, never a caller's claim
    out["versions"] = {**_versions(), **dict(meta.get("versions") or {})}
    classes = list(out["classes"])
    if len(classes) != max(n_out, 2) or (n_out == 1 and len(classes) != 2):
        raise ValueError(
            f"checkpoint meta classes {classes} do not fit a head with {n_out} output(s)"
        )
    for key in ("mean", "std"):
        if len(out[key]) != model.arch["in_chans"]:
            raise ValueError(
                f"checkpoint meta {key} {out[key]} needs {model.arch['in_chans']} value(s)"
            )
    temperature = float(out["temperature"])
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"checkpoint meta temperature must be positive, got {temperature}")
    return _plain(out, "meta")


def save_checkpoint(path: str | Path, model: FractureNet, meta: Mapping[str, Any] | None) -> Path:
    """Write ``model`` and its completed ``meta`` (see ``build_meta``) to ``path`` atomically.

    Only tensors and plain Python values are stored, so ``torch.load(weights_only=True)``
    reads it. Returns the path.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": build_meta(model, meta),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict, validated (format marker, version, meta, state dict).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a fracturekit checkpoint, damaged, or from a newer format.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or truncated files
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            path,
            "not a fracturekit checkpoint (a plain state dict? pass it as weights=/--weights)",
        )
    version = obj.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(path, "checkpoint has no format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"written by a newer fracturekit (format {version}, this version reads up to "
            f"{FORMAT_VERSION}): upgrade fracturekit",
        )
    meta, state = obj.get("meta"), obj.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CheckpointError(path, "checkpoint lacks its meta or state_dict")
    missing = [k for k in _ARCH_KEYS if k not in meta]
    if missing:
        raise CheckpointError(path, f"checkpoint meta lacks {', '.join(missing)}")
    return obj


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[FractureNet, dict]:
    """Rebuild the model from a checkpoint: random init (never a download), then its weights.

    Returns:
        ``(model in eval mode, meta dict)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a fracturekit checkpoint, a newer format, or weights that do not
            fit the recorded architecture.
    """
    obj = read_checkpoint(path, map_location)
    meta = obj["meta"]
    model = build_model(
        meta["backbone"],
        meta["num_classes"],
        in_chans=meta["in_chans"],
        pretrained=False,
        weights=None,
        hidden=meta["hidden"],
        dropout=meta["dropout"],
    )
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            path, f"weights do not fit backbone {meta['backbone']!r}: {exc}"
        ) from exc
    model.pretrained = meta.get("pretrained")
    model.to(map_location)
    return model.eval(), meta
