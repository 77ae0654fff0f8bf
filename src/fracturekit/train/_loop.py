"""The training loop: data, model, cached or end-to-end epochs, checkpoints, calibration.

``train`` builds a :class:`_Run` (everything the run holds) and takes it through named steps::

    prepare -> resume -> build_caches -> (train_one_epoch -> validate -> save_epoch)* -> finalize

What is specific to the kind of model (the batch, the loss, the validation score, what the
checkpoint stores) is asked of the run's task (``_tasks.TASKS``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fracturekit.config import TrainConfig, save_yaml, split_options
from fracturekit.contracts import LAST_FILE, MODEL_FILE, RUN_FILES
from fracturekit.train._cache import FeatureCache, build_cache
from fracturekit.train._console import Console, epoch_line
from fracturekit.train._dist import Dist, env_world, setup
from fracturekit.train._ema import (
    averaged_weights,
    build_ema,
    ema_state,
    load_ema_state,
    model_to_save,
    set_horizon,
)
from fracturekit.train._optim import build_optimizer, schedule_factor
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
from fracturekit.train._runner import Runner, predict_cached, trainable_start
from fracturekit.train._sampling import (
    cached_batches,
    cached_view_choice,
    epoch_order,
    gathered_order,
    shard_indices,
    split_batches,
)
from fracturekit.train._tasks import TASKS


class TrainError(ValueError):
    """The run cannot start or continue as asked; the message says why and what to do."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        checkpoint: ``model.pt``: the best epoch's weights (lowest validation loss) with the
            decision threshold, temperature and validation metrics in its meta.
        last_checkpoint: ``last.pt``: the last epoch's weights plus the training state.
        history: one dict per epoch (the rows of ``history.csv``).
        metrics: validation metrics of the best epoch (also ``meta["metrics"]``).
        run_dir: the run folder.
        mode: ``cached`` (frozen prefix computed once) or ``end-to-end``.
        n_test: images in the data's test split (evaluate them with ``evaluate_run``).
        seconds: wall time of the whole call.
        config: the resolved configuration.
        notes: what the run noted on the way (options ignored, no validation data...).
    """

    checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    run_dir: Path
    mode: str = "end-to-end"
    n_test: int = 0
    seconds: float = 0.0
    config: TrainConfig | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def best_checkpoint(self) -> Path:
        """Deprecated: the best epoch's checkpoint is ``checkpoint`` (``model.pt``)."""
        warnings.warn(
            "TrainResult.best_checkpoint is deprecated: use checkpoint (model.pt, the best epoch)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.checkpoint


def load_options(cfg: TrainConfig) -> dict[str, Any]:
    """``fracturekit.data.load_dataset`` keyword arguments of a config (the same split)."""
    return {**split_options(dataclasses.asdict(cfg)), "strict": cfg.strict}


def train(
    cfg: TrainConfig, out: str | Path, *, progress: bool = True, overwrite: bool = False
) -> TrainResult:
    """Train a classifier on ``cfg.data`` and write the run to ``out``.

    The run folder gets ``config.yaml`` (the resolved configuration), ``model.pt`` (best epoch by
    validation loss, with the decision threshold and temperature fitted on validation, the
    validation metrics and the validation labels and probabilities in its meta), ``last.pt``
    (resumable), ``history.csv`` and ``curves.png``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; they train one
    DistributedDataParallel model and only rank 0 writes files and prints.

    With ``cfg.members`` K > 1 (segmenters) it trains K runs with seeds ``seed .. seed+K-1`` on
    one split in ``out/members/<i>/`` and writes their mean, calibrated as one model, to
    ``out/model.pt`` (``_members``).

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
    dist = setup(device.type)  # one process group for the whole call, members included
    try:
        if cfg.members > 1:
            from fracturekit.train._members import train_members

            return train_members(cfg, out, dist, device, progress, overwrite, t_start)
        return train_run(cfg, out, dist, device, progress, overwrite, t_start)
    finally:
        dist.shutdown()


def train_run(
    cfg: TrainConfig,
    out: Path,
    dist: Dist,
    device: torch.device,
    progress: bool,
    overwrite: bool,
    t_start: float,
) -> TrainResult:
    """One model's run in ``out`` (what :func:`train` does without members), in a process group
    already set up."""
    run = _Run(
        cfg=cfg,
        out=out,
        dist=dist,
        device=device,
        console=Console(progress and dist.main),
        task=TASKS[cfg.task],
        t_start=t_start,
    )
    return _train(run, overwrite)


def _train(run: _Run, overwrite: bool) -> TrainResult:
    """The steps of a run, in order."""
    prepare(run, overwrite)
    resume(run)
    start_run_folder(run)
    try:
        with run.console.bars():
            build_caches(run)
            run_epochs(run)
    finally:
        close_caches(run)
    metrics = finalize(run) if run.dist.main else {}
    metrics = run.dist.broadcast(metrics)
    return TrainResult(
        checkpoint=run.out / MODEL_FILE,
        last_checkpoint=run.out / LAST_FILE,
        history=run.history,
        metrics=metrics,
        run_dir=run.out,
        mode=run.mode,
        n_test=len(run.splits.test),
        seconds=time.perf_counter() - run.t_start,
        config=run.cfg,
        notes=run.notes,
    )


# --------------------------------------------------------------------------------------------
# The run's state


@dataclass
class _Run:
    """Everything a run holds between its steps (filled in by :func:`prepare` and on)."""

    cfg: TrainConfig
    out: Path
    dist: Dist
    device: torch.device
    console: Console
    task: Any  # a row of TASKS
    t_start: float
    notes: list[str] = field(default_factory=list)
    # data (prepare)
    splits: Any = None
    classes: list[str] = field(default_factory=list)
    positive: str | None = None
    resume_path: Path | None = None
    resume_obj: dict | None = None  # rank 0: last.pt, read and checked before the data
    # model and optimisation (prepare)
    model: Any = None
    n_trainable: int = 0
    start: int = 0  # first trainable trunk block
    pooled: bool = False  # pooling frozen too: the cache holds feature vectors
    cached: bool = False
    data_cfg: dict[str, Any] = field(default_factory=dict)
    amp_dtype: torch.dtype | None = None
    transform_eval: Any = None
    transform_train: Any = None
    criterion: nn.Module | None = None
    class_weight: torch.Tensor | None = None
    draw_weights: torch.Tensor | None = None
    optimizer: Any = None
    scheduler: Any = None
    lr_factor: Any = None
    scaler: Any = None
    ema: Any = None  # the moving average of the weights (ema_epochs), or None
    ema_step: int = 0  # optimiser steps the average has seen
    runner: Runner | None = None
    train_module: nn.Module | None = None  # the runner, DDP-wrapped under torchrun
    base_meta: dict[str, Any] = field(default_factory=dict)
    # progress (resume, epochs)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"val_loss": None, "epoch": None, "bad_epochs": 0}
    )
    best_logits: torch.Tensor | None = None
    best_labels: torch.Tensor | None = None
    first_epoch: int = 1
    finished: bool = False
    stop_reason: str = ""
    # caches (build_caches)
    caches: list[FeatureCache] = field(default_factory=list)
    cache_seconds: dict[str, float] = field(default_factory=dict)
    val_cache: FeatureCache | None = None
    train_cache: FeatureCache | None = None
    train_local: list[Any] = field(default_factory=list)  # this rank's training samples

    @property
    def mode(self) -> str:
        return "cached" if self.cached else "end-to-end"

    def note(self, text: str) -> None:
        """Record a remark for ``TrainResult.notes`` and print it."""
        self.notes.append(text)
        self.console.print(f"note: {text}", style="yellow")

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def loader(self, samples: list, transform: Any, **kw: Any) -> Any:
        from torch.utils.data import DataLoader

        from fracturekit.data import ImageDataset

        return DataLoader(
            ImageDataset(samples, transform, channels=self.cfg.channels),
            batch_size=self.cfg.batch_size,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            **kw,
        )


# --------------------------------------------------------------------------------------------
# prepare: checks, data, model, objective, optimiser


def prepare(run: _Run, overwrite: bool) -> None:
    """Check the options, load the data (rank 0, broadcast), build the model and optimiser."""
    _checks_and_data(run, overwrite)
    _set_device_and_precision(run)
    run.task.build_model(run)
    _build_objective(run)
    if run.dist.main:
        _describe(run)
        run.task.describe_data(run)
    run.optimizer = build_optimizer(run.cfg, run.model)
    run.lr_factor = schedule_factor(run.cfg.schedule, run.cfg.epochs)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, run.lr_factor)
    run.ema = build_ema(run.cfg.ema_epochs, run.model)


def _checks_and_data(run: _Run, overwrite: bool) -> None:
    """Rank 0 reads ``last.pt`` (when resuming), checks the folder and loads the data; every
    rank gets the outcome (or the same error)."""
    cfg, dist = run.cfg, run.dist
    status: tuple[str, Any] = ("ok", None)
    if dist.main:
        try:
            run.resume_obj = _read_resume(cfg)
            status = ("ok", _preflight(cfg, run.out, overwrite, run.task))
        except Exception as exc:  # re-raised on every rank below
            status = ("error", exc)
    status = dist.broadcast(status)
    if status[0] == "error":
        raise status[1]
    run.splits = status[1]
    if cfg.resume is not None:
        run.resume_path = Path(cfg.resume) / LAST_FILE
    run.classes = list(run.splits.classes)
    if not run.splits.train:
        raise TrainError(f"{cfg.data}: no training images")
    run.positive = run.task.positive(cfg, run.classes, run.note)


def _read_resume(cfg: TrainConfig) -> dict | None:
    """``last.pt`` of the run to resume, read and checked before anything else is loaded."""
    if cfg.resume is None:
        return None
    try:
        return load_last(Path(cfg.resume) / LAST_FILE)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainError(str(exc)) from exc


def _preflight(cfg: TrainConfig, out: Path, overwrite: bool, task: Any) -> Any:
    """Rank 0's checks and data loading (broadcast to the other ranks)."""
    _prepare_run_dir(out, cfg, overwrite)
    return load_splits(cfg, task)


def load_splits(cfg: TrainConfig, task: Any) -> Any:
    """The run's data and split (``load_dataset`` with the config's split options), checked by
    ``task``, the training part undersampled when ``balance`` asks for it."""
    from fracturekit.data import load_dataset, undersample

    if not cfg.data:
        raise TrainError("no training data given (DATA)")
    splits = load_dataset(cfg.data, **load_options(cfg))
    task.check_data(cfg, splits)
    if cfg.balance.startswith("undersample:"):
        ratio = float(cfg.balance.split(":", 1)[1])
        splits = dataclasses.replace(splits, train=undersample(splits.train, ratio, cfg.seed))
    return splits


def _prepare_run_dir(
    out: Path, cfg: TrainConfig, overwrite: bool, folders: tuple[str, ...] = ()
) -> None:
    """Refuse to train over a finished or interrupted run unless asked to; ``folders``:
    subfolders that hold part of a run too (refused like a model, removed to overwrite)."""
    existing = [name for name in (MODEL_FILE, LAST_FILE, *folders) if (out / name).exists()]
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
        for name in (".cache", *folders):
            shutil.rmtree(out / name, ignore_errors=True)


def _set_device_and_precision(run: _Run) -> None:
    """This rank's device, the autocast type and the gradient scaler."""
    cfg = run.cfg
    if run.device.type == "cuda" and run.dist.active:
        run.device = torch.device("cuda", run.dist.local_rank)
    run.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    if run.amp_dtype is not None and run.device.type == "cpu":
        if cfg.precision == "fp16":
            raise TrainError(
                "precision=fp16 needs a GPU (CPU float16 autocast is not supported); use "
                "--precision bf16 or fp32 on a CPU"
            )
        run.note("bf16 on a CPU runs slower than fp32 unless the CPU has bfloat16 instructions")
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=cfg.precision == "fp16")


def built_with_notes(run: _Run, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``build(backbone, *args, pretrained=, weights=, in_chans=, **kwargs)`` with the run's
    backbone, weights and channels, after seeding torch with the run's seed (the initial
    weights); its warnings (no pretrained weights...) become the run's notes."""
    cfg = run.cfg
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build(
            cfg.backbone,
            *args,
            pretrained=cfg.pretrained,
            weights=cfg.weights,
            in_chans=cfg.channels,
            **kwargs,
        )
    for w in caught:
        if run.dist.main:
            run.note(str(w.message))
    return model


def build_classifier(run: _Run) -> None:
    """The classifier (seeded), frozen as asked, on the device; whether training runs cached."""
    from fracturekit.models import apply_freeze, build_model, data_config

    cfg = run.cfg
    run.model = built_with_notes(
        run, build_model, len(run.classes), hidden=cfg.hidden, dropout=cfg.dropout
    )
    run.n_trainable = apply_freeze(run.model, cfg.freeze, cfg.train_last)
    run.start, run.pooled = trainable_start(run.model)
    run.data_cfg = data_config(cfg.backbone, cfg.img_size, in_chans=cfg.channels)
    run.model.to(run.device)
    if cfg.channels_last:
        run.model.to(memory_format=torch.channels_last)
    run.cached = cfg.cache_features and cfg.augment == "none" and run.start > 0
    if cfg.cache_views > 1 and not run.cached:
        run.note(
            f"cache_views={cfg.cache_views} ignored: training runs end to end ({_why_e2e(cfg)})"
        )


def _build_objective(run: _Run) -> None:
    """Transforms, the task's loss, class-balanced draws and the checkpoint's base meta."""
    from fracturekit.data import build_transforms, make_sampler

    cfg, dcfg = run.cfg, run.data_cfg
    common = {
        "channels": cfg.channels,
        "interpolation": dcfg["interpolation"],
    }
    run.transform_eval = build_transforms(
        dcfg["img_size"], dcfg["mean"], dcfg["std"], augment="none", **common
    )
    run.transform_train = build_transforms(
        dcfg["img_size"],
        dcfg["mean"],
        dcfg["std"],
        augment=cfg.augment,
        crop=run.task.train_crop(cfg),
        crop_focus=cfg.tile_focus,
        **common,
    )
    train_samples = list(run.splits.train)
    run.criterion, run.class_weight = run.task.loss(
        cfg, train_samples, len(run.classes), run.device
    )
    if cfg.balance == "sampler":
        run.draw_weights = make_sampler(train_samples, cfg.seed).weights
    run.train_local = train_samples
    run.base_meta = {
        "classes": run.classes,
        "img_size": dcfg["img_size"],
        "mean": dcfg["mean"],
        "std": dcfg["std"],
        "interpolation": dcfg["interpolation"],
        "positive": run.positive,
        "tta": cfg.tta,
        "config": {**cfg.to_dict(), "resume": None},
        **run.task.meta(run),
    }


def _describe(run: _Run) -> None:
    """The data and model lines printed before training."""
    cfg, splits, dcfg = run.cfg, run.splits, run.data_cfg
    counts = {k: sum(1 for s in v) for k, v in splits.splits().items()}
    n_blocks = len(run.model.blocks())
    run.console.print(
        f"data: {cfg.data} ({splits.layout}); classes: {', '.join(run.classes)}; "
        f"train {counts['train']}, val {counts['val']}, test {counts['test']} images"
    )
    if run.pooled:
        where = "head only"
    elif run.start < n_blocks:
        where = f"blocks {run.start}..{n_blocks - 1} of {n_blocks} + head"
    else:
        where = "pooling + head"
    processes = f" x {run.dist.world} processes" if run.dist.active else ""
    run.console.print(
        f"model: {cfg.backbone} ({run.model.pretrained or 'random init'}), "
        f"{dcfg['img_size']} px, {run.n_trainable:,} trainable parameters ({where}); "
        f"{run.mode} training on {run.device}{processes}"
    )


def _why_e2e(cfg: TrainConfig) -> str:
    if cfg.augment != "none":
        return f"augment={cfg.augment}"
    if not cfg.cache_features:
        return "cache_features is off"
    return "nothing frozen to cache"


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


# --------------------------------------------------------------------------------------------
# resume, the run folder, the caches


def resume(run: _Run) -> None:
    """Continue from ``last.pt`` (weights, optimiser, scheduler, history, RNG), or seed a fresh
    run's per-rank random streams."""
    cfg, dist = run.cfg, run.dist
    if run.resume_path is None:
        torch.manual_seed(cfg.seed + 7919 * dist.rank)  # per-rank dropout/augmentation streams
        return
    obj = run.resume_obj if run.resume_obj is not None else _read_resume(cfg)
    run.resume_obj = None
    state = obj[TRAIN_STATE_KEY]
    try:
        run.model.load_state_dict(obj["state_dict"], strict=True)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise TrainError(
            f"{run.resume_path}: cannot resume with this configuration ({exc}); resume with the "
            "run's own config.yaml (architecture, freeze policy and optimizer unchanged)"
        ) from exc
    run.scheduler.lr_lambdas = [run.lr_factor] * len(run.optimizer.param_groups)
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("ema") is None:
        raise TrainError(
            f"{run.resume_path}: the run kept no weight average; resume it with its own "
            "config.yaml (ema_epochs 0)"
        )
    run.ema_step = load_ema_state(run.ema, state.get("ema"))
    run.history = [dict(r) for r in state["history"]]
    run.best = dict(state["best"])
    run.best_logits = run.best.pop("val_logits", None)
    run.best_labels = run.best.pop("val_labels", None)
    run.first_epoch = int(state["epoch"]) + 1
    run.finished = bool(state.get("finished")) and (
        state.get("stop_reason") != "epochs" or run.first_epoch > cfg.epochs
    )
    run.stop_reason = str(state.get("stop_reason") or "")
    set_rng_state(state["rng"])
    if dist.main:
        run.console.print(f"resuming {run.resume_path.parent} after epoch {run.first_epoch - 1}")


def start_run_folder(run: _Run) -> None:
    """Wrap the trainable part for DDP; write ``config.yaml`` and ``splits.csv`` (rank 0)."""
    run.runner = Runner(run.model, run.start, run.pooled)
    run.train_module = run.runner
    if run.dist.active:
        from torch.nn.parallel import DistributedDataParallel

        device = run.device
        run.train_module = DistributedDataParallel(
            run.runner, device_ids=[device.index] if device.type == "cuda" else None
        )
    if run.dist.main:
        run.out.mkdir(parents=True, exist_ok=True)
        save_yaml({**run.cfg.to_dict(), "resume": None}, run.out / "config.yaml")
        write_splits(run.out / "splits.csv", run.splits)


def build_caches(run: _Run) -> None:
    """Validation cache (``tta`` views, every mode) and, in cached mode, the training cache of
    this rank's shard."""
    if run.finished:
        return
    cfg, dist = run.cfg, run.dist
    val_samples = list(run.splits.val)
    if val_samples and run.task.cached_validation:
        mine = [val_samples[i] for i in shard_indices(len(val_samples), dist, pad=False)]
        # As many views as prediction averages (tta), so that the threshold and
        # temperature are fitted on the logits the checkpoint will produce.
        run.val_cache = _make_cache(run, mine, cfg.tta, "validation")
    if run.cached:
        train_samples = list(run.splits.train)
        shard = shard_indices(len(train_samples), dist, pad=True)
        run.train_local = [train_samples[i] for i in shard]
        run.train_cache = _make_cache(run, run.train_local, cfg.cache_views, "training")
        if run.draw_weights is not None:
            run.draw_weights = run.draw_weights[torch.tensor(shard)]


def _make_cache(run: _Run, samples: list, views: int, what: str) -> FeatureCache:
    con, world = run.console, run.dist.world
    task = con.task(f"caching {what}", len(samples) * world)
    t0 = time.perf_counter()
    cache = build_cache(
        run.model,
        run.loader(samples, run.transform_eval, shuffle=False),
        len(samples),
        start=run.start,
        pooled=run.pooled,
        views=views,
        device=run.device,
        channels_last=run.cfg.channels_last,
        autocast=run.autocast,
        spill_dir=run.out / ".cache",
        on_batch=lambda b: con.advance(task, b * world),
    )
    con.done(task)
    rate = len(samples) * views * world / max(time.perf_counter() - t0, 1e-9)
    con.print(
        f"cached {what}: {len(samples) * world} images x {views} view(s) in "
        f"{cache.seconds:.1f} s ({rate:.1f} img/s), "
        f"{cache.nbytes * world / 2**20:.0f} MiB" + (" (memory-mapped)" if cache.path else "")
    )
    run.caches.append(cache)
    run.cache_seconds[what] = round(cache.seconds, 2)
    return cache


def close_caches(run: _Run) -> None:
    for cache in run.caches:
        cache.close()
    if run.dist.main:
        shutil.rmtree(run.out / ".cache", ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The epochs


def run_epochs(run: _Run) -> None:
    """Train, validate and save epoch after epoch until the last one or early stopping."""
    cfg, con = run.cfg, run.console
    epoch_task = con.task("epochs", cfg.epochs)
    con.advance(epoch_task, run.first_epoch - 1)
    train_ds = run.task.dataset(run, list(run.splits.train), run.transform_train)
    for epoch in range(run.first_epoch, cfg.epochs + 1):
        if run.finished:
            break
        t0 = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        loss_sum, correct, seen = train_one_epoch(run, epoch, train_ds)
        train_seconds = time.perf_counter() - t0
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "val_loss": None,
            "val_acc": None,
            "lr": lr,
        }
        with averaged_weights(run.ema, run.model):
            improved = validate(run, row)
        row["seconds"] = time.perf_counter() - t0
        run.history.append(row)
        if cfg.early_stop is not None and run.best["bad_epochs"] >= cfg.early_stop:
            run.finished, run.stop_reason = True, "early_stop"
        elif epoch >= cfg.epochs:
            run.finished, run.stop_reason = True, "epochs"
        if run.dist.main:
            save_epoch(run, row, improved)
            rate = seen / max(train_seconds, 1e-9)
            best_line = improved and bool(run.splits.val)
            con.print(epoch_line(row, cfg.epochs, rate, best_line))
        con.advance(epoch_task, 1)
        run.dist.barrier()
    if run.stop_reason == "early_stop" and run.dist.main:
        con.print(
            f"early stop: validation loss has not improved for {cfg.early_stop} epochs "
            f"(best {run.best['val_loss']:.4f} at epoch {run.best['epoch']})"
        )


def train_one_epoch(run: _Run, epoch: int, train_ds: Any) -> tuple[float, float, float]:
    """One pass over this rank's batches; the loss sum, hits and samples of every rank."""
    cfg, con, task = run.cfg, run.console, run.task
    run.runner.train()
    batches, n_batches = _epoch_batches(run, epoch, train_ds)
    bar = con.task(f"epoch {epoch}/{cfg.epochs}", n_batches)
    set_horizon(run.ema, cfg.ema_epochs, n_batches)
    loss_sum = correct = seen = 0.0
    for batch in batches:
        xb, yb = task.to_device(batch, run.device, cfg.channels_last)
        with run.autocast():
            logits = run.train_module(xb, run.cached)
        loss = task.criterion_loss(run.criterion, logits, yb)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema_step += 1
            run.ema.update(run.model, step=run.ema_step)
        b = int(xb.shape[0])
        loss_sum += float(loss.detach()) * b
        correct += task.hits(logits, yb)
        seen += b
        con.advance(bar, 1, info=f"loss {loss_sum / seen:.4f}")
    con.done(bar)
    run.scheduler.step()
    loss_sum, correct, seen = run.dist.sum([loss_sum, correct, seen], run.device)
    return loss_sum, correct, seen


def _epoch_batches(run: _Run, epoch: int, train_ds: Any) -> tuple[Any, int]:
    """This epoch's batches for this rank (an iterator) and how many there are."""
    from torch.utils.data import DataLoader

    cfg, dist = run.cfg, run.dist
    if run.cached:
        # The training cache already holds this rank's shard: order it locally.
        order = epoch_order(
            len(run.train_local), seed=cfg.seed, epoch=epoch, weights=run.draw_weights
        )
        chunks = split_batches(order, cfg.batch_size, cfg.max_train_batches)
        views = cached_view_choice(
            len(order), run.train_cache.views, seed=cfg.seed, epoch=epoch, rank=dist.rank
        )
        return cached_batches(run.train_cache, chunks, views), len(chunks)
    order = epoch_order(
        len(train_ds),
        seed=cfg.seed,
        epoch=epoch,
        weights=run.draw_weights,
        world=dist.world,
        rank=dist.rank,
    )
    chunks = split_batches(order, cfg.batch_size, cfg.max_train_batches)
    loader = DataLoader(
        train_ds,
        batch_sampler=[c.tolist() for c in chunks],
        num_workers=cfg.workers,
        pin_memory=run.device.type == "cuda",
    )
    return iter(loader), len(chunks)


def validate(run: _Run, row: dict[str, Any]) -> bool:
    """Score the epoch on the validation cache (gathered from every rank, in sample order) into
    ``row``; whether it is the best epoch so far (always, without validation data)."""
    best = run.best
    outputs = run.task.validation_outputs(run)
    if outputs is None:
        best.update(epoch=row["epoch"])
        return True
    logits, labels = outputs
    weight = run.class_weight.cpu() if run.class_weight is not None else None
    row.update(run.task.validate(logits, labels, weight))
    if run.task.improved(row["val_loss"], best["val_loss"]):
        best.update(val_loss=row["val_loss"], epoch=row["epoch"], bad_epochs=0)
        run.best_logits, run.best_labels = logits, labels
        return True
    best["bad_epochs"] = int(best["bad_epochs"]) + 1
    return False


def cached_validation_outputs(run: _Run) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The validation logits of the cache (gathered from every rank, in sample order) and
    their labels; None without validation data."""
    if run.val_cache is None:
        return None
    logits, labels = predict_cached(
        run.runner,
        run.val_cache,
        batch_size=run.cfg.batch_size,
        channels_last=run.cfg.channels_last,
        device=run.device,
        autocast=run.autocast,
    )
    parts = run.dist.gather((logits, labels))
    logits = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    if run.dist.world > 1:  # rank after rank -> the order of the validation samples
        rows = torch.argsort(gathered_order(len(labels), run.dist.world))
        logits, labels = logits[rows], labels[rows]
    return logits, labels


def save_epoch(run: _Run, row: dict[str, Any], improved: bool) -> None:
    """Rank 0: ``model.pt`` when the epoch is the best so far, ``last.pt`` (resumable),
    ``history.csv`` and ``curves.png``."""
    from fracturekit.models import save_checkpoint

    out, epoch = run.out, row["epoch"]
    meta = {**run.base_meta, "epoch": epoch}
    if improved:
        save_checkpoint(out / MODEL_FILE, model_to_save(run.ema, run.model), meta)
    state = {
        "epoch": epoch,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
        "best": {**run.best, "val_logits": run.best_logits, "val_labels": run.best_labels},
        "history": run.history,
        "rng": rng_state(),
        "ema": ema_state(run.ema, run.ema_step),
        "finished": run.finished,
        "stop_reason": run.stop_reason,
    }
    save_last(out / LAST_FILE, run.model, meta, state)
    write_history(out / "history.csv", run.history)
    plot_curves(out / "curves.png", run.history, run.best["epoch"])


# --------------------------------------------------------------------------------------------
# finalize: calibration and the final model.pt (rank 0)


def finalize(run: _Run) -> dict[str, Any]:
    """Reload the best epoch, let the task fit its calibration on that epoch's validation
    outputs, and rewrite ``model.pt`` with the calibration, metrics and validation outputs."""
    from fracturekit.models import read_checkpoint

    figures = {
        "mode": run.mode,
        "stop_reason": run.stop_reason or "epochs",
        "world_size": run.dist.world,
        "cache_seconds": run.cache_seconds,
        "epoch_seconds": [round(float(r["seconds"]), 3) for r in run.history],
        "train_seconds": round(time.perf_counter() - run.t_start, 2),
    }
    ckpt = run.out / MODEL_FILE
    run.model.load_state_dict(read_checkpoint(ckpt)["state_dict"])
    best, logits, labels = run.best, run.best_logits, run.best_labels
    meta = {**run.base_meta, "epoch": best.get("epoch")}
    metrics: dict[str, Any] = {"best_epoch": best.get("epoch"), "epochs_run": len(run.history)}
    if logits is None or labels is None or len(labels) == 0 or len(run.splits.val) == 0:
        run.note("no validation data: no early stopping, threshold 0.5, no temperature scaling")
        last = run.history[-1] if run.history else {}
        metrics.update(train_loss=last.get("train_loss"), train_acc=last.get("train_acc"))
        metrics.update(threshold=None, temperature=1.0)
    else:
        logits, labels = run.task.final_outputs(run, logits, labels)
        metrics["val_loss"] = best.get("val_loss")
        calibrate_into(run, logits, labels, meta, metrics)
    return save_final(run, meta, {**metrics, **figures})


def calibrate_into(
    run: _Run, outputs: Any, truth: Any, meta: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """Let the task fit its threshold and temperature on validation ``outputs``/``truth`` and
    put them, its metrics and the validation record (what ``--prior`` re-weights) into
    ``meta`` and ``metrics``."""
    temperature, threshold, scores = run.task.calibrate(
        run.cfg, outputs, truth, run.classes, run.positive, run.note
    )
    metrics.update(scores)
    meta.update({k: scores[k] for k in run.task.meta_keys if k in scores})
    metrics["note"] = (
        "validation metrics: the threshold and temperature were fitted on these images, so "
        "they are optimistic; use `fracturekit evaluate` on a test set for honest figures"
    )
    meta["validation"] = run.task.validation_record(outputs, truth, temperature)
    metrics.update(threshold=threshold, temperature=temperature)


def save_final(run: _Run, meta: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.pt`` (``run.model`` with ``meta``, its threshold and temperature taken
    from ``metrics``), print the summary line; return ``metrics``."""
    from fracturekit.models import save_checkpoint

    meta.update(temperature=metrics["temperature"], threshold=metrics["threshold"], metrics=metrics)
    save_checkpoint(run.out / MODEL_FILE, run.model, meta)
    _print_summary(run, metrics)
    return metrics


def _print_summary(run: _Run, metrics: dict[str, Any]) -> None:
    threshold, temperature = metrics["threshold"], metrics["temperature"]
    if threshold is not None or "f1" in metrics:
        members = metrics.get("members")
        parts = [
            f"mean of {len(members)} members" if members else f"best epoch {metrics['best_epoch']}"
        ]
        for key in ("val_loss", "accuracy", "f1", "roc_auc"):
            if metrics.get(key) is not None:
                parts.append(f"{key} {metrics[key]:.4f}")
        if threshold is not None:
            parts.append(f"threshold {threshold:.3f} ({run.positive})")
        parts.append(f"temperature {temperature:.3f}")
        run.console.print("validation: " + ", ".join(parts))
    run.console.print(f"model: {run.out / MODEL_FILE}")
