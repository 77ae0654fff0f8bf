"""What explaining needs of a predictor (``fracturekit.predict.Predictor`` fits it)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image


class PredictorLike(Protocol):
    """The part of ``fracturekit.predict.Predictor`` that heat maps use.

    ``explain`` sits at the same level as ``predict`` and cannot import it: this protocol names
    what it relies on instead (``Predictor`` matches it structurally, as do test stand-ins).

    Attributes:
        model: the PyTorch model; None on the ONNX backend (no gradients: no heat maps).
        source: the checkpoint the predictor was loaded from (for messages).
        classes: class names in output order.
        positive: a binary model's positive class name (may be None).
        positive_index: index of a binary model's positive class; None for other models.
        threshold: a binary model's decision threshold on the positive class (may be None).
        in_chans: image channels the model reads (1 or 3).
        task: ``classify``, or ``segment`` for a segmentation model (whose probability maps
            stand in for heat maps: ``probability_maps``, ``masks_from_maps``).
    """

    model: Any
    source: str
    task: str

    @property
    def classes(self) -> list[str]: ...

    @property
    def positive(self) -> str | None: ...

    @property
    def positive_index(self) -> int | None: ...

    @property
    def threshold(self) -> float | None: ...

    @property
    def in_chans(self) -> int: ...

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...

    def predict_images(
        self, images: Sequence[Image.Image], paths: Sequence[str] | None = None
    ) -> list[Any]: ...

    def predict_paths(self, paths: Iterable[str], batch_size: int = 32) -> Iterator[Any]: ...

    def probability_maps(self, images: Sequence[Image.Image]) -> list[np.ndarray]: ...

    def masks_from_maps(self, maps: Sequence[np.ndarray]) -> list[np.ndarray]: ...


def torch_model(predictor: PredictorLike) -> torch.nn.Module:
    """The predictor's PyTorch model, or a ValueError naming the checkpoint (ONNX backend)."""
    model = getattr(predictor, "model", None)
    if model is None:
        raise ValueError(
            f"{getattr(predictor, 'source', 'this model')}: heat maps need the PyTorch "
            "checkpoint (model.pt); an ONNX model has no gradients to follow"
        )
    return model
