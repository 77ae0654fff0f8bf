"""Backbones, the fracture model, the segmenter and its losses, freezing and checkpoints.

``BACKBONES``, ``BackboneSpec`` and ``data_config`` are plain Python and import instantly (the
CLI lists backbones in ``--help``); everything that needs torch or timm loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from fracturekit.models._table import (
    BACKBONES,
    DEFAULT_BACKBONE,
    BackboneSpec,
    UnknownBackboneError,
    data_config,
    get_spec,
)

# Where each lazily imported name lives, declared once: ``__getattr__`` imports the module on
# first use and ``__all__`` lists the names.
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
    "_views": ("INVERSE_VIEWS", "VIEW_OPS", "view_logits", "view_maps"),
    "_weights": (
        "EMBEDDED_FILES",
        "EMBEDDED_LITE0_SOURCE",
        "WeightsError",
        "embedded_available",
        "embedded_lite0_path",
        "load_embedded_lite0",
    ),
    "_segment": (
        "DECODERS",
        "DEFAULT_DECODER",
        "Segmenter",
        "SegmenterError",
        "SegmenterMean",
        "build_segmenter",
        "freeze_encoder",
        "load_segmenter",
        "save_segmenter",
        "segment_meta",
        "segmenter_from_meta",
    ),
    "_seg_losses": (
        "DEFAULT_SEG_LOSS",
        "SEG_LOSSES",
        "SegLoss",
        "build_seg_loss",
        "pos_weight_for",
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
    *_WHERE,
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
