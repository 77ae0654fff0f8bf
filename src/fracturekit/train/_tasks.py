"""What a training task is: one row of ``TASKS`` per kind of model the loop can train.

The loop (``_loop``) is the same for every task; a task says what a batch holds and how it
reaches the device, the loss, what validation measures (and the score that picks the best
epoch), and what the final checkpoint stores beside the weights (calibration, metrics, the
validation outputs). Two rows: ``classify`` (below) and ``segment``
(``_segment_task.SegmentTask``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from fracturekit.config import TrainConfig

# Decimals of the validation probabilities stored in the checkpoint meta.
PROBABILITY_DECIMALS = 6


class ClassifyTask:
    """Image classification: a batch is (images or cached activations, class indices), the loss
    is (class-weighted, label-smoothed) cross-entropy, the score is the validation loss, and the
    checkpoint stores a temperature, a decision threshold (binary tasks), the validation metrics
    and the validation labels and probabilities."""

    name = "classify"
    cached_validation = True  # validation runs on a cache of the frozen prefix
    meta_keys: tuple[str, ...] = ()  # calibration results copied into the meta

    def check_data(self, cfg: TrainConfig, splits: Any) -> None:
        """A classifier needs two classes or more."""
        from fracturekit.train._loop import TrainError

        if len(splits.classes) < 2:
            raise TrainError(
                f"{cfg.data}: found one class ({', '.join(splits.classes)}); a classifier needs "
                "two or more class folders (or labels)"
            )

    def build_model(self, run: Any) -> None:
        from fracturekit.train._loop import build_classifier

        build_classifier(run)

    def train_crop(self, cfg: TrainConfig) -> int | None:
        return None

    def dataset(self, run: Any, samples: Sequence[Any], transform: Any) -> Any:
        from fracturekit.data import ImageDataset

        return ImageDataset(list(samples), transform, channels=run.cfg.channels)

    def describe_data(self, run: Any) -> None:
        return None

    def meta(self, run: Any) -> dict[str, Any]:
        return {}

    def criterion_loss(self, criterion: nn.Module, logits: torch.Tensor, target: Any) -> Any:
        return criterion(logits.float(), target)

    def validation_outputs(self, run: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Validation logits (from the cache) and labels, in sample order; None without any."""
        from fracturekit.train._loop import cached_validation_outputs

        return cached_validation_outputs(run)

    def final_outputs(self, run: Any, logits: torch.Tensor, labels: torch.Tensor) -> tuple:
        """The best epoch's validation outputs for calibration: already over ``tta`` views (the
        validation cache holds that many)."""
        return logits, labels

    def positive(self, cfg: TrainConfig, classes: list[str], note: Callable[[str], None]) -> Any:
        """The positive class of a binary task (None otherwise)."""
        from fracturekit.train._loop import TrainError

        if len(classes) == 2:
            positive = cfg.positive or default_positive(classes)
            if positive not in classes:
                raise TrainError(f"positive={positive!r} is not a class ({', '.join(classes)})")
            return positive
        if cfg.positive is not None:
            note(f"positive={cfg.positive!r} ignored: {len(classes)} classes, not a binary task")
        return None

    def loss(
        self, cfg: TrainConfig, samples: Sequence[Any], n_classes: int, device: torch.device
    ) -> tuple[nn.Module, torch.Tensor | None]:
        """The training criterion and its class weights (``balance=weights``; else None)."""
        from fracturekit.data import class_weights

        weight = class_weights(samples, n_classes).to(device) if cfg.balance == "weights" else None
        criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        return criterion, weight

    def to_device(
        self, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, channels_last: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, class indices) of a batch on ``device``."""
        xb, yb = batch
        xb = xb.to(device, non_blocking=True)
        yb = yb.to(device, non_blocking=True)
        if channels_last and xb.ndim == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """Correct predictions in a training batch (for the training accuracy)."""
        return float((logits.detach().argmax(1) == targets).sum())

    def validate(
        self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None
    ) -> dict[str, float]:
        """The epoch's validation figures; ``val_loss`` is the score (lower is better)."""
        total, norm = cross_entropy_sum(logits, labels, weight)
        return {
            "val_loss": total / max(norm, 1e-12),
            "val_acc": float((logits.argmax(1) == labels).float().mean()),
        }

    def improved(self, score: float, best: float | None) -> bool:
        return best is None or score < best - 1e-7

    def calibrate(
        self,
        cfg: TrainConfig,
        logits: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str],
        positive: str | None,
        note: Callable[[str], None],
    ) -> tuple[float, float | None, dict[str, Any]]:
        """Temperature, decision threshold and validation metrics from the best epoch's
        validation logits."""
        from fracturekit.models import logits_to_proba

        temperature, threshold = 1.0, None
        if cfg.calibrate:
            temperature = fit_temperature(logits, labels)
        if positive is not None:
            pos = classes.index(positive)
            p_pos = logits_to_proba(logits, temperature)[:, pos].numpy()
            truth = labels.numpy() == pos
            if truth.any():
                threshold = choose_threshold(
                    truth, p_pos, metric=cfg.threshold_metric, target_recall=cfg.target_recall
                )
            else:
                note("validation holds no positive image: the threshold stays 0.5")
        metrics = classification_metrics(
            logits, labels, classes, positive=positive, temperature=temperature, threshold=threshold
        )
        if cfg.calibrate:
            metrics["ece_uncalibrated"] = float(
                expected_calibration_error(logits_to_proba(logits).numpy(), labels.numpy())
            )
        return temperature, threshold, metrics

    def validation_record(
        self, logits: torch.Tensor, labels: torch.Tensor, temperature: float
    ) -> dict[str, list]:
        """``meta["validation"]``: the true class indices and the calibrated probabilities (what
        the deployed model gives, TTA views averaged) of the validation samples, in their
        order."""
        from fracturekit.models import logits_to_proba

        proba = logits_to_proba(logits, temperature).numpy()
        return {
            "labels": [int(v) for v in labels.tolist()],
            "probabilities": [
                [round(float(p), PROBABILITY_DECIMALS) for p in row] for row in proba
            ],
        }


def _tasks() -> dict[str, Any]:
    from fracturekit.train._segment_task import SegmentTask

    return {"classify": ClassifyTask(), "segment": SegmentTask()}


TASKS: dict[str, Any] = _tasks()


def cross_entropy_sum(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None
) -> tuple[float, float]:
    """Sum of (class-weighted) cross-entropy and the normaliser of its mean."""
    loss = nn.functional.cross_entropy(
        logits.float(), labels, weight=weight, reduction="sum"
    ).item()
    norm = float(weight[labels].sum()) if weight is not None else float(len(labels))
    return loss, norm


def classification_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    *,
    positive: str | None,
    temperature: float,
    threshold: float | None,
) -> dict[str, Any]:
    """Accuracy, F1, ROC AUC... of calibrated validation probabilities at the decision rule."""
    from sklearn.metrics import balanced_accuracy_score

    from fracturekit.models import logits_to_proba

    y = labels.numpy()
    proba = logits_to_proba(logits, temperature).numpy()
    out: dict[str, Any] = {"n": int(len(y))}
    if len(classes) == 2 and positive is not None:
        pos = classes.index(positive)
        pred_pos = proba[:, pos] >= (threshold if threshold is not None else 0.5)
        pred = np.where(pred_pos, pos, 1 - pos)
        out["accuracy"] = float((pred == y).mean())
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
        out.update(_binary_scores(y == pos, pred_pos, proba[:, pos]))
    else:
        pred = proba.argmax(axis=1)
        out["accuracy"] = float((pred == y).mean())
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
        out.update(_multiclass_scores(y, pred, proba, len(classes)))
    out["ece"] = float(expected_calibration_error(proba, y))
    return out


def _binary_scores(truth: np.ndarray, pred_pos: np.ndarray, p_pos: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    return {
        "precision": float(precision_score(truth, pred_pos, zero_division=0)),
        "recall": float(recall_score(truth, pred_pos, zero_division=0)),
        "f1": float(f1_score(truth, pred_pos, zero_division=0)),
        "roc_auc": float(roc_auc_score(truth, p_pos)) if len(np.unique(truth)) == 2 else None,
    }


def _multiclass_scores(
    y: np.ndarray, pred: np.ndarray, proba: np.ndarray, n_classes: int
) -> dict[str, Any]:
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    out: dict[str, Any] = {
        "f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "precision": float(precision_score(y, pred, average="macro", zero_division=0)),
        "recall": float(recall_score(y, pred, average="macro", zero_division=0)),
    }
    try:
        out["roc_auc"] = (
            float(roc_auc_score(y, proba, multi_class="ovr", labels=list(range(n_classes))))
            if len(np.unique(y)) == n_classes
            else None
        )
    except ValueError:
        out["roc_auc"] = None
    return out
