"""Typed configuration: declared once, overridable by flags, saved with every run as YAML.

A run's configuration is one flat dataclass so that every field is also a CLI flag
(``--img-size`` sets ``img_size``), a key of ``--config FILE.yaml``, and a line of the run's
``config.yaml``. Precedence: defaults < config file < explicit flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from fracturekit._files import atomic_write_text

FREEZE_POLICIES = ("none", "all-but-head", "train-last")
OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("cosine", "step", "none")
AUGMENTS = ("none", "default", "strong")
PRECISIONS = ("fp32", "bf16", "fp16")
LAYOUTS = ("auto", "folders", "split-folders", "csv", "labelling-export")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message says which and why."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Field names are the CLI flags with ``_`` for ``-``."""

    # data
    data: str = ""
    val: str | None = None
    test: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    layout: str = "auto"
    image_column: str | None = None
    label_column: str | None = None
    label_key: str | None = None
    positive: str | None = None
    strict: bool = False
    img_size: int | None = None  # None: the backbone's default
    channels: int = 3
    augment: str = "default"
    balance: str = "none"  # none | weights | sampler | undersample:R
    workers: int = 0
    # model
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    pretrained: bool = True  # only the embedded backbone (or --weights) can honour it offline
    hidden: list[int] = field(default_factory=list)
    dropout: float = 0.2
    freeze: str = "all-but-head"
    train_last: int | None = None
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    early_stop: int | None = 5
    label_smoothing: float = 0.0
    cache_features: bool = True  # frozen backbone + no augmentation: train the head on cached features
    channels_last: bool = True
    precision: str = "fp32"
    # decision
    threshold_metric: str = "f1"
    target_recall: float | None = None
    calibrate: bool = True
    # run
    seed: int = 0
    device: str = "auto"
    resume: str | None = None
    max_train_batches: int | None = None  # for smoke tests: stop each epoch early
    note: str = ""

    def validate(self) -> TrainConfig:
        """Check enumerated and numeric fields; raise ConfigError naming the bad field."""
        checks = {
            "freeze": FREEZE_POLICIES,
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "augment": AUGMENTS,
            "precision": PRECISIONS,
            "layout": LAYOUTS,
        }
        for name, allowed in checks.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if self.balance not in ("none", "weights", "sampler") and not self.balance.startswith(
            "undersample:"
        ):
            raise ConfigError(
                f"balance={self.balance!r}: use none, weights, sampler or undersample:R"
            )
        if self.balance.startswith("undersample:"):
            try:
                ratio = float(self.balance.split(":", 1)[1])
            except ValueError:
                ratio = -1
            if ratio < 1:
                raise ConfigError(f"balance={self.balance!r}: R must be a number >= 1")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels={self.channels}: must be 1 or 3")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ConfigError("val_fraction and test_fraction must lie in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr}: must be > 0")
        if self.train_last is not None and self.train_last < 0:
            raise ConfigError("train_last must be >= 0")
        if self.target_recall is not None and not 0 < self.target_recall <= 1:
            raise ConfigError("target_recall must lie in (0, 1]")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        return cls().updated(values, source=source)

    def updated(self, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """A copy with ``values`` applied; unknown keys are an error naming ``source``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **values)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def save_yaml(values: dict[str, Any], path: str | Path) -> None:
    """Write a mapping as YAML atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(values, sort_keys=False))


def resolve_config(
    flags: dict[str, Any], config_file: str | Path | None = None, base: TrainConfig | None = None
) -> TrainConfig:
    """Defaults < config file < flags (only flags the user actually gave, i.e. not None)."""
    cfg = base or TrainConfig()
    if config_file is not None:
        cfg = cfg.updated(load_yaml(config_file), source=str(config_file))
    given = {k: v for k, v in flags.items() if v is not None}
    return cfg.updated(given, source="command line").validate()
