"""The training loop: data, model, cached or end-to-end epochs, checkpoints, calibration."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fracturekit.calibration import (
    choose_threshold,
    default_positive,
    expected_calibration_error,
    fit_temperature,
)
from fracturekit.config import SPLIT_FIELDS, TrainConfig, save_yaml
from fracturekit.train._cache import FeatureCache, build_cache
from fracturekit.train._dist import Dist, env_world, setup
from fracturekit.train._records import (
    TRAIN_STATE_KEY,
    load_last,
    plot_curves,
    rng_state,
    save_last,
    set_rng_state,
    write_history,
    write_splits,
)

MODEL_FILE = "model.pt"
LAST_FILE = "last.pt"
# Files a run writes (and --overwrite removes): training's own, then what the CLI adds.
RUN_FILES = (
    MODEL_FILE,
    LAST_FILE,
    "config.yaml",
    "splits.csv",
    "test.csv",
    "history.csv",
    "curves.png",
    "metrics.json",
    "report.html",
    "classification_report.txt",
    "predictions.csv",
    "confusion_matrix.png",
    "roc.png",
    "pr.png",
    "reliability.png",
    "mistakes.png",
)


class TrainError(ValueError):
    """The run cannot start or continue as asked; the message says why and what to do."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        checkpoint: ``model.pt``: the best epoch's weights (lowest validation loss) with the
            decision threshold, temperature and validation metrics in its meta.
        best_checkpoint: the same path as ``checkpoint``.
        last_checkpoint: ``last.pt``: the last epoch's weights plus the training state.
        history: one dict per epoch (the rows of ``history.csv``).
        metrics: validation metrics of the best epoch (also ``meta["metrics"]``).
        run_dir: the run folder.
        mode: ``cached`` (frozen prefix computed once) or ``end-to-end``.
        n_test: images in the data's test split (evaluate them with ``evaluate_checkpoint``).
        seconds: wall time of the whole call.
    """

    checkpoint: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    run_dir: Path
    mode: str = "end-to-end"
    n_test: int = 0
    seconds: float = 0.0
    config: TrainConfig | None = None
    notes: list[str] = field(default_factory=list)


def load_options(cfg: TrainConfig) -> dict[str, Any]:
    """``fracturekit.data.load_dataset`` keyword arguments of a config (the same split)."""
    return {**{k: getattr(cfg, k) for k in SPLIT_FIELDS}, "strict": cfg.strict}


# --------------------------------------------------------------------------------------------
# Small helpers


def _resolve_device(name: str, dist_world: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device={name}: no CUDA GPU is available (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise TrainError(f"device={name}: use auto, cpu, cuda or cuda:N")
    return dev


def _absolute(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


class _Runner(nn.Module):
    """The trainable part of the model as one module (what DDP wraps).

    ``forward(x, cached)``: on cached activations run ``blocks[start:]``, pooling and head (or
    only the head on cached pooled features); on images run the frozen prefix without autograd,
    then the rest.
    """

    def __init__(self, model: nn.Module, start: int, pooled: bool) -> None:
        super().__init__()
        self.model = model
        self.start = start
        self.pooled = pooled

    def forward(self, x: torch.Tensor, cached: bool) -> torch.Tensor:
        model = self.model
        if cached:
            if self.pooled:
                return model.head(x)
            return model.forward_from(x, self.start)
        if self.start > 0:
            with torch.no_grad():
                x = model.forward_until(x, self.start)
        return model.forward_from(x, self.start)


def _trainable_start(model: Any) -> tuple[int, bool]:
    """First trunk block with a trainable parameter, and whether pooling is frozen too."""
    blocks = model.blocks()
    start = next(
        (i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())),
        len(blocks),
    )
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    pool_trainable = any(
        p.requires_grad for p in model.backbone.parameters() if id(p) not in in_blocks
    )
    return start, start == len(blocks) and not pool_trainable


def _param_groups(
    model: nn.Module, weight_decay: float, lr: float, trunk_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Trainable parameters in groups: head first, then the backbone at ``lr * trunk_lr_scale``.

    Biases and normalisation weights get no weight decay. Empty groups are left out.
    """
    backbone = getattr(model, "backbone", None)
    in_trunk = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (trunk, decay): [] for trunk in (False, True) for decay in (True, False)
    }
    for p in model.parameters():
        if p.requires_grad:
            buckets[(id(p) in in_trunk, p.ndim > 1)].append(p)
    groups = []
    for (trunk, decay), params in buckets.items():
        if params:
            groups.append(
                {
                    "params": params,
                    "weight_decay": weight_decay if decay else 0.0,
                    "lr": lr * (trunk_lr_scale if trunk else 1.0),
                }
            )
    return groups


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay, cfg.lr, cfg.trunk_lr_scale)
    if not groups:
        raise TrainError("nothing to train: every parameter is frozen")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _schedule_factor(kind: str, epochs: int):
    """Learning-rate multiplier for epoch ``e`` (0-based)."""
    if kind == "cosine":
        return lambda e: 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / epochs))
    if kind == "step":
        step = max(1, epochs // 3)
        return lambda e: 0.1 ** (e // step)
    return lambda e: 1.0


def _epoch_order(
    n: int,
    *,
    seed: int,
    epoch: int,
    weights: torch.Tensor | None,
    world: int = 1,
    rank: int = 0,
) -> torch.Tensor:
    """This epoch's sample order for this rank: a permutation (or class-balanced draws with
    replacement when ``weights`` are given), padded to a multiple of ``world`` and dealt out
    like ``DistributedSampler`` so every rank runs the same number of batches."""
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    if weights is not None:
        order = torch.multinomial(weights, n, replacement=True, generator=g)
    else:
        order = torch.randperm(n, generator=g)
    if world > 1:
        pad = (-n) % world
        if pad:
            order = torch.cat([order, order[:pad]])
        order = order[rank::world]
    return order


def _batches(order: torch.Tensor, batch_size: int, limit: int | None) -> list[torch.Tensor]:
    chunks = list(torch.split(order, batch_size))
    # A last batch of one sample breaks BatchNorm in training mode; it is dropped (the sample
    # comes back in another epoch's order).
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks.pop()
    if limit is not None:
        chunks = chunks[:limit]
    return chunks


def _shard(n: int, dist: Dist, pad: bool) -> list[int]:
    """Indices of this rank's part of ``range(n)``: padded to equal sizes (training) or not
    (validation, gathered back afterwards)."""
    idx = list(range(n))
    if dist.world == 1:
        return idx
    if pad and n % dist.world:
        idx += idx[: (-n) % dist.world]
    return idx[dist.rank :: dist.world]


# --------------------------------------------------------------------------------------------
# Metrics


def _ce(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None
) -> tuple[float, float]:
    """Sum of (class-weighted) cross-entropy and the normaliser of its mean."""
    loss = nn.functional.cross_entropy(
        logits.float(), labels, weight=weight, reduction="sum"
    ).item()
    norm = float(weight[labels].sum()) if weight is not None else float(len(labels))
    return loss, norm


def _val_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    *,
    positive: str | None,
    temperature: float,
    threshold: float | None,
) -> dict[str, Any]:
    """Accuracy, F1, ROC AUC... of calibrated validation probabilities at the decision rule."""
    from sklearn.metrics import (
        balanced_accuracy_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    from fracturekit.models import logits_to_proba

    y = labels.numpy()
    proba = logits_to_proba(logits, temperature).numpy()
    present = np.unique(y)
    out: dict[str, Any] = {"n": int(len(y))}
    if len(classes) == 2 and positive is not None:
        pos = classes.index(positive)
        p_pos = proba[:, pos]
        pred_pos = p_pos >= (threshold if threshold is not None else 0.5)
        pred = np.where(pred_pos, pos, 1 - pos)
        truth = y == pos
        out["accuracy"] = float((pred == y).mean())
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
        out["precision"] = float(precision_score(truth, pred_pos, zero_division=0))
        out["recall"] = float(recall_score(truth, pred_pos, zero_division=0))
        out["f1"] = float(f1_score(truth, pred_pos, zero_division=0))
        out["roc_auc"] = float(roc_auc_score(truth, p_pos)) if len(present) == 2 else None
    else:
        pred = proba.argmax(axis=1)
        out["accuracy"] = float((pred == y).mean())
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
        out["f1"] = float(f1_score(y, pred, average="macro", zero_division=0))
        out["precision"] = float(precision_score(y, pred, average="macro", zero_division=0))
        out["recall"] = float(recall_score(y, pred, average="macro", zero_division=0))
        try:
            out["roc_auc"] = (
                float(roc_auc_score(y, proba, multi_class="ovr", labels=list(range(len(classes)))))
                if len(present) == len(classes)
                else None
            )
        except ValueError:
            out["roc_auc"] = None
    out["ece"] = float(expected_calibration_error(proba, y))
    return out


# --------------------------------------------------------------------------------------------
# Console


class _Console:
    """Rich progress bars with ETA on rank 0 (and only on a terminal); plain lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.console = None
        self.progress = None
        if enabled:
            from rich.console import Console

            self.console = Console()

    def print(self, text: str, style: str | None = None) -> None:
        if self.console is not None:
            self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def bars(self):
        if self.console is None or not self.console.is_terminal:
            yield self
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=True,
        )
        with self.progress:
            yield self
        self.progress = None

    def task(self, description: str, total: int) -> Any:
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total, info="")

    def advance(self, task: Any, n: int = 1, info: str | None = None) -> None:
        if self.progress is not None and task is not None:
            kw = {"info": info} if info is not None else {}
            self.progress.update(task, advance=n, **kw)

    def done(self, task: Any) -> None:
        if self.progress is not None and task is not None:
            self.progress.remove_task(task)


# --------------------------------------------------------------------------------------------
# The run


def _prepare_run_dir(out: Path, cfg: TrainConfig, overwrite: bool) -> None:
    """Refuse to train over a finished or interrupted run unless asked to."""
    existing = [name for name in (MODEL_FILE, LAST_FILE) if (out / name).exists()]
    if cfg.resume is not None:
        return
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a model ({', '.join(existing)}): pass --resume {out} to "
            "continue that run, --overwrite to replace it, or choose another --out"
        )
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / ".cache", ignore_errors=True)


def _resolved(cfg: TrainConfig) -> TrainConfig:
    """Validated copy with absolute data/weights paths (so resume works from anywhere)."""
    cfg = dataclasses.replace(
        cfg,
        data=_absolute(cfg.data) or cfg.data,
        val=_absolute(cfg.val),
        test=_absolute(cfg.test),
        weights=_absolute(cfg.weights),
    )
    return cfg.validate()


def train(
    cfg: TrainConfig, out: str | Path, *, progress: bool = True, overwrite: bool = False
) -> TrainResult:
    """Train a classifier on ``cfg.data`` and write the run to ``out``.

    The run folder gets ``config.yaml`` (the resolved configuration), ``model.pt`` (best epoch by
    validation loss, with the decision threshold and temperature fitted on validation and the
    validation metrics in its meta), ``last.pt`` (resumable), ``history.csv`` and ``curves.png``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; they train one
    DistributedDataParallel model and only rank 0 writes files and prints.

    Args:
        cfg: the run's configuration; ``cfg.resume`` names a run folder to continue.
        out: the run folder (created). It must not hold a model unless ``cfg.resume`` or
            ``overwrite``.
        progress: print progress bars (on a terminal) and one line per epoch.
        overwrite: replace a run already in ``out``.

    Raises:
        FileExistsError: ``out`` holds a model and neither resume nor overwrite was asked.
        TrainError, ConfigError, DatasetError (ValueError): bad options or data.
    """
    t_start = time.perf_counter()
    out = Path(out)
    cfg = _resolved(cfg)
    device = _resolve_device(cfg.device, env_world())
    dist = setup(device.type)
    try:
        return _train(cfg, out, dist, device, progress, overwrite, t_start)
    finally:
        dist.shutdown()


def _preflight(cfg: TrainConfig, out: Path, overwrite: bool) -> tuple[Any, dict | None]:
    """Rank 0's checks and data loading (broadcast to the other ranks)."""
    from fracturekit.data import load_dataset, undersample

    resume_obj = None
    if cfg.resume is not None:
        last = Path(cfg.resume) / LAST_FILE
        if not last.is_file():
            raise TrainError(f"nothing to resume: {last} not found")
        resume_obj = last
    _prepare_run_dir(out, cfg, overwrite)
    if not cfg.data:
        raise TrainError("no training data given (DATA)")
    splits = load_dataset(cfg.data, **load_options(cfg))
    if len(splits.classes) < 2:
        raise TrainError(
            f"{cfg.data}: found one class ({', '.join(splits.classes)}); a classifier needs two "
            "or more class folders (or labels)"
        )
    if cfg.balance.startswith("undersample:"):
        ratio = float(cfg.balance.split(":", 1)[1])
        splits = dataclasses.replace(splits, train=undersample(splits.train, ratio, cfg.seed))
    return splits, resume_obj


def _train(
    cfg: TrainConfig,
    out: Path,
    dist: Dist,
    device: torch.device,
    progress: bool,
    overwrite: bool,
    t_start: float,
) -> TrainResult:
    from torch.utils.data import DataLoader

    from fracturekit.data import ImageDataset, build_transforms, class_weights, make_sampler
    from fracturekit.models import apply_freeze, build_model, data_config, save_checkpoint

    con = _Console(progress and dist.main)
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        con.print(f"note: {text}", style="yellow")

    # -- checks and data, decided once by rank 0 ----------------------------------------------
    status: tuple[str, Any]
    if dist.main:
        try:
            status = ("ok", _preflight(cfg, out, overwrite))
        except Exception as exc:  # re-raised on every rank below
            status = ("error", exc)
    else:
        status = ("ok", None)
    status = dist.broadcast(status)
    if status[0] == "error":
        raise status[1]
    splits, resume_path = status[1]
    classes = list(splits.classes)
    n_classes = len(classes)
    train_samples, val_samples = list(splits.train), list(splits.val)
    if not train_samples:
        raise TrainError(f"{cfg.data}: no training images")

    positive = None
    if n_classes == 2:
        positive = cfg.positive or default_positive(classes)
        if positive not in classes:
            raise TrainError(f"positive={positive!r} is not a class ({', '.join(classes)})")
    elif cfg.positive is not None:
        note(f"positive={cfg.positive!r} ignored: {n_classes} classes, not a binary task")

    if device.type == "cuda" and dist.active:
        device = torch.device("cuda", dist.local_rank)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    if amp_dtype is not None and device.type == "cpu":
        if cfg.precision == "fp16":
            raise TrainError(
                "precision=fp16 needs a GPU (CPU float16 autocast is not supported); use "
                "--precision bf16 or fp32 on a CPU"
            )
        note("bf16 on a CPU runs slower than fp32 unless the CPU has bfloat16 instructions")

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # -- model --------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model(
            cfg.backbone,
            n_classes,
            in_chans=cfg.channels,
            pretrained=cfg.pretrained,
            weights=cfg.weights,
            hidden=cfg.hidden,
            dropout=cfg.dropout,
        )
    for w in caught:
        if dist.main:
            note(str(w.message))
    n_trainable = apply_freeze(model, cfg.freeze, cfg.train_last)
    start, pooled = _trainable_start(model)
    dcfg = data_config(cfg.backbone, cfg.img_size, in_chans=cfg.channels)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    cached = cfg.cache_features and cfg.augment == "none" and start > 0
    mode = "cached" if cached else "end-to-end"
    if cfg.cache_views > 1 and not cached:
        note(f"cache_views={cfg.cache_views} ignored: training runs end to end ({_why_e2e(cfg)})")

    transform_eval = build_transforms(
        dcfg["img_size"],
        dcfg["mean"],
        dcfg["std"],
        augment="none",
        channels=cfg.channels,
        interpolation=dcfg["interpolation"],
    )
    transform_train = build_transforms(
        dcfg["img_size"],
        dcfg["mean"],
        dcfg["std"],
        augment=cfg.augment,
        channels=cfg.channels,
        interpolation=dcfg["interpolation"],
    )
    weight = (
        class_weights(train_samples, n_classes).to(device) if cfg.balance == "weights" else None
    )
    draw_weights = (
        make_sampler(train_samples, cfg.seed).weights if cfg.balance == "sampler" else None
    )
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    pin = device.type == "cuda"

    def loader(samples: list, transform: Any, **kw: Any) -> DataLoader:
        return DataLoader(
            ImageDataset(samples, transform, channels=cfg.channels),
            batch_size=cfg.batch_size,
            num_workers=cfg.workers,
            pin_memory=pin,
            **kw,
        )

    if dist.main:
        counts = {k: sum(1 for s in v) for k, v in splits.splits().items()}
        n_blocks = len(model.blocks())
        con.print(
            f"data: {cfg.data} ({splits.layout}); classes: {', '.join(classes)}; "
            f"train {counts['train']}, val {counts['val']}, test {counts['test']} images"
        )
        where = (
            "head only"
            if pooled
            else f"blocks {start}..{n_blocks - 1} of {n_blocks} + head"
            if start < n_blocks
            else "pooling + head"
        )
        con.print(
            f"model: {cfg.backbone} ({model.pretrained or 'random init'}), "
            f"{dcfg['img_size']} px, {n_trainable:,} trainable parameters ({where}); "
            f"{mode} training on {device}" + (f" x {dist.world} processes" if dist.active else "")
        )

    spill = out / ".cache"
    optimizer = _optimizer(cfg, model)
    factor = _schedule_factor(cfg.schedule, cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # -- resume -------------------------------------------------------------------------------
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_loss": None, "epoch": None, "bad_epochs": 0}
    best_logits: torch.Tensor | None = None
    best_labels: torch.Tensor | None = None
    first_epoch = 1
    finished, stop_reason = False, ""
    if resume_path is not None:
        obj = load_last(resume_path)
        state = obj[TRAIN_STATE_KEY]
        try:
            model.load_state_dict(obj["state_dict"], strict=True)
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainError(
                f"{resume_path}: cannot resume with this configuration ({exc}); resume with the "
                "run's own config.yaml (architecture, freeze policy and optimizer unchanged)"
            ) from exc
        scheduler.load_state_dict(state["scheduler"])
        scheduler.lr_lambdas = [factor] * len(optimizer.param_groups)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = [dict(r) for r in state["history"]]
        best = dict(state["best"])
        best_logits = best.pop("val_logits", None)
        best_labels = best.pop("val_labels", None)
        first_epoch = int(state["epoch"]) + 1
        finished = bool(state.get("finished")) and (
            state.get("stop_reason") != "epochs" or first_epoch > cfg.epochs
        )
        stop_reason = str(state.get("stop_reason") or "")
        set_rng_state(state["rng"])
        if dist.main:
            con.print(f"resuming {Path(resume_path).parent} after epoch {first_epoch - 1}")
    else:
        torch.manual_seed(cfg.seed + 7919 * dist.rank)  # per-rank dropout/augmentation streams

    runner: nn.Module = _Runner(model, start, pooled)
    train_module = runner
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        train_module = DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None
        )

    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml({**cfg.to_dict(), "resume": None}, out / "config.yaml")
        write_splits(out / "splits.csv", splits)

    base_meta = {
        "classes": classes,
        "img_size": dcfg["img_size"],
        "mean": dcfg["mean"],
        "std": dcfg["std"],
        "interpolation": dcfg["interpolation"],
        "positive": positive,
        "tta": cfg.tta,
        "config": {**cfg.to_dict(), "resume": None},
    }

    caches: list[FeatureCache] = []
    cache_seconds: dict[str, float] = {}
    try:
        with con.bars():
            # -- caches ------------------------------------------------------------------------
            def make_cache(samples: list, views: int, what: str) -> FeatureCache:
                task = con.task(f"caching {what}", len(samples) * dist.world)
                t0 = time.perf_counter()
                cache = build_cache(
                    model,
                    loader(samples, transform_eval, shuffle=False),
                    len(samples),
                    start=start,
                    pooled=pooled,
                    views=views,
                    device=device,
                    channels_last=cfg.channels_last,
                    autocast=autocast,
                    spill_dir=spill,
                    on_batch=lambda b: con.advance(task, b * dist.world),
                )
                con.done(task)
                rate = len(samples) * views * dist.world / max(time.perf_counter() - t0, 1e-9)
                con.print(
                    f"cached {what}: {len(samples) * dist.world} images x {views} view(s) in "
                    f"{cache.seconds:.1f} s ({rate:.1f} img/s), "
                    f"{cache.nbytes * dist.world / 2**20:.0f} MiB"
                    + (" (memory-mapped)" if cache.path else "")
                )
                caches.append(cache)
                cache_seconds[what] = round(cache.seconds, 2)
                return cache

            val_cache = None
            if val_samples and not finished:
                mine = [val_samples[i] for i in _shard(len(val_samples), dist, pad=False)]
                # As many views as prediction averages (tta), so that the threshold and
                # temperature are fitted on the logits the checkpoint will produce.
                val_cache = make_cache(mine, cfg.tta, "validation")
            train_cache = None
            train_local = train_samples
            if cached and not finished:
                shard = _shard(len(train_samples), dist, pad=True)
                train_local = [train_samples[i] for i in shard]
                train_cache = make_cache(train_local, cfg.cache_views, "training")
                if draw_weights is not None:
                    draw_weights = draw_weights[torch.tensor(shard)]

            # -- epochs ------------------------------------------------------------------------
            epoch_task = con.task("epochs", cfg.epochs)
            con.advance(epoch_task, first_epoch - 1)
            epoch = first_epoch - 1
            train_ds = ImageDataset(train_samples, transform_train, channels=cfg.channels)
            for epoch in range(first_epoch, cfg.epochs + 1):
                if finished:
                    break
                t0 = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                runner.train()
                if cached:
                    order = _epoch_order(
                        len(train_local), seed=cfg.seed, epoch=epoch, weights=draw_weights
                    )
                    chunks = _batches(order, cfg.batch_size, cfg.max_train_batches)
                    g = torch.Generator().manual_seed(cfg.seed * 31 + epoch * 7 + dist.rank)
                    views = torch.randint(0, train_cache.views, (len(order),), generator=g)
                    pos = {"i": 0}

                    def batches(chunks=chunks, views=views, pos=pos):
                        for idx in chunks:
                            v = views[pos["i"] : pos["i"] + len(idx)]
                            pos["i"] += len(idx)
                            yield train_cache.batch(idx, v), train_cache.labels[idx]

                    n_batches = len(chunks)
                    source = batches()
                else:
                    order = _epoch_order(
                        len(train_samples),
                        seed=cfg.seed,
                        epoch=epoch,
                        weights=draw_weights,
                        world=dist.world,
                        rank=dist.rank,
                    )
                    chunks = _batches(order, cfg.batch_size, cfg.max_train_batches)
                    n_batches = len(chunks)
                    source = iter(
                        DataLoader(
                            train_ds,
                            batch_sampler=[c.tolist() for c in chunks],
                            num_workers=cfg.workers,
                            pin_memory=pin,
                        )
                    )
                task = con.task(f"epoch {epoch}/{cfg.epochs}", n_batches)
                loss_sum = correct = seen = 0.0
                for xb, yb in source:
                    xb = xb.to(device, non_blocking=True)
                    yb = yb.to(device, non_blocking=True)
                    if cfg.channels_last and xb.ndim == 4:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    with autocast():
                        logits = train_module(xb, cached)
                    loss = criterion(logits.float(), yb)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    b = len(yb)
                    loss_sum += float(loss.detach()) * b
                    correct += float((logits.detach().argmax(1) == yb).sum())
                    seen += b
                    con.advance(task, 1, info=f"loss {loss_sum / seen:.4f}")
                con.done(task)
                scheduler.step()
                loss_sum, correct, seen = dist.sum([loss_sum, correct, seen], device)
                train_seconds = time.perf_counter() - t0

                # validation
                row: dict[str, Any] = {
                    "epoch": epoch,
                    "train_loss": loss_sum / max(seen, 1),
                    "train_acc": correct / max(seen, 1),
                    "val_loss": None,
                    "val_acc": None,
                    "lr": lr,
                }
                improved = False
                if val_cache is not None:
                    v_logits, v_labels = _predict(runner, val_cache, cfg, device, autocast)
                    parts = dist.gather((v_logits, v_labels))
                    v_logits = torch.cat([p[0] for p in parts])
                    v_labels = torch.cat([p[1] for p in parts])
                    vl, norm = _ce(v_logits, v_labels, weight.cpu() if weight is not None else None)
                    row["val_loss"] = vl / max(norm, 1e-12)
                    row["val_acc"] = float((v_logits.argmax(1) == v_labels).float().mean())
                    if best["val_loss"] is None or row["val_loss"] < best["val_loss"] - 1e-7:
                        improved = True
                        best.update(val_loss=row["val_loss"], epoch=epoch, bad_epochs=0)
                        best_logits, best_labels = v_logits, v_labels
                    else:
                        best["bad_epochs"] = int(best["bad_epochs"]) + 1
                else:
                    improved = True
                    best.update(epoch=epoch)
                row["seconds"] = time.perf_counter() - t0
                history.append(row)
                if cfg.early_stop is not None and best["bad_epochs"] >= cfg.early_stop:
                    finished, stop_reason = True, "early_stop"
                elif epoch >= cfg.epochs:
                    finished, stop_reason = True, "epochs"

                # checkpoints (rank 0)
                if dist.main:
                    meta = {**base_meta, "epoch": epoch}
                    if improved:
                        save_checkpoint(out / MODEL_FILE, model, meta)
                    state = {
                        "epoch": epoch,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                        "best": {**best, "val_logits": best_logits, "val_labels": best_labels},
                        "history": history,
                        "rng": rng_state(),
                        "finished": finished,
                        "stop_reason": stop_reason,
                    }
                    save_last(out / LAST_FILE, model, meta, state)
                    write_history(out / "history.csv", history)
                    plot_curves(out / "curves.png", history, best["epoch"])
                    rate = seen / max(train_seconds, 1e-9)
                    con.print(
                        _epoch_line(row, cfg.epochs, rate, improved and val_cache is not None)
                    )
                con.advance(epoch_task, 1)
                dist.barrier()
                if finished:
                    break
            if stop_reason == "early_stop" and dist.main:
                con.print(
                    f"early stop: validation loss has not improved for {cfg.early_stop} epochs "
                    f"(best {best['val_loss']:.4f} at epoch {best['epoch']})"
                )
    finally:
        for cache in caches:
            cache.close()
        if dist.main:
            shutil.rmtree(spill, ignore_errors=True)

    # -- calibration and the final model.pt (rank 0) ------------------------------------------
    metrics: dict[str, Any] = {}
    if dist.main:
        extra = {
            "mode": mode,
            "stop_reason": stop_reason or "epochs",
            "world_size": dist.world,
            "cache_seconds": cache_seconds,
            "epoch_seconds": [round(float(r["seconds"]), 3) for r in history],
            "train_seconds": round(time.perf_counter() - t_start, 2),
        }
        metrics = _finalize(
            cfg,
            out,
            model,
            base_meta,
            classes,
            positive,
            best,
            best_logits,
            best_labels,
            history,
            note,
            con,
            extra,
        )
    metrics = dist.broadcast(metrics)
    return TrainResult(
        checkpoint=out / MODEL_FILE,
        best_checkpoint=out / MODEL_FILE,
        last_checkpoint=out / LAST_FILE,
        history=history,
        metrics=metrics,
        run_dir=out,
        mode=mode,
        n_test=len(splits.test),
        seconds=time.perf_counter() - t_start,
        config=cfg,
        notes=notes,
    )


def _why_e2e(cfg: TrainConfig) -> str:
    if cfg.augment != "none":
        return f"augment={cfg.augment}"
    if not cfg.cache_features:
        return "cache_features is off"
    return "nothing frozen to cache"


def _epoch_line(row: dict[str, Any], epochs: int, rate: float, best: bool) -> str:
    text = (
        f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.3f}"
    )
    if row["val_loss"] is not None:
        text += f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}"
    text += f"  lr {row['lr']:.2e}  {row['seconds']:.1f} s ({rate:.0f} img/s)"
    return text + ("  *best" if best else "")


def _predict(
    runner: _Runner, cache: FeatureCache, cfg: TrainConfig, device: torch.device, autocast: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every cached (validation) sample, in order, on the CPU.

    With several cached views (``cfg.tta``), the mean of their logits, as
    ``fracturekit.models.view_logits`` gives at prediction.
    """
    runner.eval()
    outs = []
    with torch.inference_mode():
        for idx in torch.split(torch.arange(len(cache)), max(cfg.batch_size, 64)):
            total = None
            for v in range(cache.views):
                x = cache.batch(idx, torch.full_like(idx, v)).to(device)
                if cfg.channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    z = runner(x, True).float().cpu()
                total = z if total is None else total + z
            outs.append(total / cache.views)
    runner.train()
    logits = torch.cat(outs) if outs else torch.empty(0, 0)
    return logits, cache.labels.clone()


def _finalize(
    cfg: TrainConfig,
    out: Path,
    model: nn.Module,
    base_meta: dict[str, Any],
    classes: list[str],
    positive: str | None,
    best: dict[str, Any],
    logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    history: list[dict[str, Any]],
    note: Any,
    con: _Console,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Fit temperature and threshold on the best epoch's validation logits; rewrite model.pt."""
    from fracturekit.models import read_checkpoint, save_checkpoint

    ckpt = out / MODEL_FILE
    obj = read_checkpoint(ckpt)
    model.load_state_dict(obj["state_dict"])
    meta = {**base_meta, "epoch": best.get("epoch")}
    temperature, threshold = 1.0, None
    metrics: dict[str, Any] = {"best_epoch": best.get("epoch"), "epochs_run": len(history)}
    if logits is None or labels is None or len(labels) == 0:
        note("no validation data: no early stopping, threshold 0.5, no temperature scaling")
        last = history[-1] if history else {}
        metrics.update(train_loss=last.get("train_loss"), train_acc=last.get("train_acc"))
    else:
        if cfg.calibrate:
            temperature = fit_temperature(logits, labels)
        if positive is not None:
            from fracturekit.models import logits_to_proba

            pos = classes.index(positive)
            p_pos = logits_to_proba(logits, temperature)[:, pos].numpy()
            truth = labels.numpy() == pos
            if truth.any():
                threshold = choose_threshold(
                    truth, p_pos, metric=cfg.threshold_metric, target_recall=cfg.target_recall
                )
            else:
                note("validation holds no positive image: the threshold stays 0.5")
        metrics["val_loss"] = best.get("val_loss")
        metrics.update(
            _val_metrics(
                logits,
                labels,
                classes,
                positive=positive,
                temperature=temperature,
                threshold=threshold,
            )
        )
        if cfg.calibrate:
            from fracturekit.models import logits_to_proba

            metrics["ece_uncalibrated"] = float(
                expected_calibration_error(logits_to_proba(logits).numpy(), labels.numpy())
            )
        metrics["note"] = (
            "validation metrics: the threshold and temperature were fitted on these images, so "
            "they are optimistic; use `fracturekit evaluate` on a test set for honest figures"
        )
    metrics["threshold"] = threshold
    metrics["temperature"] = temperature
    metrics.update(extra)
    meta.update(temperature=temperature, threshold=threshold, metrics=metrics)
    save_checkpoint(ckpt, model, meta)
    if threshold is not None or "f1" in metrics:
        parts = [f"best epoch {best.get('epoch')}"]
        for key in ("val_loss", "accuracy", "f1", "roc_auc"):
            if metrics.get(key) is not None:
                parts.append(f"{key} {metrics[key]:.4f}")
        if threshold is not None:
            parts.append(f"threshold {threshold:.3f} ({positive})")
        parts.append(f"temperature {temperature:.3f}")
        con.print("validation: " + ", ".join(parts))
    con.print(f"model: {ckpt}")
    return metrics
