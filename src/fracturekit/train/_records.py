"""What a run leaves behind: history.csv, curves.png, and the resumable last.pt.

``last.pt`` is a complete fracturekit checkpoint (``load_checkpoint`` and ``Predictor`` read it)
plus a ``train_state`` entry with everything needed to continue: optimizer, scheduler and
gradient-scaler states, the epoch, the best score so far (with that epoch's validation logits,
for calibration at the end), the history and the random-number generators' states. All of it is
tensors and plain Python values, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fracturekit._files import atomic_write, atomic_write_text

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
TRAIN_STATE_KEY = "train_state"


def write_history(path: Path, history: Sequence[Mapping[str, Any]]) -> Path:
    """``history.csv``: one row per epoch, the columns of ``HISTORY_COLUMNS``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _cell(row.get(k)) for k in HISTORY_COLUMNS})
    return atomic_write_text(path, buf.getvalue())


def write_splits(path: Path, splits: Any) -> Path:
    """``splits.csv``: every image of the run with its class and split (``path,label,split,
    group``, and ``mask`` when an image has one), a manifest ``fracturekit evaluate`` and
    ``load_dataset`` read back."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    samples_by_split = splits.splits()
    masks = any(s.mask is not None for v in samples_by_split.values() for s in v)
    writer.writerow(["path", "label", "split", "group", *(["mask"] if masks else [])])
    for name, samples in samples_by_split.items():
        for s in samples:
            group = "" if s.group is None else s.group
            row = [str(Path(s.path).resolve()), s.class_name, name, group]
            if masks:
                row.append("" if s.mask is None else str(Path(s.mask).resolve()))
            writer.writerow(row)
    return atomic_write_text(path, buf.getvalue())


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def plot_curves(path: Path, history: Sequence[Mapping[str, Any]], best_epoch: int | None) -> Path:
    """``curves.png``: loss and accuracy per epoch, training and validation (the seeds' figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    epochs = [int(r["epoch"]) for r in history]
    for ax, key, title in (
        (fig.add_subplot(1, 2, 1), "loss", "Loss"),
        (fig.add_subplot(1, 2, 2), "acc", "Accuracy"),
    ):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [r.get(f"{split}_{key}") for r in history]
            pts = [(e, y) for e, y in zip(epochs, ys, strict=True) if y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, ms=3, label=f"{split}")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"best (epoch {best_epoch})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        if key == "acc":
            ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png")

    return atomic_write(path, write)


# --------------------------------------------------------------------------------------------
# Random-number generator states as plain values


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# --------------------------------------------------------------------------------------------
# last.pt


def save_last(path: Path, model: Any, meta: Mapping[str, Any], train_state: dict) -> Path:
    """A loadable checkpoint of the current weights plus ``train_state`` (atomic)."""
    from fracturekit.models._checkpoint import checkpoint_payload

    payload = {**checkpoint_payload(model, meta), TRAIN_STATE_KEY: train_state}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


# What resuming needs from train_state (a file without one of them cannot continue the run).
RESUME_KEYS = ("epoch", "optimizer", "scheduler", "history", "best", "rng")


def load_last(path: Path) -> dict:
    """The checkpoint dict of ``last.pt`` (validated), with a complete ``train_state``.

    Raises:
        FileNotFoundError: no ``last.pt``.
        ValueError: the file is empty, unreadable, not a fracturekit checkpoint, or holds no
            (or an incomplete) training state; the one-line message names the file.
    """
    from fracturekit.models import read_checkpoint
    from fracturekit.models._checkpoint import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), cannot resume from it")
    try:
        obj = read_checkpoint(path)
    except CheckpointError as exc:
        reason = exc.reason.splitlines()[0] if exc.reason else "unreadable"
        if "not a readable PyTorch checkpoint" in reason:
            reason = "not a readable PyTorch checkpoint (damaged or not written by fracturekit)"
        raise ValueError(f"{path}: {reason}; cannot resume from it") from exc
    state = obj.get(TRAIN_STATE_KEY)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds no training state to resume from")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise ValueError(
            f"{path}: training state lacks {', '.join(missing)} (damaged or from another "
            "version); cannot resume from it"
        )
    return obj
