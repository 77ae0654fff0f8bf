"""Several segmenters as one checkpoint: ``train --members K``.

Member ``i`` is an ordinary run in ``out/members/<i>/`` with seed ``seed + i`` and the split
of ``split_seed`` (default: ``seed``), so every member trains, validates and is tested on the
same images; member 0 is exactly the run ``train`` gives without ``--members``. Then the members'
mean (``models.SegmenterMean``: the mean of their pixel logits) is calibrated as one model on
that validation split (pixel threshold, ``min_area``, the stored validation scores that
``--prior`` re-weights) and written to ``out/model.pt``, which ``predict``, ``evaluate``,
``serve``, ``export`` and ``scan`` take like any segmenter checkpoint.

``--resume out`` continues where the run stopped: finished members are only calibrated again,
an interrupted one continues from its ``last.pt``, missing ones train.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from fracturekit.config import TrainConfig, save_yaml, split_options
from fracturekit.contracts import LAST_FILE, MODEL_FILE
from fracturekit.train._console import Console
from fracturekit.train._dist import Dist

MEMBERS_DIR = "members"


def member_folder(out: str | Path, index: int) -> Path:
    """Where member ``index`` of the run in ``out`` lives."""
    return Path(out) / MEMBERS_DIR / str(index)


def member_config(cfg: TrainConfig, out: str | Path, index: int) -> TrainConfig:
    """Member ``index``'s configuration: seed ``seed + index`` on the split of ``split_seed``
    (default ``seed``), resuming its own folder when the whole run resumes and it has begun."""
    folder = member_folder(out, index)
    resume = str(folder) if cfg.resume is not None and (folder / LAST_FILE).is_file() else None
    return dataclasses.replace(
        cfg,
        members=1,
        seed=cfg.seed + index,
        split_seed=cfg.seed if cfg.split_seed is None else cfg.split_seed,
        resume=resume,
    )


def train_members(
    cfg: TrainConfig,
    out: Path,
    dist: Dist,
    device: Any,
    progress: bool,
    overwrite: bool,
    t_start: float,
) -> Any:
    """Train ``cfg.members`` segmenters and write their mean as ``out/model.pt`` (see the
    module docstring), every member in the caller's process group ``dist``. Returns a
    ``TrainResult`` whose ``history`` holds every member's epochs (with a ``member`` column)
    and whose ``last_checkpoint`` is the last member's ``last.pt``.
    """
    from fracturekit.train._loop import TrainResult, _prepare_run_dir, train_run

    if dist.main:
        _prepare_run_dir(out, cfg, overwrite, folders=(MEMBERS_DIR,))
        out.mkdir(parents=True, exist_ok=True)
        save_yaml({**cfg.to_dict(), "resume": None}, out / "config.yaml")
    dist.barrier()
    console = Console(progress and dist.main)
    results = []
    for index in range(cfg.members):
        member = member_config(cfg, out, index)
        console.print(f"member {index + 1} of {cfg.members} (seed {member.seed})")
        folder = member_folder(out, index)
        results.append(train_run(member, folder, dist, device, progress, False, t_start))
    metrics: dict[str, Any] = {}
    if dist.main:
        metrics = _combine(cfg, out, results, device, dist, console, t_start)
    metrics = dist.broadcast(metrics)
    history = [{"member": i, **row} for i, r in enumerate(results) for row in r.history]
    return TrainResult(
        checkpoint=out / MODEL_FILE,
        last_checkpoint=results[-1].last_checkpoint,
        history=history,
        metrics=metrics,
        run_dir=out,
        mode=results[-1].mode,
        n_test=results[-1].n_test,
        seconds=time.perf_counter() - t_start,
        config=cfg,
        notes=[note for r in results for note in r.notes],
    )


def _combine(
    cfg: TrainConfig,
    out: Path,
    results: list[Any],
    device: Any,
    dist: Dist,
    console: Console,
    t_start: float,
) -> dict[str, Any]:
    """Calibrate the mean of the members' best checkpoints on the run's validation split and
    write it to ``out/model.pt`` (rank 0)."""
    from fracturekit.models import SegmenterMean, load_checkpoint
    from fracturekit.models._segment import segment_data_config
    from fracturekit.train._loop import (
        TrainError,
        _build_objective,
        _Run,
        _set_device_and_precision,
        calibrate_into,
        load_splits,
        save_final,
    )
    from fracturekit.train._records import write_splits
    from fracturekit.train._tasks import TASKS

    members, member_meta = [], []
    for result in results:
        model, meta = load_checkpoint(result.checkpoint, map_location="cpu")
        if split_options(meta.get("config") or {}) != split_options(results[0].config.to_dict()):
            raise TrainError(f"{result.checkpoint}: trained on another split than member 0")
        members.append(model)
        member_meta.append(meta)
    run = _Run(
        cfg=cfg,
        out=out,
        dist=dist,
        device=device,
        console=console,
        task=TASKS[cfg.task],
        t_start=t_start,
    )
    run.splits = load_splits(cfg, run.task)
    run.classes = list(run.splits.classes)
    run.positive = run.task.positive(cfg, run.classes, run.note)
    _set_device_and_precision(run)
    run.model = SegmenterMean(members).to(device)
    run.data_cfg = segment_data_config(run.model, cfg.img_size)
    _build_objective(run)
    if not run.splits.val:
        raise TrainError(f"{cfg.data}: members need validation images to be calibrated as one")
    console.print(f"calibrating the mean of {len(members)} members on the validation images")
    outputs, truth = run.task.validation_outputs(run, cfg.tta)
    meta = dict(run.base_meta)
    metrics: dict[str, Any] = {
        "best_epoch": None,
        "epochs_run": sum(len(r.history) for r in results),
        "val_loss": float(outputs["loss"]),
        "members": [
            {
                "seed": r.config.seed,
                "best_epoch": m.get("metrics", {}).get("best_epoch"),
                "val_loss": m.get("metrics", {}).get("val_loss"),
                "threshold": m.get("threshold"),
            }
            for r, m in zip(results, member_meta, strict=True)
        ],
    }
    calibrate_into(run, outputs, truth, meta, metrics)
    metrics["train_seconds"] = round(time.perf_counter() - t_start, 2)
    write_splits(out / "splits.csv", run.splits)
    return save_final(run, meta, metrics)
