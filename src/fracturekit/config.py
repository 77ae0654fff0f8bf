"""Typed configuration: declared once, overridable by flags, saved with every run as YAML.

A run's configuration is one flat dataclass so that every field is also a CLI flag
(``--img-size`` sets ``img_size``), a key of ``--config FILE.yaml``, and a line of the run's
``config.yaml``. Precedence: defaults < config file < explicit flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from fracturekit._files import atomic_write_text

FREEZE_POLICIES = ("none", "all-but-head", "train-last")
OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("cosine", "step", "none")
AUGMENTS = ("none", "default", "strong", "flips", "flips_color")
TASKS = ("classify", "segment")
# models.DECODERS and models.SEG_LOSSES keys (a test keeps them equal): flags and checks
# without importing the models.
DECODER_NAMES = ("unet", "unet_small", "fpn")
SEG_LOSS_NAMES = ("bce_dice", "focal_dice", "tversky", "cldice", "bce_dice_image")
PRECISIONS = ("fp32", "bf16", "fp16")
LAYOUTS = ("auto", "folders", "split-folders", "csv", "labelling-export", "masked-images")
THRESHOLD_METRICS = ("f1", "balanced_accuracy", "accuracy")  # calibration.THRESHOLD_METRICS
# Cached views of each training image: 1 as is; 2 + horizontal mirror; 4 + vertical mirror and
# both (a 180-degree turn); 8 the whole dihedral group (adds the four transposed/90-degree ones).
CACHE_VIEWS = (1, 2, 4, 8)
# Segmenters one checkpoint may average (``members``): far above any useful ensemble.
MAX_MEMBERS = 16
# The index of each view's inverse in the views' order (models.VIEW_OPS, predict.NUMPY_VIEWS):
# the turns by 90 and 270 degrees undo each other, every other view undoes itself.
INVERSE_VIEWS = (0, 1, 2, 3, 4, 6, 5, 7)
# The TrainConfig fields that decide how ``data.load_dataset`` reads and splits DATA: training
# passes them (``split_options``), and evaluating a checkpoint on its own training data passes
# the stored ones again, so that the same test split is carved. ``split_seed``, when set, stands
# in for ``seed`` (see ``split_options``).
SPLIT_FIELDS = (
    "layout",
    "val",
    "test",
    "val_fraction",
    "test_fraction",
    "seed",
    "image_column",
    "label_column",
    "label_key",
    "group_column",
)
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message says which and why."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Field names are the CLI flags with ``_`` for ``-``."""

    # task: classify images, or segment them pixel by pixel (masks/ beside the images)
    task: str = "classify"
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
    # CSV column of groups (patient, source photo): splits keep each group whole
    group_column: str | None = None
    positive: str | None = None
    strict: bool = False
    img_size: int | None = None  # None: the backbone's default
    channels: int = 3
    augment: str = "none"  # anything else trains end to end (no feature cache)
    balance: str = "none"  # none | weights | sampler | undersample:R
    workers: int = 0
    # model
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    pretrained: bool = True  # only the embedded backbone (or --weights) can honour it offline
    hidden: list[int] = field(default_factory=list)
    dropout: float = 0.2
    freeze: str = "train-last"
    train_last: int | None = 3
    # segmentation (task=segment)
    decoder: str = "unet"
    seg_loss: str = "bce_dice"
    min_area: int = 0  # pixels a predicted piece needs to count (0: chosen on validation)
    tile: int | None = None  # training crops of this size cut from the full-size image
    tile_focus: float = 0.0  # share of an image-with-mask's tiles placed to hold a positive pixel
    # optimisation
    epochs: int = 15
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 5e-4
    trunk_lr_scale: float = 1.0  # backbone blocks learn at lr * this; the head at lr
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    early_stop: int | None = 5
    ema_epochs: float = 0.0  # average the weights over about this many epochs (0: off)
    label_smoothing: float = 0.0
    cache_features: bool = (
        True  # frozen backbone + no augmentation: train the head on cached features
    )
    cache_views: int = 1  # cached path: 1 = the image as is; 2 adds its mirror; 4 and 8 more flips
    tta: int = 1  # prediction: mean logits over this many views (1 off; 2, 4, 8 as cache_views)
    channels_last: bool = True
    precision: str = "fp32"
    # decision
    threshold_metric: str = "f1"
    target_recall: float | None = None
    # binary tasks: the positive-class prevalence predictions decide for (None: the validation's)
    prior: float | None = None
    calibrate: bool = True
    # run
    seed: int = 0
    split_seed: int | None = None  # seed of the val/test split (None: seed)
    members: int = 1  # segmenters trained with seeds seed, seed+1, ... and averaged as one
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
            "task": TASKS,
            "decoder": DECODER_NAMES,
            "seg_loss": SEG_LOSS_NAMES,
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
        if self.prior is not None and not 0 < self.prior < 1:
            raise ConfigError(f"prior={self.prior}: must lie in (0, 1)")
        if self.freeze == "train-last" and self.train_last is None:
            raise ConfigError("freeze=train-last needs train_last (the number of last blocks)")
        if self.cache_views not in CACHE_VIEWS:
            raise ConfigError(
                f"cache_views={self.cache_views}: must be one of {', '.join(map(str, CACHE_VIEWS))}"
            )
        if self.tta not in CACHE_VIEWS:
            raise ConfigError(f"tta={self.tta}: must be one of {', '.join(map(str, CACHE_VIEWS))}")
        if self.threshold_metric not in THRESHOLD_METRICS:
            raise ConfigError(
                f"threshold_metric={self.threshold_metric!r} is not one of "
                f"{', '.join(THRESHOLD_METRICS)}"
            )
        if not 0 < self.trunk_lr_scale <= 1:
            raise ConfigError(f"trunk_lr_scale={self.trunk_lr_scale}: must lie in (0, 1]")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing}: must lie in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout}: must lie in [0, 1)")
        if not 0 <= self.ema_epochs <= self.epochs:
            raise ConfigError(
                f"ema_epochs={self.ema_epochs}: must lie in [0, epochs] (0: no weight average)"
            )
        if self.early_stop is not None and self.early_stop < 1:
            raise ConfigError("early_stop must be >= 1 epoch (leave it out to never stop early)")
        if self.img_size is not None and self.img_size < 8:
            raise ConfigError(f"img_size={self.img_size}: must be at least 8 px")
        if self.workers < 0:
            raise ConfigError("workers must be >= 0")
        if self.max_train_batches is not None and self.max_train_batches < 1:
            raise ConfigError("max_train_batches must be >= 1")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ConfigError("weight_decay and momentum must be >= 0")
        if self.min_area < 0:
            raise ConfigError(f"min_area={self.min_area}: must be >= 0 pixels")
        if self.tile is not None and (self.tile < 32 or self.tile % 32):
            raise ConfigError(f"tile={self.tile}: must be a multiple of 32 (at least 32)")
        if not 0.0 <= self.tile_focus <= 1.0:
            raise ConfigError(f"tile_focus={self.tile_focus}: must be between 0 and 1")
        if any(int(h) < 1 for h in self.hidden):
            raise ConfigError(f"hidden={self.hidden}: layer widths must be positive")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise ConfigError(f"members={self.members}: must be a whole number in 1..{MAX_MEMBERS}")
        if self.members > 1 and self.task != "segment":
            raise ConfigError(
                f"members={self.members} averages segmenters: it needs task=segment (a "
                f"{self.task} model trains alone)"
            )
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
        return dataclasses.replace(self, **{k: _coerce(k, v, source) for k, v in values.items()})


def field_types() -> dict[str, Any]:
    """``{field name: type}`` of TrainConfig with ``X | None`` reduced to ``X``."""
    import types
    import typing

    out = {}
    for name, tp in typing.get_type_hints(TrainConfig).items():
        args = typing.get_args(tp)
        if isinstance(tp, types.UnionType) and type(None) in args:
            tp = next(a for a in args if a is not type(None))
        out[name] = tp
    return out


def _coerce(name: str, value: Any, source: str) -> Any:
    """Give ``value`` the field's type: YAML reads ``1e-4`` as a string, flags arrive as text."""
    if value is None:
        return None
    tp = field_types()[name]
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                    raise ValueError(value)
                return low in ("true", "yes", "1", "on")
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
        if getattr(tp, "__origin__", None) is list:
            if isinstance(value, str):
                value = [v for v in value.replace(" ", ",").split(",") if v.strip()]
            return [int(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name}={value!r} is not a valid {tp.__name__}") from exc
    return value


# One line of help per TrainConfig field: ``fracturekit train`` turns every field into a flag with
# this text (tests/test_train.py checks that every field has one).
HELP: dict[str, str] = {
    "task": "classify (one label an image) or segment (a crack/fracture mask an image; masks "
    "from masks/<stem>.* beside the class folders or a CSV mask column)",
    "data": "training images: a class-folder tree, ROOT/{train,val,test}/<class>/ or a CSV manifest",
    "val": "a separate validation set (any layout); default: carved from DATA",
    "test": "a separate test set (any layout), evaluated after training",
    "val_fraction": "share of DATA held out for validation when it has no val split",
    "test_fraction": "share of DATA held out for testing when it has no test split",
    "layout": "force a data layout instead of detecting it",
    "image_column": "CSV manifests: the column holding image paths or URLs",
    "label_column": "CSV manifests: the column holding labels (plain or JSON)",
    "label_key": "labelling exports: dotted key path of the label inside the JSON column",
    "group_column": "CSV manifests: a group column (patient, source photo); splits keep groups whole",
    "positive": "binary tasks: the positive class (default: the class not named no_/not_/normal)",
    "strict": "refuse unreadable and truncated images instead of leaving them out with a warning",
    "img_size": "input size in pixels (default: the backbone's)",
    "channels": "1 for grayscale models, 3 for colour/ImageNet backbones",
    "augment": "training augmentation: none, default (flips, rotation, shifts, zoom, brightness/"
    "contrast), strong, flips (mirrors and 90-degree turns only: the segmentation default) or "
    "flips_color (flips plus brightness/contrast +-20%: masks stay exact); anything but none "
    "trains end to end",
    "balance": "class imbalance: none, weights (class-weighted loss), sampler (class-balanced "
    "draws) or undersample:R (majority at most R x minority)",
    "workers": "DataLoader worker processes for decoding images (0: in the main process)",
    "backbone": "backbone name (fracturekit's table or any timm model)",
    "weights": "local weights file for the backbone (timm/torchvision state dict or checkpoint)",
    "pretrained": "start from ImageNet weights where they ship (efficientnet_lite0) or --weights",
    "hidden": "hidden dense layer widths of the head, comma-separated (e.g. 1024,512,256)",
    "dropout": "dropout rate in the head",
    "freeze": "none (train everything), all-but-head, or train-last (with --train-last P)",
    "train_last": "with --freeze train-last: how many last backbone blocks train",
    "decoder": "task=segment: the decoder over the backbone (unet, unet_small or fpn)",
    "seg_loss": "task=segment: pixel loss (bce_dice, focal_dice, tversky, cldice or "
    "bce_dice_image: with an image-level term)",
    "min_area": "task=segment: connected predicted pieces smaller than this many pixels (at "
    "img_size) are dropped; an image is positive when a piece remains (0: chosen on validation "
    "for the best image-level F1)",
    "tile": "task=segment: train on random crops of this many pixels (a multiple of 32) cut "
    "from the image at img_size (default: the whole image)",
    "tile_focus": "task=segment with tile: the share (0-1) of the tiles of an image with mask "
    "pixels that are placed to hold one (small fractures in large radiographs)",
    "epochs": "maximum number of epochs",
    "batch_size": "images per batch (per process under torchrun)",
    "optimizer": "sgd (with momentum), adamw or adam",
    "lr": "learning rate",
    "trunk_lr_scale": "the trainable backbone blocks learn at lr times this (e.g. 0.1), the head "
    "at lr: pretrained features move less than the new head",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (decoupled for adamw)",
    "schedule": "learning-rate schedule over the epochs: cosine, step (x0.1 every third) or none",
    "early_stop": "stop after this many epochs without a lower validation loss (none: never)",
    "ema_epochs": "keep a moving average of the weights over about this many epochs (updated "
    "every step) and validate, pick the best epoch and save model.pt with it (0: off)",
    "label_smoothing": "label smoothing of the training loss",
    "cache_features": "frozen backbone prefix and no augmentation: compute its output once and "
    "train the rest on it",
    "cache_views": "cached training: views of each image cached (1 as is, 2 + mirror, 4 + flips, "
    "8 + transposes); each epoch sees one at random",
    "tta": "test-time augmentation: average the logits of this many flipped views of each image "
    "(1 off, 2 + mirror, 4 + flips, 8 + 90-degree turns; a segmenter's pixel logits are turned "
    "back first); stored in the checkpoint, used by validation (threshold, temperature) and "
    "every prediction; costs that many forward passes",
    "channels_last": "channels-last memory format for convolutions (faster on most CPUs and GPUs)",
    "precision": "fp32, or bf16/fp16 mixed precision (GPU; bf16 on CPU is slow on most CPUs)",
    "threshold_metric": "binary tasks: the decision threshold maximises this on validation",
    "target_recall": "binary tasks: instead, the highest threshold reaching this validation "
    "recall (screening)",
    "prior": "binary tasks: decide at this positive-class prevalence (e.g. 0.03): the threshold "
    "rule applied to the validation scores re-weighted to it; stored as the checkpoint's default "
    "for predict, evaluate and serve",
    "calibrate": "fit temperature scaling on validation logits",
    "seed": "random seed (splits, initialisation, order)",
    "split_seed": "seed of the carved val/test split alone (default: --seed), so that runs "
    "with other seeds validate and test on the same images (seed spread, ensembles)",
    "members": "segmenters: train this many with seeds seed, seed+1, ... on one split and "
    "average their pixel logits as one checkpoint (fewer false alarms; K times the training "
    "time; the frozen first stages run once for all, the rest K times a prediction)",
    "device": "auto, cpu, cuda or cuda:N",
    "resume": "continue the interrupted run in this folder from its last.pt",
    "max_train_batches": "smoke tests: stop each epoch after this many batches",
    "note": "free text stored with the run",
}


def split_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """``data.load_dataset`` keyword arguments that carve a config's split again.

    ``config``: a ``TrainConfig`` as a dict (a checkpoint's stored config). Fields it lacks or
    holds as None are left to ``load_dataset``'s defaults; ``split_seed``, when set, is the
    split's seed in place of ``seed``.
    """
    options = {k: config[k] for k in SPLIT_FIELDS if config.get(k) is not None}
    if config.get("split_seed") is not None:
        options["seed"] = config["split_seed"]
    return options


def find_config(name: str | Path) -> Path:
    """A config file path, or the name of a packaged one (``seed5_concrete_lenet``, ``default``).

    Raises:
        ConfigError: neither a file nor a packaged config of that name.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    packaged = CONFIGS_DIR / f"{stem}.yaml"
    if str(path) == path.name and packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"{name}: no such config file, nor a packaged config (packaged: {names})")


def packaged_configs() -> dict[str, Path]:
    """``{name: path}`` of the YAML configs that ship with fracturekit."""
    return {p.stem: p for p in sorted(CONFIGS_DIR.glob("*.yaml"))}


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
    """Defaults (or ``base``) < config file < flags (only flags the user gave, i.e. not None).

    ``config_file`` is a path or the name of a packaged config (see :func:`find_config`).
    """
    cfg = base or TrainConfig()
    if config_file is not None:
        config_file = find_config(config_file)
        cfg = cfg.updated(load_yaml(config_file), source=str(config_file))
    given = {k: v for k, v in flags.items() if v is not None}
    return cfg.updated(given, source="command line").validate()
