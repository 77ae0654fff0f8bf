"""Backbones, the fracture model, freezing and checkpoints.

``BACKBONES``, ``BackboneSpec`` and ``data_config`` are plain Python and import instantly (the
CLI lists backbones in ``--help``); everything that needs torch or timm loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fracturekit.models._table import (
    BACKBONES,
    DEFAULT_BACKBONE,
    BackboneSpec,
    UnknownBackboneError,
    data_config,
    get_spec,
)

if TYPE_CHECKING:  # pragma: no cover
    from fracturekit.models._checkpoint import (
        FORMAT_VERSION,
        META_KEYS,
        CheckpointError,
        build_meta,
        load_checkpoint,
        read_checkpoint,
        save_checkpoint,
    )
    from fracturekit.models._net import (
        FREEZE_POLICIES,
        FractureNet,
        PretrainedUnavailableWarning,
        apply_freeze,
        build_head,
        build_model,
        logits_to_proba,
        set_train_mode,
    )
    from fracturekit.models._views import VIEW_OPS, view_logits
    from fracturekit.models._weights import (
        EMBEDDED_LITE0_SOURCE,
        WeightsError,
        embedded_lite0_path,
        load_embedded_lite0,
    )

_LAZY = {
    "_net": (
        "FREEZE_POLICIES",
        "FractureNet",
        "PretrainedUnavailableWarning",
        "apply_freeze",
        "build_head",
        "build_model",
        "logits_to_proba",
        "set_train_mode",
    ),
    "_checkpoint": (
        "FORMAT_VERSION",
        "META_KEYS",
        "CheckpointError",
        "build_meta",
        "load_checkpoint",
        "read_checkpoint",
        "save_checkpoint",
    ),
    "_views": ("VIEW_OPS", "view_logits"),
    "_weights": (
        "EMBEDDED_LITE0_SOURCE",
        "WeightsError",
        "embedded_lite0_path",
        "load_embedded_lite0",
    ),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "UnknownBackboneError",
    "data_config",
    "get_spec",
    "FREEZE_POLICIES",
    "FractureNet",
    "PretrainedUnavailableWarning",
    "apply_freeze",
    "build_head",
    "build_model",
    "logits_to_proba",
    "set_train_mode",
    "FORMAT_VERSION",
    "META_KEYS",
    "CheckpointError",
    "build_meta",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "VIEW_OPS",
    "view_logits",
    "EMBEDDED_LITE0_SOURCE",
    "WeightsError",
    "embedded_lite0_path",
    "load_embedded_lite0",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'fracturekit.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fracturekit.models.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
