"""The one inference path: ``Predictor.from_checkpoint(path)``.

The CLI (``predict``, ``scan``, ``evaluate``) and the web service all classify images through
:class:`Predictor`, so a checkpoint is always run with the preprocessing, temperature and decision
threshold stored in it. Two backends share everything but the forward pass: PyTorch (``torch``)
and ONNX Runtime (``onnx``, from a file written by ``fracturekit export``, whose metadata carries
the same description as the checkpoint).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from fracturekit._files import atomic_write, atomic_write_bytes
from fracturekit.calibration import (
    adjust_to_priors,
    class_frequencies,
    class_priors,
    default_positive,
    prior_support,
    threshold_at_prior,
    validation_scores,
)
from fracturekit.config import INVERSE_VIEWS
from fracturekit.contracts import BACKENDS, ENV_ORT_SPINNING, ONNX_META_KEY
from fracturekit.data import build_transforms
from fracturekit.io import is_image_file, read_image
from fracturekit.masks import crack_fraction, drop_small_pieces, mask_png, segment_image_score

if TYPE_CHECKING:
    import torch
    from PIL import Image

T = TypeVar("T")
# Backends that run the exported ONNX graph (numpy preprocessing, no torch import): ONNX
# Runtime ("onnx") and OpenVINO, which reads the same file.
GRAPH_BACKENDS = ("onnx", "openvino")


@dataclass
class Prediction:
    """One image's result. ``error`` is set (and the rest empty) when the image could not be read.

    ``probabilities`` maps each class name to its calibrated probability; ``confidence`` is the
    probability of the predicted ``label``.
    """

    path: str
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    error: str | None = None
    # Segmenters only: the share of the image's pixels in the predicted mask, the mask itself
    # (until it is written; never serialised) and the file it was written to.
    crack_fraction: float | None = None
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    mask_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-safe data; the segmenter fields only when set."""
        out = {k: getattr(self, k) for k in ("path", "label", "confidence")}
        out["probabilities"] = dict(self.probabilities)
        out["threshold"] = self.threshold
        for key in ("crack_fraction", "mask_file"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["error"] = self.error
        return out


def decide(
    proba: np.ndarray, classes: Sequence[str], positive: str | None, threshold: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Turn class probabilities (N, C) into predicted class indices and their confidences.

    Binary tasks with a known positive class apply the stored threshold to the positive-class
    probability (so a screening threshold chosen for high recall takes effect); otherwise argmax.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if len(classes) == 2 and positive in classes and threshold is not None:
        pos = list(classes).index(positive)
        idx = np.where(proba[:, pos] >= threshold, pos, 1 - pos)
    else:
        idx = proba.argmax(axis=1)
    return idx, proba[np.arange(len(idx)), idx]


class Predictor:
    """Classify images with a checkpoint's own preprocessing, temperature and threshold.

    Build it with :meth:`from_checkpoint`; the constructor only stores.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        *,
        model: torch.nn.Module | None = None,
        session: Any = None,
        backend: str = "torch",
        device: str = "cpu",
        source: str = "",
    ) -> None:
        self.meta = meta
        self.model = model
        self.session = session
        self.backend = backend
        self.device = device
        self.source = source
        self._transform = None
        self._normalise: tuple[np.ndarray, np.ndarray] | None = None  # ONNX: mean, std
        # Set by with_prior: the decision threshold (binary) or class re-weighting (multi-class)
        # for another prevalence, and the prior as given.
        self._prior: float | dict[str, float] | None = None
        self._prior_threshold: float | None = None
        self._prior_shift: tuple[np.ndarray, np.ndarray] | None = None
        self._prior_support: dict[str, Any] | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        backend: str = "torch",
        *,
        device: str = "cpu",
        prior: float | dict[str, float] | None = None,
    ) -> Predictor:
        """Load a checkpoint (``.pt``) or an exported ONNX model (``.onnx``).

        Args:
            path: ``model.pt`` written by training, or ``model.onnx`` written by export. With
                ``backend="onnx"`` and a ``.pt`` path, the ``.onnx`` file beside it is used.
            backend: ``"torch"``, ``"onnx"`` (ONNX Runtime), ``"openvino"`` or ``"auto"``
                (PyTorch for a ``.pt``; for an ``.onnx`` file :func:`graph_runtime`).
            device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (torch backend only).
            prior: decide at this prevalence (see :meth:`with_prior`); None: the checkpoint's
                own default (``config.prior``, set by ``train --prior``), else its stored
                threshold.
        """
        predictor = cls._load(Path(path), backend, device)
        if prior is None:
            prior = (predictor.meta.get("config") or {}).get("prior")
        return predictor.with_prior(prior)

    @classmethod
    def _load(cls, path: Path, backend: str, device: str) -> Predictor:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
        if backend == "auto":
            backend = graph_runtime() if path.suffix.lower() == ".onnx" else "torch"
        if path.suffix.lower() == ".onnx" and backend == "torch":
            backend = "onnx"
        if backend in GRAPH_BACKENDS:
            onnx_path = path if path.suffix.lower() == ".onnx" else path.with_suffix(".onnx")
            if not onnx_path.exists():
                raise FileNotFoundError(
                    f"{onnx_path}: no ONNX model here; run `fracturekit export {path} "
                    f"--out {onnx_path}` first"
                )
            if backend == "openvino":
                return cls._from_openvino(onnx_path)
            return cls._from_onnx(onnx_path)
        from fracturekit.models import load_checkpoint

        device = _resolve_device(device)
        model, meta = load_checkpoint(path, map_location=device)
        model = _prepare_for_inference(model, device)
        return cls(meta, model=model, backend="torch", device=device, source=str(path))

    @classmethod
    def _from_onnx(cls, path: Path) -> Predictor:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - the export extra is missing
            raise RuntimeError(
                "the onnx backend needs onnxruntime: pip install 'fracturekit[export]'"
            ) from exc
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # ONNX Runtime's threads spin between operators (its default, kept: measured no slower
        # for predict with decoding threads beside it); "0" lets other work have the cores.
        spin = os.environ.get(ENV_ORT_SPINNING, "1")
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: not a loadable ONNX model ({exc})") from exc
        raw = session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
        return cls(
            _graph_meta(raw, path), session=OrtGraph(session), backend="onnx", source=str(path)
        )

    @classmethod
    def _from_openvino(cls, path: Path) -> Predictor:
        """The exported ONNX file on OpenVINO's CPU plugin, at float32 (its default on CPUs
        with bfloat16 units is bfloat16, which moves probabilities by up to 1e-2)."""
        try:
            import openvino as ov
        except ImportError as exc:
            raise RuntimeError(
                "the openvino backend needs OpenVINO: pip install 'fracturekit[openvino]'"
            ) from exc
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            key = ["framework", ONNX_META_KEY]
            raw = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None
            meta = _graph_meta(raw, path)
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
            compiled = core.compile_model(model, "CPU", config)
        except ValueError:
            raise
        except Exception as exc:  # OpenVINO raises its own exception types
            raise ValueError(f"{path}: not a model OpenVINO can load ({exc})") from exc
        return cls(meta, session=OpenVinoGraph(compiled), backend="openvino", source=str(path))

    def with_prior(self, prior: float | dict[str, float] | None) -> Predictor:
        """Decide for cases where the classes have the frequencies ``prior`` (returns self).

        Binary tasks (``prior`` a float, the positive-class prevalence, or ``{class: P}``): the
        decision threshold becomes the one the checkpoint's threshold rule
        (``config.threshold_metric`` or ``config.target_recall``) picks on its stored
        validation scores re-weighted to that prevalence
        (``calibration.threshold_at_prior``); the probabilities stay as they are. Multi-class
        tasks (``{class: P}``; classes left out share the rest by their validation frequencies):
        the probabilities are moved to those priors (``calibration.adjust_to_priors``,
        Saerens et al. 2002) and the arg-max decides. No data are needed: the same prior gives
        the same decisions on every route (predict, evaluate, serve) and backend. None restores
        the stored threshold and probabilities.

        Segmenters: the prior moves the image-level decision (``image_threshold``, on the image
        score of ``masks.segment_image_score``, whose validation values training stores), never
        the pixel threshold; it is kept at or above the pixel threshold, so an image decided
        positive always has a mask, and an image decided negative gets an empty one.

        Raises:
            ValueError: the checkpoint stores no validation scores (retrain, or pass no prior),
                or the prior does not fit its classes.
        """
        self._prior, self._prior_threshold, self._prior_shift = None, None, None
        self._prior_support = None
        if prior is None:
            return self
        labels, proba = validation_scores(self.meta, self.source or "checkpoint")
        classes = self.classes
        base = class_frequencies(labels, len(classes))
        if len(classes) == 2:
            positive = self.positive or default_positive(classes)
            pos = classes.index(positive)
            p_pos = float(class_priors(prior, classes, base, positive)[pos])
            config = self.meta.get("config") or {}
            threshold = threshold_at_prior(
                labels,
                proba,
                pos,
                p_pos,
                metric=config.get("threshold_metric") or "f1",
                target_recall=config.get("target_recall"),
            )
            if self.task == "segment":
                threshold = max(threshold, self.threshold if self.threshold is not None else 0.5)
            self._prior_threshold = threshold
            self._prior = p_pos
            self._prior_support = prior_support(labels, proba, pos, threshold, p_pos)
        else:
            new = class_priors(prior, classes, base)
            adjust_to_priors(proba[:1], base, new)  # refuses a class without validation sample
            self._prior_shift = (base, new)
            self._prior = {c: float(v) for c, v in zip(classes, new, strict=True)}
        return self

    # -- description --------------------------------------------------------------------------
    @property
    def prior(self) -> float | dict[str, float] | None:
        """The prevalence decisions are made for (see :meth:`with_prior`), or None."""
        return self._prior

    @property
    def prior_support(self) -> dict[str, Any] | None:
        """A binary prior's threshold, as its validation split supports it
        (``calibration.prior_support``: the validation cases at or above it, and the precision
        at the prior they vouch for); None without a prior and for multi-class priors."""
        return self._prior_support

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def positive(self) -> str | None:
        return self.meta.get("positive")

    @property
    def positive_index(self) -> int | None:
        """Index in ``classes`` of a binary model's positive class; None for any other model.

        Binary (two classes): the index of ``positive``, or 1 when the checkpoint names none
        (the class a single-logit head scores). Multi-class (three or more classes) and
        one-class models: always None, even when the meta names a ``positive`` (training
        records none for them): they have no "positive" evidence to follow, so heat maps and
        crack masks follow the predicted class, the gallery groups by correct/mistake, and
        ``scan`` (which maps one class) refuses them.
        """
        classes = self.classes
        if len(classes) != 2:
            return None
        return classes.index(self.positive) if self.positive in classes else 1

    @property
    def threshold(self) -> float | None:
        """A classifier's decision threshold (at the prior when one is set); a segmenter's pixel
        threshold (the image decision is :attr:`image_threshold`)."""
        if self._prior_threshold is not None and self.task != "segment":
            return self._prior_threshold
        value = self.meta.get("threshold")
        return None if value is None else float(value)

    @property
    def image_threshold(self) -> float | None:
        """The image-level decision threshold: ``p >= image_threshold`` decides positive.

        A classifier's :attr:`threshold`. A segmenter's image score is
        ``masks.segment_image_score``: its pixel threshold decides exactly "a piece of
        ``min_area`` remains"; with a prior, the threshold for that prevalence.
        """
        if self._prior_threshold is not None:
            return self._prior_threshold
        return self.threshold

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature") or 1.0)

    @property
    def img_size(self) -> int:
        return int(self.meta["img_size"])

    @property
    def in_chans(self) -> int:
        return int(self.meta.get("in_chans", 3))

    @property
    def tta(self) -> int:
        """Views whose logits are averaged per image (1: none; see ``TrainConfig.tta``)."""
        return int(self.meta.get("tta") or 1)

    # -- preprocessing ------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor | np.ndarray:
        """A PIL image -> normalised CxHxW float32 input, as at evaluation time.

        A torch tensor (torchvision's transform, the one training used) on the PyTorch backend;
        a numpy array on the ONNX backend, which never imports torch: Pillow's resize (the same
        antialiased filters when shrinking, within one grey level of torchvision's; Pillow's
        bicubic is softer when enlarging an image smaller than the input size), then the same
        scaling and normalisation. An image already at the input size goes in unchanged.
        """
        if self.backend in GRAPH_BACKENDS:
            return self._preprocess_numpy(image)
        if self._transform is None:
            self._transform = build_transforms(
                self.img_size,
                self.meta["mean"],
                self.meta["std"],
                augment="none",
                channels=self.in_chans,
                interpolation=self.meta.get("interpolation", "bilinear"),
            )
        x, _ = self._transform(image, None)
        return x

    def _preprocess_numpy(self, image: Image.Image) -> np.ndarray:
        from PIL import Image as PILImage

        from fracturekit.data._transforms import _per_channel as per_channel

        want = "L" if self.in_chans == 1 else "RGB"
        if image.mode != want:
            image = image.convert(want)
        size = (self.img_size, self.img_size)
        interpolation = self.meta.get("interpolation", "bilinear")
        if interpolation == "nearest":
            x = _nearest_resize(np.asarray(image), size)
        else:
            if image.size != size:
                resample = {"bilinear": PILImage.BILINEAR, "bicubic": PILImage.BICUBIC}
                image = image.resize(size, resample[interpolation])
            x = np.asarray(image)
        x = x.astype(np.float32) / np.float32(255.0)
        if x.ndim == 2:
            x = x[..., None]
        if self._normalise is None:
            self._normalise = tuple(
                np.asarray(per_channel(self.meta[k], self.in_chans, k), np.float32)
                for k in ("mean", "std")
            )
        mean, std = self._normalise
        return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))

    def stack(self, inputs: Sequence[Any]) -> torch.Tensor | np.ndarray:
        """Preprocessed images (:meth:`preprocess`) as one batch for this backend."""
        if self.backend in GRAPH_BACKENDS:
            return np.stack(inputs)
        import torch

        return torch.stack(list(inputs))

    # -- inference ----------------------------------------------------------------------------
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw logits (N, num_classes) for a preprocessed batch.

        With ``tta`` > 1 (stored in the checkpoint), the mean logits of that many flipped views
        of each image (``fracturekit.models.view_logits``), on either backend.
        """
        import torch

        from fracturekit.models import view_logits

        if self.backend in GRAPH_BACKENDS:
            return torch.from_numpy(self._onnx_logits(batch))

        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.ndim == 4 and x.shape[-1] > 1:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float().cpu()

        with torch.inference_mode():
            return view_logits(forward, batch.to(self.device), self.tta)

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated class probabilities (N, C) for a preprocessed batch.

        Multi-class tasks with a prior (:meth:`with_prior`) get them moved to those priors.
        """
        if self.backend in GRAPH_BACKENDS:
            proba = _logits_to_proba(self._onnx_logits(batch), self.temperature)
        else:
            from fracturekit.models import logits_to_proba

            proba = logits_to_proba(self.logits(batch), self.temperature).numpy()
        if self._prior_shift is not None:
            proba = adjust_to_priors(proba, *self._prior_shift).astype(proba.dtype)
        return proba

    def _onnx_run(self, batch: Any) -> np.ndarray:
        """The ONNX graph's float32 output for a preprocessed batch (numpy, or a torch tensor
        from a caller that has one)."""
        if hasattr(batch, "detach"):
            batch = batch.detach().cpu().numpy()
        feed = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(feed).astype(np.float32, copy=False)

    def _onnx_logits(self, batch: Any) -> np.ndarray:
        """Logits (N, K) of the ONNX graph, averaged over ``tta`` views as on PyTorch."""
        if hasattr(batch, "detach"):
            batch = batch.detach().cpu().numpy()
        views = self.tta
        _check_square(batch, views)
        total = None
        for op in NUMPY_VIEWS[:views]:
            out = self._onnx_run(op(batch))
            total = out if total is None else total + out
        return total / np.float32(views)

    def predict_images(
        self, images: Sequence[Image.Image], paths: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Classify already-decoded images (one forward pass)."""
        if not images:
            return []
        names = list(paths) if paths is not None else [f"image{i}" for i in range(len(images))]
        batch = self.stack([self.preprocess(im) for im in images])
        return self._records(names, self.predict_proba(batch))

    def predict_paths(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 32,
        *,
        strict: bool = False,
        keep_masks: bool = False,
    ) -> Iterator[Prediction]:
        """Classify (or segment) files in batches, in input order; unreadable files yield an
        error record.

        Decoding and preprocessing run on a small thread pool (PIL releases the GIL), one batch
        ahead of the model, so reading files overlaps with inference. Segmenters give each
        record the image-level decision from the mask (:meth:`_segment_records`) and, with
        ``keep_masks``, the mask itself at the image's size.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")

        def load(p: str) -> tuple[str, Any, tuple[int, int], str | None]:
            try:
                image = read_image(p, channels=self.in_chans, strict=strict)
                return p, self.preprocess(image), image.size, None
            except (ValueError, OSError) as exc:
                return p, None, (0, 0), str(exc)

        with ThreadPoolExecutor(max_workers=2) as pool:
            chunks = _chunks((str(p) for p in paths), batch_size)
            pending = [pool.submit(load, p) for p in next(chunks, [])]
            while pending:
                loaded = [f.result() for f in pending]
                # Start decoding the next batch before this one goes through the model.
                pending = [pool.submit(load, p) for p in next(chunks, [])]
                good = [(p, x, size) for p, x, size, err in loaded if err is None]
                results: dict[str, Prediction] = {}
                if good:
                    batch = self.stack([x for _, x, _ in good])
                    names = [p for p, _, _ in good]
                    if self.task == "segment":
                        sizes = [size for _, _, size in good]
                        records = self._segment_records(names, batch, sizes, keep_masks)
                    else:
                        records = self._records(names, self.predict_proba(batch))
                    results = {rec.path: rec for rec in records}
                for p, _, _, err in loaded:
                    if err is not None:
                        yield Prediction(p, None, None, {}, self.threshold, error=err)
                    else:
                        yield results[p]

    def _records(self, paths: Sequence[str], proba: np.ndarray) -> list[Prediction]:
        classes = self.classes
        idx, conf = decide(proba, classes, self.positive, self.threshold)
        return [
            Prediction(
                path=str(p),
                label=classes[int(i)],
                confidence=float(c),
                probabilities={k: float(v) for k, v in zip(classes, row, strict=True)},
                threshold=self.threshold,
            )
            for p, i, c, row in zip(paths, idx, conf, proba, strict=True)
        ]

    # -- segmentation (task "segment") ---------------------------------------------------------
    @property
    def task(self) -> str:
        """``"classify"`` (one label an image) or ``"segment"`` (a probability an image pixel)."""
        return str(self.meta.get("task") or "classify")

    @property
    def min_area(self) -> int:
        """Segmenters: pixels (at ``img_size`` x ``img_size``) a predicted piece needs to count."""
        return int(self.meta.get("min_area") or 0)

    def _require_segmenter(self) -> None:
        if self.task != "segment":
            raise ValueError(
                f"{self.source or 'this model'} is a {self.task} checkpoint, not a segmenter: "
                "train one with `fracturekit train DATA --task segment`"
            )

    def predict_proba_maps(
        self, batch: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[np.ndarray]:
        """Pixel probabilities of a preprocessed batch: ``(H, W)`` float32 maps, one an image.

        With ``tta`` > 1 (stored in the checkpoint), the pixel logits of that many flipped or
        turned views, each turned back, are averaged before the sigmoid
        (``fracturekit.models.view_maps``), on every backend.

        Args:
            batch: ``[N, C, img_size, img_size]`` from :meth:`preprocess` (the ONNX backend
                also takes a numpy array).
            sizes: ``(width, height)`` per image to resize the maps to (bilinear); None keeps
                ``img_size`` x ``img_size``.
        """
        self._require_segmenter()
        if self.backend in GRAPH_BACKENDS:
            # numpy only from here: the sigmoid and torch's bilinear resize, recomputed
            prob = self._onnx_proba_maps(batch)
            if sizes is None:
                return list(prob)
            return [resize_probability(p, size) for p, size in zip(prob, sizes, strict=True)]
        import torch

        from fracturekit.models import view_maps

        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] > 1:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float()

        with torch.inference_mode():
            prob = torch.sigmoid(view_maps(forward, batch.to(self.device), self.tta)).cpu()
        maps = [p[0].numpy() for p in prob]
        if sizes is None:
            return maps
        return [resize_probability(m, size) for m, size in zip(maps, sizes, strict=True)]

    def _onnx_proba_maps(self, batch: Any) -> np.ndarray:
        """Pixel probabilities ``(N, H, W)`` of the ONNX graph for a preprocessed batch, its
        logits averaged over ``tta`` views as on PyTorch."""
        if hasattr(batch, "detach"):
            batch = batch.detach().cpu().numpy()
        views = self.tta
        _check_square(batch, views)
        total = self._onnx_run(batch)
        for k in range(1, views):
            back = NUMPY_VIEWS[INVERSE_VIEWS[k]]
            total = total + back(self._onnx_run(NUMPY_VIEWS[k](batch)))
        return _sigmoid(total[:, 0] / np.float32(views))

    def probability_maps(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """Pixel probabilities of decoded images, each at the image's own size."""
        if not images:
            return []
        batch = self.stack([self.preprocess(im) for im in images])
        return self.predict_proba_maps(batch, [im.size for im in images])

    def masks_from_maps(self, maps: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Boolean masks: pixels at or above the threshold, pieces below ``min_area`` dropped
        (the area scaled from ``img_size`` x ``img_size`` to each map's size)."""
        threshold = self.threshold if self.threshold is not None else 0.5
        out = []
        for prob in maps:
            scale = prob.size / float(self.img_size**2)
            out.append(drop_small_pieces(prob >= threshold, self.min_area * scale))
        return out

    def predict_masks(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """The predicted crack/fracture mask of each decoded image, at the image's size."""
        return self.masks_from_maps(self.probability_maps(images))

    def _segment_records(
        self,
        paths: Sequence[str],
        batch: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        keep_masks: bool,
    ) -> list[Prediction]:
        """Records of a preprocessed batch of a segmenter (:meth:`segment_record`); maps are
        brought to full size one image at a time."""
        return [
            self.segment_record(path, resize_probability(small, size), keep_mask=keep_masks)
            for path, small, size in zip(paths, self.predict_proba_maps(batch), sizes, strict=True)
        ]

    def segment_record(
        self,
        path: str,
        prob: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        keep_mask: bool = False,
    ) -> Prediction:
        """A segmenter's image-level record: positive when its mask keeps a piece.

        The positive class's probability is the image score (``masks.segment_image_score``:
        the most probable pixel, below the threshold when no piece passes ``min_area``), so
        ``p >= threshold`` is the decision, as a classifier's; ``crack_fraction`` is the mask's
        share of the image.

        Args:
            path: the name the record carries.
            prob: the probability map at the image's size.
            mask: its mask when already computed (else :meth:`masks_from_maps`).
            keep_mask: keep the mask in the record (``Prediction.mask``).
        """
        classes = self.classes
        pos = self.positive_index if self.positive_index is not None else len(classes) - 1
        threshold = self.threshold if self.threshold is not None else 0.5
        if mask is None:
            mask = self.masks_from_maps([prob])[0]
        score = segment_image_score(prob, mask, threshold)
        proba = {c: (score if i == pos else 1.0 - score) for i, c in enumerate(classes)}
        decide_at = self.image_threshold if self.image_threshold is not None else threshold
        positive = score >= decide_at  # without a prior: exactly mask.any()
        if not positive and mask.any():  # decided negative at the prior: no crack to show
            mask = np.zeros_like(mask)
        label = classes[pos] if positive else classes[1 - pos]
        return Prediction(
            path=str(path),
            label=label,
            confidence=proba[label],
            probabilities=proba,
            threshold=decide_at,
            crack_fraction=crack_fraction(mask),
            mask=mask if keep_mask else None,
        )

    def describe(self) -> dict[str, Any]:
        """What the service's ``GET /model`` returns: a JSON-safe summary of the model."""
        metrics = self.meta.get("metrics") or {}
        summary_keys = ("f1", "roc_auc", "accuracy", "balanced_accuracy", "threshold", "n")
        out = {
            "task": self.task,
            "backbone": self.meta.get("backbone"),
            "classes": self.classes,
            "positive": self.positive,
            "img_size": self.img_size,
            "in_chans": self.in_chans,
            "mean": list(self.meta.get("mean", [])),
            "std": list(self.meta.get("std", [])),
            "threshold": self.threshold,
            "prior": self.prior,
            "prior_support": self.prior_support,
            "temperature": self.temperature,
            "tta": self.tta,
            "pretrained": self.meta.get("pretrained"),
            "backend": self.backend,
            "metrics": {k: metrics[k] for k in summary_keys if _is_number(metrics.get(k))},
        }
        if self.task == "segment":
            out.update(
                decoder=self.meta.get("decoder"),
                min_area=self.min_area,
                image_threshold=self.image_threshold,
                members=int(self.meta.get("members") or 1),
            )
        return out


# The views of ``models.VIEW_OPS`` on numpy batches (N, C, H, W), in the same order.
NUMPY_VIEWS: tuple[Callable[[np.ndarray], np.ndarray], ...] = (
    lambda x: x,
    lambda x: x[..., ::-1],
    lambda x: x[..., ::-1, :],
    lambda x: x[..., ::-1, ::-1],
    lambda x: x.swapaxes(-2, -1),
    lambda x: x.swapaxes(-2, -1)[..., ::-1],
    lambda x: x.swapaxes(-2, -1)[..., ::-1, :],
    lambda x: x.swapaxes(-2, -1)[..., ::-1, ::-1],
)


def graph_runtime() -> str:
    """The runtime ``auto`` runs an exported graph on: OpenVINO when installed (the
    ``fracturekit[openvino]`` extra; 1.2-1.6x ONNX Runtime's images/s at float32 on the
    development machines, ``benchmarks/openvino_compare.py``), else ONNX Runtime."""
    import importlib.util

    return "openvino" if importlib.util.find_spec("openvino") is not None else "onnx"


def _graph_meta(raw: str | None, path: Path) -> dict[str, Any]:
    if raw is None:
        raise ValueError(
            f"{path}: this ONNX file carries no fracturekit metadata; export it with "
            "`fracturekit export`"
        )
    return json.loads(raw)


class OrtGraph:
    """An ONNX Runtime session as ``run(batch) -> first output`` (thread-safe)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: batch})[0]


class OpenVinoGraph:
    """An OpenVINO compiled model as ``run(batch) -> first output``: one infer request, used by
    one thread at a time."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.output = compiled.output(0)
        self.lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:  # the request's output buffer is reused by the next call: copy it
            return np.array(self.request.infer({0: batch})[self.output], copy=True)


def _check_square(batch: np.ndarray, views: int) -> None:
    """More than 4 views turn the image by 90 degrees: refuse a non-square batch."""
    if views > 4 and batch.shape[-1] != batch.shape[-2]:
        raise ValueError(f"{views} views turn the image by 90 degrees: the input must be square")


def _logits_to_proba(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``models.logits_to_proba`` in numpy: sigmoid of a single logit as ``[1 - p, p]``,
    else a softmax, after temperature scaling."""
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    if z.shape[1] == 1:
        p = _sigmoid(z)
        return np.concatenate([1 - p, p], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nearest_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision's nearest-neighbour resize (source index ``floor(i * in / out)``)."""
    w, h = size
    rows = np.minimum((np.arange(h) * (array.shape[0] / h)).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum((np.arange(w) * (array.shape[1] / w)).astype(np.int64), array.shape[1] - 1)
    return array[rows][:, cols]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^-x)`` in float32; the tanh form never overflows for large ``|x|``."""
    x = np.asarray(logits, dtype=np.float32)
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def resize_probability(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A probability map ``(H, W)`` resized to ``size = (width, height)`` as torch's
    ``F.interpolate(..., mode="bilinear", align_corners=False)`` does it (half-pixel centres,
    no antialiasing), in numpy, so no backend needs torch for it; float32 in [0, 1]."""
    w, h = size
    if np.shape(prob) == (h, w):
        return np.asarray(prob, dtype=np.float32)

    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # torch's CPU kernel: a float32 scale and one fused multiply-add into a float32
        # source coordinate; the exact float64 result rounded once is that value
        scale = np.float64(np.float32(n_in) / np.float32(n_out))
        src = np.maximum(((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32), 0)
        lo = np.minimum(src.astype(np.int64), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo.astype(np.float32)

    prob = np.asarray(prob, dtype=np.float32)
    y0, y1, fy = taps(h, prob.shape[0])
    x0, x1, fx = taps(w, prob.shape[1])
    rows = prob[y0] * (1 - fy)[:, None] + prob[y1] * fy[:, None]  # (h, W_in): small
    out = rows[:, x0]
    out *= 1 - fx
    right = rows[:, x1]
    right *= fx
    out += right
    return np.clip(out, 0.0, 1.0, out=out)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _prepare_for_inference(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """Eval mode, on ``device``, channels_last memory (measured faster for conv nets on CPU)."""
    import torch

    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------
# Batch prediction over files, folders and manifests (``fracturekit predict``)

OUTPUT_SUFFIXES = (".csv", ".json", ".parquet")
MANIFEST_COLUMN = "path"


def expand_inputs(items: Iterable[str | Path]) -> list[str]:
    """Turn files, folders and CSV manifests into the list of image paths, in the order given.

    * a folder: every image file below it (recursive, by extension including ``.dcm``; see
      ``fracturekit.io.is_image_file``), sorted; hidden files and folders and ``masks/``
      sub-folders (a data set's per-image masks, never images to classify) are left out;
    * a ``.csv`` file: its ``path`` column, relative paths taken from the CSV's folder;
    * anything else, including a file that does not exist: kept as given, so that
      :meth:`Predictor.predict_paths` reports it as a row with its error.

    Raises:
        ValueError: a manifest without a ``path`` column or with an empty path; a folder that
            holds no image.
    """
    paths: list[str] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            found = sorted(
                p
                for p in item.rglob("*")
                if p.is_file()
                and not any(
                    part.startswith(".") or part == "masks"
                    for part in p.relative_to(item).parts[:-1]
                )
                and is_image_file(p)
            )
            if not found:
                raise ValueError(f"{item}: folder holds no image files")
            paths.extend(str(p) for p in found)
        elif item.suffix.lower() == ".csv" and item.is_file():
            paths.extend(_manifest_paths(item))
        else:
            paths.append(str(item))
    return paths


def _manifest_paths(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read manifest ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
    if MANIFEST_COLUMN not in header:
        raise ValueError(
            f"{path}: manifest has no '{MANIFEST_COLUMN}' column "
            f"(columns: {', '.join(reader.fieldnames or []) or 'none'})"
        )
    out = []
    for line, row in enumerate(reader, start=2):
        value = (row.get(header[MANIFEST_COLUMN]) or "").strip()
        if not value:
            raise ValueError(f"{path}: line {line} has an empty '{MANIFEST_COLUMN}'")
        p = Path(value).expanduser()
        out.append(str(p if p.is_absolute() else path.parent / p))
    return out


def prediction_columns(
    classes: Sequence[str], *, segment: bool = False, masks: bool = False
) -> list[str]:
    """CSV columns of ``fracturekit predict``: ``path,label,p_<class>...,threshold,error``.

    Segmenters add ``crack_fraction`` (the mask's share of the image) after the probabilities,
    and ``mask`` (the mask file written) when masks are written.
    """
    extra = (["crack_fraction"] if segment else []) + (["mask"] if masks else [])
    return ["path", "label", *[f"p_{c}" for c in classes], *extra, "threshold", "error"]


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"


def prediction_row(
    pred: Prediction, classes: Sequence[str], columns: Sequence[str] | None = None
) -> dict[str, str]:
    """One CSV row; probabilities with 6 decimals, empty cells where there is no value."""
    row = {"path": pred.path, "label": pred.label or ""}
    for c in classes:
        row[f"p_{c}"] = _num(pred.probabilities.get(c))
    row["crack_fraction"] = _num(pred.crack_fraction)
    row["mask"] = pred.mask_file or ""
    row["threshold"] = _num(pred.threshold)
    row["error"] = pred.error or ""
    names = columns if columns is not None else prediction_columns(classes)
    return {k: row[k] for k in names}


def mask_names(paths: Sequence[str], folder: str | Path) -> list[Path]:
    """Where ``predict --masks FOLDER`` writes each image's mask.

    The image's path relative to the folder all inputs share, with ``.png`` for its suffix
    (``survey/a/1.jpg`` -> ``FOLDER/a/1.png``); images of one folder that share a stem keep
    their suffix (``x.jpg.png``, ``x.png.png``), so no two images write one file.
    """
    import os
    from collections import Counter

    resolved = [Path(p).resolve() for p in paths]
    if not resolved:
        return []
    root = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    rel = [r.relative_to(root) for r in resolved]
    plain = [r.with_suffix(".png") for r in rel]
    # An image given twice is one image; two images with one stem in one folder collide.
    taken = Counter(q for _, q in dict.fromkeys(zip(rel, plain, strict=True)))
    return [
        Path(folder) / (r.with_name(r.name + ".png") if taken[q] > 1 else q)
        for r, q in zip(rel, plain, strict=True)
    ]


def check_masks_folder(folder: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse a masks folder that already holds files (unless ``overwrite``) before any work.

    Raises:
        FileExistsError: ``folder`` holds files and ``overwrite`` is False.
        NotADirectoryError: ``folder`` is a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: is a file; --masks needs a folder")
    if folder.is_dir() and not overwrite and any(folder.iterdir()):
        raise FileExistsError(
            f"{folder} already holds files; pass --overwrite to replace masks there"
        )
    return folder


def write_mask(pred: Prediction, path: Path) -> Prediction:
    """Write a segmenter record's mask to ``path`` (0/255 PNG at the image's size), note the
    file in the record and drop the array (returns the record)."""
    if pred.mask is not None:
        atomic_write_bytes(path, mask_png(pred.mask), durable=False)
        pred.mask_file, pred.mask = str(path), None
    return pred


@dataclass
class BatchResult:
    """Summary of :func:`predict_batch`.

    Attributes:
        n: images processed.
        failed: how many of them could not be read (rows with an error).
        out: the file written, or None.
        predictions: every record when no file was written (for printing), else empty.
        classes: the model's class names (column order).
        columns: the columns of the rows (:func:`prediction_columns`).
    """

    n: int
    failed: int
    out: Path | None
    predictions: list[Prediction]
    classes: list[str]
    columns: list[str] = field(default_factory=list)


def predict_batch(
    source: str | Path | Predictor,
    inputs: Iterable[str | Path],
    *,
    out: str | Path | None = None,
    backend: str = "torch",
    batch_size: int = 32,
    overwrite: bool = False,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    masks: str | Path | None = None,
) -> BatchResult:
    """Classify files, folders and manifests in batches, streaming rows to ``out``.

    Args:
        source: a checkpoint or ONNX path, or a ready :class:`Predictor`.
        inputs: files, folders and CSV manifests (see :func:`expand_inputs`).
        out: ``.csv`` (columns of :func:`prediction_columns`), ``.json`` (a list of
            ``Prediction`` records) or ``.parquet`` (needs pyarrow; see
            :func:`write_predictions`); written under a temporary name and renamed when
            complete. None keeps the records in the result instead.
        backend: ``"torch"`` or ``"onnx"`` (when ``source`` is a path).
        batch_size: images per forward pass.
        overwrite: replace an existing ``out``.
        strict: refuse truncated images instead of loading them.
        progress: called as ``progress(done, total)`` before the first and after every image.
        masks: segmenters: write each image's mask into this folder (:func:`mask_names`;
            0/255 PNG at the image's size) and its file into the ``mask`` column.

    Returns:
        A :class:`BatchResult`; unreadable images are rows with their error, never exceptions.

    Raises:
        ValueError: an unknown output format, a bad manifest, no input image, ``masks`` with a
            classifier.
        FileExistsError: ``out`` exists, or ``masks`` holds files, and ``overwrite`` is False.
    """
    out, masks, paths = check_batch_io(inputs, out, masks, overwrite=overwrite)
    predictor = (
        source if isinstance(source, Predictor) else Predictor.from_checkpoint(source, backend)
    )
    segment = predictor.task == "segment"
    if masks is not None and not segment:
        raise ValueError(
            f"{predictor.source or 'the model'} is a classifier: --masks needs a "
            "segmentation checkpoint (fracturekit train --task segment)"
        )
    names = mask_names(paths, masks) if masks is not None else []
    classes = predictor.classes
    counts = {"n": 0, "failed": 0}

    def stream() -> Iterator[Prediction]:
        if progress is not None:
            progress(0, len(paths))
        preds = predictor.predict_paths(paths, batch_size, strict=strict, keep_masks=bool(names))
        for i, pred in enumerate(preds):
            if names:
                write_mask(pred, names[i])
            counts["n"] += 1
            counts["failed"] += pred.error is not None
            yield pred
            if progress is not None:
                progress(counts["n"], len(paths))

    kept: list[Prediction] = []
    columns = prediction_columns(classes, segment=segment, masks=masks is not None)
    if out is None:
        kept = list(stream())
    else:
        write_predictions(out, stream(), classes, columns)
    return BatchResult(counts["n"], counts["failed"], out, kept, classes, columns)


def check_batch_io(
    inputs: Iterable[str | Path],
    out: str | Path | None,
    masks: str | Path | None,
    *,
    overwrite: bool = False,
) -> tuple[Path | None, Path | None, list[str]]:
    """What a batch run writes and reads, checked before any image is: the output file
    (:func:`check_output`), the masks folder (:func:`check_masks_folder`) and the input paths
    (:func:`expand_inputs`, at least one).

    Raises:
        ValueError, FileExistsError: as those checks; no input image.
    """
    if out is not None:
        out = check_output(out, overwrite=overwrite)
    if masks is not None:
        masks = check_masks_folder(masks, overwrite=overwrite)
    paths = expand_inputs(inputs)
    if not paths:
        raise ValueError("no input images given")
    return out, masks, paths


def check_output(out: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse an output name ``predict`` cannot write before any image is read.

    Raises:
        ValueError: an unknown suffix, or ``.parquet`` without pyarrow installed.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"{out}: output must end in .csv or .json, or .parquet (needs pyarrow)")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError(
                f"{out}: writing .parquet needs pyarrow: pip install pyarrow (it comes with "
                "'fracturekit[ray]'), or write .csv"
            ) from None
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    return out


def write_predictions(
    out: Path,
    predictions: Iterable[Prediction],
    classes: Sequence[str],
    columns: Sequence[str] | None = None,
) -> None:
    """Write records to ``out`` as they come, under a temporary name renamed when complete.

    ``.csv``: ``columns`` (default: :func:`prediction_columns` of a classifier); ``.json``: a
    list of ``Prediction`` records; ``.parquet``: the CSV's columns, probabilities, crack
    fraction and threshold as float64 (null where there is no value), written in row groups of
    10,000.
    """
    columns = list(columns) if columns is not None else prediction_columns(classes)
    suffix = out.suffix.lower()
    if suffix == ".csv":

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fp:
                writer = csv.DictWriter(fp, columns)
                writer.writeheader()
                for pred in predictions:
                    writer.writerow(prediction_row(pred, classes, columns))

    elif suffix == ".json":

        def write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as fp:
                fp.write("[")
                for i, pred in enumerate(predictions):
                    fp.write(("," if i else "") + "\n  " + json.dumps(pred.to_dict()))
                fp.write("\n]\n")

    else:

        def write(tmp: Path) -> None:
            _write_parquet(tmp, predictions, classes, columns)

    atomic_write(out, write)


def _write_parquet(
    path: Path, predictions: Iterable[Prediction], classes: Sequence[str], columns: Sequence[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = ("path", "label", "mask", "error")
    schema = pa.schema([(c, pa.string() if c in text else pa.float64()) for c in columns])
    getters: dict[str, Callable[[Prediction], Any]] = {
        "path": lambda p: p.path,
        "label": lambda p: p.label,
        "crack_fraction": lambda p: p.crack_fraction,
        "mask": lambda p: p.mask_file,
        "threshold": lambda p: p.threshold,
        "error": lambda p: p.error,
    }
    for c in classes:
        getters[f"p_{c}"] = lambda p, c=c: p.probabilities.get(c)

    def table(rows: list[Prediction]) -> pa.Table:
        return pa.table({c: [getters[c](p) for p in rows] for c in columns}, schema=schema)

    with pq.ParquetWriter(str(path), schema) as writer:
        for rows in _chunks(predictions, 10_000):
            writer.write_table(table(rows))
