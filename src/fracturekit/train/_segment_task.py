"""Segmentation as a training task: images and masks in, a pixel-probability segmenter out.

A batch is ``(images, (masks, weight))``: ``masks`` ``[N, 1, H, W]`` of 0/1 and ``weight``
``[N]`` of 0 or 1. Where the truth comes from:

* an image with a mask file: its mask;
* an image of a negative class (``no_crack``, or every class but ``--positive``) without a
  mask file: an empty mask (nothing to find is a truth too);
* an image of a positive class without a mask file: no pixel truth. It is named once in a note
  and weighted 0, so it leaves the pixel loss and the pixel metrics; it never counts as empty.

The best epoch is the one with the lowest validation loss (the training loss itself, BCE +
Dice by default, over the validation images): unlike pixel F1 it needs no threshold (the
threshold is chosen after training, on the best epoch) and it moves smoothly with a few hundred
validation images. After training, the pixel threshold maximises the pooled pixel F1 over a
grid on validation, and ``min_area`` (unless set) maximises the image-level F1 of the rule
"positive when a connected piece of at least ``min_area`` pixels remains".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fracturekit.config import TrainConfig

# Pixel thresholds tried on validation (pooled pixel F1).
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
# Validation probabilities are kept as bytes (0..255): 400 tiles of 224 px take 20 MB.
_LEVELS = 255
_NAMED = 10  # samples named in the note about positive images without a mask


def negative_classes(classes: Sequence[str], positive: str | None) -> set[str]:
    """The classes whose images without a mask file are empty masks.

    With a positive class: every other class. Otherwise (several classes, none chosen) the
    classes named like a negative (``calibration.looks_negative``); one class: none.
    """
    from fracturekit.calibration import looks_negative

    if positive is not None:
        return {c for c in classes if c != positive}
    if len(classes) == 1:
        return set()
    return {c for c in classes if looks_negative(c)}


def pixel_weights(samples: Sequence[Any], negatives: set[str]) -> list[float]:
    """1 for a sample with pixel truth (a mask file, or a negative class), else 0."""
    return [1.0 if s.mask is not None or s.class_name in negatives else 0.0 for s in samples]


class MaskedSamples:
    """Map-style data set: ``(image, mask, weight)`` of each sample (picklable for workers)."""

    def __init__(self, samples: Sequence[Any], transform: Any, channels: int, negatives: set[str]):
        from fracturekit.data import ImageDataset

        self.images = ImageDataset(samples, transform, channels=channels, with_masks=True)
        self.weights = pixel_weights(samples, negatives)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x, _, mask = self.images[index]
        return x, (mask, torch.tensor(self.weights[index]))


class SegmentTask:
    """Pixel segmentation (``task=segment``): see the module docstring."""

    name = "segment"
    cached_validation = False
    meta_keys = ("min_area",)

    # ---- data and model ------------------------------------------------------------------

    def positive(self, cfg: TrainConfig, classes: list[str], note: Callable[[str], None]) -> Any:
        """The class whose images hold cracks (None when several classes and none chosen)."""
        from fracturekit.calibration import default_positive
        from fracturekit.train._loop import TrainError

        if cfg.positive is not None and cfg.positive not in classes:
            raise TrainError(f"positive={cfg.positive!r} is not a class ({', '.join(classes)})")
        if cfg.positive is not None or len(classes) > 2:
            return cfg.positive
        return classes[0] if len(classes) == 1 else default_positive(classes)

    def check_data(self, cfg: TrainConfig, splits: Any) -> None:
        """A segmenter needs images with masks; one class (a folder of images) is enough."""
        from fracturekit.train._loop import TrainError

        if not any(s.mask is not None for s in splits.train):
            raise TrainError(
                f"{cfg.data}: no training image has a mask: put masks/<image stem>.png beside "
                "the class folders or give a CSV mask column"
            )

    def build_model(self, run: Any) -> None:
        """The segmenter (seeded), its first encoder stages frozen, on the device."""
        from fracturekit.models import build_segmenter, freeze_encoder
        from fracturekit.models._segment import segment_data_config
        from fracturekit.train._loop import built_with_notes

        cfg = run.cfg
        run.model = built_with_notes(run, build_segmenter, decoder=cfg.decoder)
        n_stages = len(run.model.encoder_stages())
        frozen = {"none": 0, "all-but-head": n_stages}.get(
            cfg.freeze, max(0, n_stages - int(cfg.train_last or 0))
        )
        run.n_trainable = freeze_encoder(run.model, frozen)
        run.start, run.pooled, run.cached = frozen, False, False
        try:
            run.data_cfg = segment_data_config(run.model, cfg.img_size)
        except ValueError as exc:
            from fracturekit.train._loop import TrainError

            raise TrainError(str(exc)) from exc
        if cfg.tile is not None and cfg.tile > run.data_cfg["img_size"]:
            run.note(f"tile={cfg.tile} is larger than img_size: training on whole images")
        run.model.to(run.device)
        if cfg.channels_last:
            run.model.to(memory_format=torch.channels_last)

    def train_crop(self, cfg: TrainConfig) -> int | None:
        return cfg.tile

    def dataset(self, run: Any, samples: Sequence[Any], transform: Any) -> MaskedSamples:
        return MaskedSamples(samples, transform, run.cfg.channels, self._negatives(run))

    def _negatives(self, run: Any) -> set[str]:
        return negative_classes(run.classes, run.positive)

    def loss(
        self, cfg: TrainConfig, samples: Sequence[Any], n_classes: int, device: torch.device
    ) -> tuple[nn.Module, None]:
        """The pixel loss (``cfg.seg_loss``); it weighs samples itself (no class weights)."""
        from fracturekit.models import build_seg_loss

        return build_seg_loss(cfg.seg_loss).to(device), None

    def describe_data(self, run: Any) -> None:
        """Name the positive images without a mask file (left out of the pixel loss)."""
        negatives = self._negatives(run)
        missing = [
            s for s in run.splits.all_samples() if s.mask is None and s.class_name not in negatives
        ]
        if missing:
            names = ", ".join(str(s.path) for s in missing[:_NAMED])
            more = f" and {len(missing) - _NAMED} more" if len(missing) > _NAMED else ""
            run.note(
                f"{len(missing)} image(s) of a positive class have no mask file and are left out "
                f"of the pixel loss and metrics (never taken as empty): {names}{more}"
            )

    def meta(self, run: Any) -> dict[str, Any]:
        """The segment keys of the checkpoint meta (threshold and min_area come at the end)."""
        classes = list(run.classes)
        if len(classes) == 2 and run.positive is not None:
            negative = next(c for c in classes if c != run.positive)
            named = [negative, run.positive]
        else:
            named = ["background", run.positive or "crack"]
        return {
            "task": self.name,
            "decoder": run.cfg.decoder,
            "classes": named,
            "positive": named[1],
            "min_area": int(run.cfg.min_area or 0),
            "data_classes": classes,
        }

    # ---- batches -------------------------------------------------------------------------

    def to_device(
        self, batch: Any, device: torch.device, channels_last: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        xb, (masks, weight) = batch
        xb = xb.to(device, non_blocking=True)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, (masks.to(device, non_blocking=True), weight.to(device, non_blocking=True))

    def criterion_loss(self, criterion: nn.Module, logits: torch.Tensor, target: Any) -> Any:
        masks, weight = target
        return criterion(logits.float(), masks, weight)

    def hits(self, logits: torch.Tensor, target: Any) -> float:
        """Sum over the batch of each image's share of pixels right at 0.5 (pixel accuracy)."""
        masks, _ = target
        right = ((logits.detach() >= 0) == (masks >= 0.5)).float()
        return float(right.mean(dim=(1, 2, 3)).sum())

    # ---- validation ----------------------------------------------------------------------

    def validation_outputs(self, run: Any, views: int = 1) -> tuple[dict, dict] | None:
        """Probabilities (bytes) and masks of the validation images, their mean loss, each
        image's most probable pixel (float) and image-level truth (for ``--prior``); the pixel
        logits averaged over ``views`` flipped views (``models.view_maps``)."""
        samples = list(run.splits.val)
        if not samples:
            return None
        from torch.utils.data import DataLoader

        from fracturekit.masks import image_is_positive
        from fracturekit.models import view_maps

        named = self.meta(run)["classes"]
        data = self.dataset(run, samples, run.transform_eval)
        loader = DataLoader(data, batch_size=run.cfg.batch_size, num_workers=run.cfg.workers)
        probs, masks, weights, tops = [], [], [], []
        loss_sum = norm = 0.0
        run.model.eval()
        with torch.inference_mode():
            for batch in loader:
                xb, (mb, wb) = self.to_device(batch, run.device, run.cfg.channels_last)
                with run.autocast():
                    logits = view_maps(lambda v: run.model(v).float(), xb, views)
                n = float(wb.sum())
                if n > 0:
                    loss_sum += float(run.criterion(logits, mb, wb)) * n
                    norm += n
                probs.append(torch.round(torch.sigmoid(logits[:, 0]) * _LEVELS).byte().cpu())
                tops.append(torch.sigmoid(logits.amax(dim=(1, 2, 3)).double()).cpu())
                masks.append((mb[:, 0] >= 0.5).cpu())
                weights.append(wb.cpu())
        run.model.train()
        outputs = {
            "probs": torch.cat(probs),
            "loss": loss_sum / max(norm, 1e-12),
            "top": torch.cat(tops),
        }
        truth = {"masks": torch.cat(masks), "weight": torch.cat(weights)}
        truth["image"] = torch.tensor(
            [
                image_is_positive(sample.class_name, mask.numpy(), named, named[1])
                for sample, mask in zip(samples, truth["masks"], strict=True)
            ],
            dtype=torch.bool,
        )
        return outputs, truth

    def final_outputs(self, run: Any, outputs: dict, truth: dict) -> tuple[dict, dict]:
        """The best epoch's validation outputs as the checkpoint will predict: with ``tta`` > 1
        computed again on the reloaded best model over that many views (epochs are compared on
        one view, which is 1/``tta`` of the cost), so the threshold and ``min_area`` are fitted
        on the averaged maps."""
        if run.cfg.tta == 1:
            return outputs, truth
        return self.validation_outputs(run, run.cfg.tta) or (outputs, truth)

    def validate(self, outputs: dict, truth: dict, weight: Any) -> dict[str, float]:
        """``val_loss`` (the score, lower is better) and ``val_acc``: pooled pixel F1 at 0.5."""
        probs, masks = _kept(outputs, truth)
        return {"val_loss": float(outputs["loss"]), "val_acc": _pixel_f1(probs, masks, 0.5)}

    def improved(self, score: float, best: float | None) -> bool:
        return best is None or score < best - 1e-7

    def calibrate(
        self,
        cfg: TrainConfig,
        outputs: dict,
        truth: dict,
        classes: list[str],
        positive: str | None,
        note: Callable[[str], None],
    ) -> tuple[float, float | None, dict[str, Any]]:
        """Pixel threshold (max pooled pixel F1 on validation), ``min_area`` and the validation
        segmentation metrics at that threshold."""
        from fracturekit.seg_metrics import segmentation_metrics

        probs, masks = _kept(outputs, truth)
        if len(probs) == 0:
            note("no validation image has pixel truth: the pixel threshold stays 0.5")
            return 1.0, 0.5, {"min_area": int(cfg.min_area or 0)}
        scores = {t: _pixel_f1(probs, masks, t) for t in THRESHOLD_GRID}
        threshold = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
        maps = [p.numpy().astype(np.float32) / _LEVELS for p in probs]
        metrics: dict[str, Any] = {
            "segmentation": segmentation_metrics(maps, [m.numpy() for m in masks], threshold)
        }
        metrics["min_area"] = self._min_area(cfg, maps, [m.numpy() for m in masks], threshold)
        outputs["image_scores"] = image_scores(outputs, threshold, metrics["min_area"])
        return 1.0, float(threshold), metrics

    def _min_area(
        self, cfg: TrainConfig, maps: list[np.ndarray], masks: list[np.ndarray], threshold: float
    ) -> int:
        """``cfg.min_area`` when set, else the image-level F1 choice on validation (1 when the
        validation images are all of one kind)."""
        from fracturekit.calibration import choose_threshold

        if cfg.min_area:
            return int(cfg.min_area)
        truth = np.array([m.any() for m in masks])
        if truth.all() or not truth.any():
            return 1
        largest = np.array([largest_piece(p >= threshold) for p in maps], dtype=float)
        return max(1, math.ceil(choose_threshold(truth, largest, metric="f1")))

    def validation_record(self, outputs: dict, truth: dict, temperature: float) -> dict[str, Any]:
        """``meta["validation"]``: the counts, and each image's truth (class index: 1 for the
        positive class) and image-score probabilities ``[1 - s, s]`` (``image_scores``), the
        scores ``--prior`` re-weights (the probability maps are too large to keep)."""
        weight = truth["weight"]
        record: dict[str, Any] = {"n": int(len(weight)), "with_pixel_truth": int(weight.sum())}
        scores = outputs.get("image_scores")
        if scores is not None and "image" in truth:
            record["labels"] = [int(t) for t in truth["image"]]
            record["probabilities"] = [[1.0 - float(v), float(v)] for v in scores]
        return record


def image_scores(outputs: dict, threshold: float, min_area: int) -> np.ndarray:
    """Each validation image's score as ``Predictor.segment_record`` gives it
    (``masks.segment_image_score``): its most probable pixel, just below ``threshold`` when no
    piece of ``min_area`` pixels passes it."""
    from fracturekit.masks import drop_small_pieces, segment_image_score

    level = round(threshold * _LEVELS)
    return np.array(
        [
            segment_image_score(
                np.array([float(top)]), drop_small_pieces((p >= level).numpy(), min_area), threshold
            )
            for p, top in zip(outputs["probs"], outputs["top"], strict=True)
        ]
    )


def largest_piece(mask: np.ndarray) -> int:
    """Pixels of the largest 8-connected piece of a boolean mask (0 when empty)."""
    from scipy import ndimage

    if not mask.any():
        return 0
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return int(np.bincount(labels.ravel())[1:].max()) if n else 0


def _kept(outputs: dict, truth: dict) -> tuple[torch.Tensor, torch.Tensor]:
    keep = truth["weight"] > 0
    return outputs["probs"][keep], truth["masks"][keep]


def _pixel_f1(probs: torch.Tensor, masks: torch.Tensor, threshold: float) -> float:
    """Pooled pixel F1 at ``threshold`` of byte probabilities (1.0 when nothing to find and
    nothing found, as ``seg_metrics``)."""
    pred = probs >= round(threshold * _LEVELS)
    tp = int((pred & masks).sum())
    fp = int((pred & ~masks).sum())
    fn = int((~pred & masks).sum())
    if tp + fp + fn == 0:
        return 1.0
    return 2.0 * tp / (2 * tp + fp + fn)
