"""Self-describing checkpoints: the model's weights plus everything needed to use it.

File layout (a plain dict, loadable with ``torch.load(weights_only=True)``)::

    {"format": "fracturekit-checkpoint", "format_version": 1,
     "meta": {...plain Python values...}, "state_dict": {name: tensor}}

One layout for every task: ``meta["task"]`` says what the weights are (absent or
``"classify"``: a ``FractureNet`` classifier; ``"segment"``: a ``Segmenter`` with its
``decoder``, pixel ``threshold`` and ``min_area``), and ``save_checkpoint``/``load_checkpoint``
dispatch on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from fracturekit._files import atomic_write
from fracturekit.config import CACHE_VIEWS, MAX_MEMBERS
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
# Bounds that keep a malformed file from allocating absurd models: far above any real use.
IMG_SIZE_RANGE = (8, 4096)
MAX_HIDDEN_WIDTH = 16384
MAX_HIDDEN_LAYERS = 16
MAX_CLASSES = 100_000


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


def checkpoint_payload(model: Any, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checkpoint dict of ``model``: its completed meta (``build_meta`` for a classifier,
    ``segment_meta`` for a segmenter) and a CPU copy of its state dict."""
    from fracturekit.models._segment import AnySegmenter, segment_meta

    complete = segment_meta if isinstance(model, AnySegmenter) else build_meta
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": complete(model, meta),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def save_checkpoint(path: str | Path, model: Any, meta: Mapping[str, Any] | None) -> Path:
    """Write ``model`` (a classifier or a segmenter) and its completed ``meta`` (see
    ``build_meta`` / ``segment_meta``) to ``path`` atomically.

    Only tensors and plain Python values are stored, so ``torch.load(weights_only=True)``
    reads it. Returns the path.
    """
    payload = checkpoint_payload(model, meta)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _reals(meta: dict, key: str, positive: bool) -> str | None:
    value, n = meta[key], meta["in_chans"]
    if not isinstance(value, list | tuple) or len(value) != n or not all(map(_real, value)):
        return f"must be a list of {n} finite number(s) (one per input channel)"
    if positive and not all(v > 0 for v in value):
        return "must be positive"
    return None


def _classes(meta: dict) -> str | None:
    value = meta["classes"]
    if not isinstance(value, list | tuple) or not all(isinstance(c, str) and c for c in value):
        return "must be a list of class names"
    if len(set(value)) != len(value):
        return "has duplicate names"
    n_out = meta["num_classes"]
    if len(value) != max(n_out, 2):
        return f"has {len(value)} name(s) for a head with {n_out} output(s)"
    return None


def _hidden(meta: dict) -> str | None:
    value = meta["hidden"]
    if not isinstance(value, list | tuple) or len(value) > MAX_HIDDEN_LAYERS:
        return f"must be a list of at most {MAX_HIDDEN_LAYERS} layer widths"
    if not all(_count(v, 1, MAX_HIDDEN_WIDTH) for v in value):
        return f"widths must be whole numbers in 1..{MAX_HIDDEN_WIDTH}"
    return None


def _segment_rule(meta: dict, key: str) -> str | None:
    """``task``, and for a segmenter its ``decoder``, ``min_area`` and ``members``."""
    from fracturekit.models._segment import DECODERS, TASK

    task = meta.get("task")
    if task not in (None, "classify", TASK):
        return f"must be null, 'classify' or {TASK!r}"
    if task != TASK:
        return None if meta.get("members") in (None, 1) else "must be 'segment' to hold members"
    if meta.get("decoder") not in DECODERS:
        return f"a segmenter needs decoder in {', '.join(DECODERS)} (got {meta.get('decoder')!r})"
    if meta.get("threshold") is None:
        return "a segmenter needs a pixel threshold"
    if not _count(meta.get("min_area", 0), 0, 2**62):
        return f"a segmenter needs min_area >= 0 (got {_short(meta.get('min_area'))})"
    if not _count(meta.get("members", 1), 1, MAX_MEMBERS):
        return f"members must be a whole number in 1..{MAX_MEMBERS} (got {_short(meta['members'])})"
    return None


def _optional(check: Callable[[Any], bool]) -> Callable[[dict, str], bool]:
    return lambda meta, key: meta.get(key) is None or check(meta[key])


_Check = Callable[[dict, str], "str | None"]


def _rule(test: Callable[[dict, str], bool], need: str) -> _Check:
    return lambda meta, key: None if test(meta, key) else f"must be {need}"


# key -> (required, check): checked in this order, so later rows may rely on earlier keys.
# A check returns None when the value is fine, else what the value must be.
_META_RULES: dict[str, tuple[bool, _Check]] = {
    "backbone": (True, _rule(lambda m, k: isinstance(m[k], str) and m[k] != "", "a name")),
    "num_classes": (
        True,
        _rule(lambda m, k: _count(m[k], 1, MAX_CLASSES), f"a whole number in 1..{MAX_CLASSES}"),
    ),
    "in_chans": (True, _rule(lambda m, k: _count(m[k], 1, 1) or _count(m[k], 3, 3), "1 or 3")),
    "classes": (True, lambda m, k: _classes(m)),
    "img_size": (
        True,
        _rule(
            lambda m, k: _count(m[k], *IMG_SIZE_RANGE),
            "a whole number in {}..{}".format(*IMG_SIZE_RANGE),
        ),
    ),
    "mean": (True, lambda m, k: _reals(m, k, positive=False)),
    "std": (True, lambda m, k: _reals(m, k, positive=True)),
    "hidden": (True, lambda m, k: _hidden(m)),
    "dropout": (True, _rule(lambda m, k: _real(m[k]) and 0 <= m[k] < 1, "a number in [0, 1)")),
    "interpolation": (False, _rule(_optional(lambda v: isinstance(v, str)), "a name")),
    "threshold": (
        False,
        _rule(_optional(lambda v: _real(v) and 0 <= v <= 1), "null or a number in [0, 1]"),
    ),
    "temperature": (False, _rule(_optional(lambda v: _real(v) and v > 0), "a positive number")),
    "tta": (
        False,
        _rule(
            _optional(lambda v: _count(v, 1, max(CACHE_VIEWS)) and v in CACHE_VIEWS),
            f"one of {', '.join(map(str, CACHE_VIEWS))}",
        ),
    ),
    "positive": (
        False,
        _rule(lambda m, k: m.get(k) is None or m[k] in m["classes"], "null or one of classes"),
    ),
    "pretrained": (False, _rule(_optional(lambda v: isinstance(v, str)), "null or a source")),
    "config": (False, _rule(_optional(lambda v: isinstance(v, dict)), "a mapping")),
    "metrics": (False, _rule(_optional(lambda v: isinstance(v, dict)), "a mapping")),
    "versions": (False, _rule(_optional(lambda v: isinstance(v, dict)), "a mapping")),
    "task": (False, _segment_rule),
}


def _short(value: Any, limit: int = 60) -> str:
    text = (
        repr(value)
        if not isinstance(value, list | tuple) or len(value) <= 16
        else (f"<{type(value).__name__} of {len(value)}>")
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_meta(path: str | Path, meta: Any) -> None:
    """Refuse checkpoint ``meta`` whose types or sizes are unusable, before anything is built.

    Raises:
        CheckpointError: naming ``path``, the key and what its value must be.
    """
    if not isinstance(meta, dict):
        raise CheckpointError(path, "checkpoint lacks its meta")
    missing = [k for k, (required, _) in _META_RULES.items() if required and k not in meta]
    if missing:
        raise CheckpointError(path, f"checkpoint meta lacks {', '.join(missing)}")
    for key, (_, check) in _META_RULES.items():
        problem = check(meta, key)
        if problem is not None:
            raise CheckpointError(path, f"checkpoint meta {key}={_short(meta.get(key))}: {problem}")


def _check_state(path: Path, state: Any) -> None:
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(path, "checkpoint lacks its state_dict")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                path, f"checkpoint state_dict entry {_short(name)} is not a named tensor"
            )


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict, validated (format marker, version, meta, state dict).

    Every meta value is checked for type and size (see ``check_meta``) before anything is
    built from it, so a damaged or hostile file is refused instead of allocating a huge model.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a fracturekit checkpoint, damaged, malformed meta, or from a
            newer format.
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
    check_meta(path, obj.get("meta"))
    _check_state(path, obj.get("state_dict"))
    return obj


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, dict]:
    """Rebuild the model from a checkpoint: random init (never a download), then its weights.

    Returns:
        ``(model in eval mode, meta dict)``: a ``FractureNet``, or a ``Segmenter`` when
        ``meta["task"] == "segment"``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a fracturekit checkpoint, a newer format, malformed meta, an
            unknown backbone, or weights that do not fit the recorded architecture.
    """
    obj = read_checkpoint(path, map_location)
    meta = obj["meta"]
    try:
        model = _rebuild(meta)
    except ValueError as exc:  # an unknown backbone, or one that refuses these settings
        raise CheckpointError(path, f"cannot rebuild the model: {exc}") from exc
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            path, f"weights do not fit backbone {meta['backbone']!r}: {exc}"
        ) from exc
    model.pretrained = meta.get("pretrained")
    model.to(map_location)
    return model.eval(), meta


def _rebuild(meta: dict) -> Any:
    """The checkpoint's architecture, randomly initialised."""
    if meta.get("task") == "segment":
        from fracturekit.models._segment import segmenter_from_meta

        return segmenter_from_meta(meta)
    return build_model(
        meta["backbone"],
        meta["num_classes"],
        in_chans=meta["in_chans"],
        pretrained=False,
        weights=None,
        hidden=meta["hidden"],
        dropout=meta["dropout"],
    )
