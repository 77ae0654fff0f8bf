"""``ImageDataset``: samples as tensors for a DataLoader (picklable, reads on demand)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fracturekit.data._records import Sample
from fracturekit.io import read_image, read_mask


class ImageDataset:
    """Map-style data set over samples: ``(x, y)`` or, ``with_masks``, ``(x, y, mask)``.

    Images are read with :func:`fracturekit.io.read_image` (non-strict: the up-front check of
    :func:`load_dataset` already reported truncated files); masks with the image's EXIF
    orientation. A sample without a mask gets an all-zero mask. Plain attributes only, so it
    pickles into DataLoader worker processes.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[..., Any] | None,
        *,
        channels: int = 3,
        with_masks: bool = False,
    ):
        self.samples = list(samples)
        self.transform = transform
        self.channels = channels
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        import torch
        from torchvision.transforms.v2 import functional as F

        sample = self.samples[index]
        image = read_image(sample.path, channels=self.channels)
        mask = None
        if self.with_masks:
            if sample.mask is not None:
                orientation = image.info.get("orientation", 1)
                mask = read_mask(sample.mask, size=image.size, orientation=orientation)
            else:
                mask = np.zeros((image.height, image.width), dtype=bool)
        if self.transform is None:
            x = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
            m = torch.from_numpy(mask)[None].float() if mask is not None else None
        else:
            x, m = self.transform(image, mask)
        if self.with_masks:
            return x, sample.label, m
        return x, sample.label
