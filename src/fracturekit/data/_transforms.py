"""Transforms: resize and normalise, with the augmentations of ``config.AUGMENTS``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fracturekit.config import AUGMENTS

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


NONE, DEFAULT, STRONG, FLIPS, FLIPS_COLOR = AUGMENTS


def _resize(size: int, interpolation: str) -> Any:
    from torchvision.transforms import InterpolationMode, v2

    interp = InterpolationMode(interpolation)
    return v2.Resize((size, size), interpolation=interp, antialias=True)


def _no_augmentation(size: int, interpolation: str) -> tuple[list, list]:
    return [_resize(size, interpolation)], []


def _default_augmentation(size: int, interpolation: str) -> tuple[list, list]:
    from torchvision.transforms import v2

    return [
        _resize(size, interpolation),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ], []


def _strong_augmentation(size: int, interpolation: str) -> tuple[list, list]:
    from torchvision.transforms import InterpolationMode, v2

    interp = InterpolationMode(interpolation)
    return [
        v2.RandomResizedCrop((size, size), scale=(0.6, 1.0), interpolation=interp, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomApply([v2.RandomRotation(90)], p=0.25),
        v2.RandomAffine(degrees=30, translate=(0.15, 0.15), scale=(0.8, 1.25), shear=8),
        v2.ColorJitter(brightness=0.4, contrast=0.4),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.3),
        v2.RandomAutocontrast(p=0.2),
    ], [v2.RandomApply([v2.GaussianNoise(sigma=0.03)], p=0.3)]


class RandomQuarterTurn:
    """Turn the image (and its mask) by 0, 90, 180 or 270 degrees, drawn uniformly.

    With the two mirrors this draws from the whole dihedral group of the square: the views a
    crack photo can be taken in without changing what it shows."""

    def __call__(self, *inputs: Any) -> Any:
        import torch
        from torchvision import tv_tensors

        k = int(torch.randint(4, ()).item())
        # rot90 moves pixels without interpolation (a rotate by 90.0 would resample)
        out = tuple(
            tv_tensors.wrap(torch.rot90(x.as_subclass(torch.Tensor), k, (-2, -1)), like=x)
            if k and isinstance(x, tv_tensors.TVTensor)
            else x
            for x in inputs
        )
        return out if len(out) > 1 else out[0]


def _flips_augmentation(size: int, interpolation: str) -> tuple[list, list]:
    from torchvision.transforms import v2

    return [
        _resize(size, interpolation),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        RandomQuarterTurn(),
    ], []


def _flips_color_augmentation(size: int, interpolation: str) -> tuple[list, list]:
    from torchvision.transforms import v2

    steps, after = _flips_augmentation(size, interpolation)
    # The photometric range of the default set: another camera, another light. It changes
    # the image only, so the mask stays exact.
    return [*steps, v2.ColorJitter(brightness=0.2, contrast=0.2)], after


class FocusedCrop:
    """A random ``size`` x ``size`` tile of the image and its mask that, with probability
    ``focus``, holds a positive pixel of the mask (one drawn uniformly from the positives, at a
    uniform place in the tile). Without a mask, or a mask without positives, a plain random tile.

    On radiographs a fracture covers about 0.1% of the image: plain random tiles rarely show
    one, and the network learns mostly background."""

    def __init__(self, size: int, focus: float) -> None:
        self.size = int(size)
        self.focus = float(focus)

    def __call__(self, *inputs: Any) -> Any:
        import torch
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        height, width = inputs[0].shape[-2:]
        th, tw = min(self.size, height), min(self.size, width)
        top = int(torch.randint(height - th + 1, ()))
        left = int(torch.randint(width - tw + 1, ()))
        masks = [x for x in inputs if isinstance(x, tv_tensors.Mask)]
        if masks and float(torch.rand(())) < self.focus:
            ys, xs = torch.nonzero(masks[0].as_subclass(torch.Tensor)[0], as_tuple=True)
            if len(ys):
                i = int(torch.randint(len(ys), ()))
                top = min(max(int(ys[i]) - int(torch.randint(th, ())), 0), height - th)
                left = min(max(int(xs[i]) - int(torch.randint(tw, ())), 0), width - tw)
        out = tuple(
            F.crop(x, top, left, th, tw) if isinstance(x, tv_tensors.TVTensor) else x
            for x in inputs
        )
        return out if len(out) > 1 else out[0]


# One row an augmentation of config.AUGMENTS: (size, interpolation) -> (steps on the uint8
# image and its mask, steps after scaling to [0, 1]); normalisation follows.
_AUGMENT_STEPS = {
    NONE: _no_augmentation,
    DEFAULT: _default_augmentation,
    STRONG: _strong_augmentation,
    FLIPS: _flips_augmentation,
    FLIPS_COLOR: _flips_color_augmentation,
}


def _per_channel(values: Sequence[float], channels: int, what: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if channels == 1:
        return [sum(values) / len(values)]  # a gray image of an RGB-normalised backbone
    if len(values) == 1:
        return values * channels
    raise ValueError(f"{what} has {len(values)} values for {channels} channels")


class ImageTransform:
    """The preprocessing (and augmentation) of one split (``build_transforms(...)``); a
    callable, picklable for DataLoader workers.

    ``transform(image, mask=None) -> (float32 tensor C x H x W normalised, mask tensor
    1 x H x W of 0./1. or None)``. The image is a PIL image (or a C x H x W uint8 tensor);
    the mask a ``bool``/``uint8`` array or tensor of the image's height x width. Geometric
    steps move the mask exactly as the image (torchvision ``tv_tensors.Mask``, nearest
    neighbour); brightness/contrast/blur/noise touch the image only. ``augment``:

    * ``none`` (evaluation): resize to ``img_size`` x ``img_size``, scale to [0, 1], normalise.
    * ``default`` (the seeds' set): resize, horizontal and vertical flips, rotation up to 10
      degrees, shifts up to 10%, zoom 0.9-1.1, brightness and contrast +-20%.
    * ``strong``: random resized crop (60-100% of the area), flips, 90-degree turns, rotation up
      to 30 degrees, shifts 15%, zoom 0.8-1.25, shear, brightness and contrast +-40%, blur,
      autocontrast and Gaussian noise.
    * ``flips``: resize, horizontal and vertical mirrors and 90-degree turns (the dihedral
      group of the square; nothing is interpolated, so thin masks stay exact).
    * ``flips_color``: ``flips`` and brightness and contrast +-20% (the image only).

    ``crop`` cuts a random ``crop`` x ``crop`` tile out of the resized (augmented) image and its
    mask (training a segmenter on tiles at full resolution); with ``crop_focus`` p, a share p of
    the tiles of an image whose mask has positives is placed to hold one of them. ``mean``/``std``
    with three values and ``channels=1`` are averaged into one.
    """

    def __init__(
        self,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: str = NONE,
        channels: int = 3,
        interpolation: str = "bilinear",
        crop: int | None = None,
        crop_focus: float = 0.0,
    ):
        if augment not in AUGMENTS:
            raise ValueError(f"augment={augment!r}: use {', '.join(AUGMENTS)}")
        if channels not in (1, 3):
            raise ValueError(f"channels={channels}: must be 1 or 3")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r}: use {', '.join(_INTERPOLATIONS)}")
        self.img_size = int(img_size)
        self.mean = _per_channel(mean, channels, "mean")
        self.std = _per_channel(std, channels, "std")
        self.augment = augment
        self.channels = channels
        self.interpolation = interpolation
        self.crop = None if crop is None else int(crop)
        if not 0.0 <= float(crop_focus) <= 1.0:
            raise ValueError(f"crop_focus={crop_focus}: must be between 0 and 1")
        self.crop_focus = float(crop_focus)
        self.pipeline = self._build()

    def _build(self):
        import torch
        from torchvision.transforms import v2

        before, after = _AUGMENT_STEPS[self.augment](self.img_size, self.interpolation)
        if self.crop is not None and self.crop < self.img_size:
            # a tile of the resized image
            if self.crop_focus:
                before = [*before, FocusedCrop(self.crop, self.crop_focus)]
            else:
                before = [*before, v2.RandomCrop(self.crop)]
        steps = [*before, v2.ToDtype(torch.float32, scale=True), *after]
        return v2.Compose([*steps, v2.Normalize(self.mean, self.std)])

    def __call__(self, image: Any, mask: Any = None):
        import torch
        from PIL import Image
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        if isinstance(image, Image.Image):
            want = "L" if self.channels == 1 else "RGB"
            if image.mode != want:
                image = image.convert(want)
            tensor = F.pil_to_tensor(image)
        else:
            tensor = torch.as_tensor(image)
            if tensor.ndim == 2:
                tensor = tensor[None]
            if tensor.shape[0] != self.channels:
                if self.channels == 3 and tensor.shape[0] == 1:
                    tensor = tensor.expand(3, -1, -1)
                else:
                    raise ValueError(f"image has {tensor.shape[0]} channels, want {self.channels}")
        img = tv_tensors.Image(tensor)
        if mask is None:
            return self.pipeline(img).as_subclass(torch.Tensor), None
        if isinstance(mask, Image.Image):
            mask = np.asarray(mask) > 0
        m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
        if m.ndim == 3:
            m = m[0]
        if tuple(m.shape) != tuple(tensor.shape[-2:]):
            raise ValueError(
                f"mask is {tuple(m.shape)} (H, W) but the image is {tuple(tensor.shape[-2:])}"
            )
        out_img, out_mask = self.pipeline(img, tv_tensors.Mask((m > 0).to(torch.uint8)[None]))
        return out_img.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor).float()

    def __repr__(self) -> str:
        return (
            f"ImageTransform(img_size={self.img_size}, augment={self.augment!r}, "
            f"channels={self.channels}, interpolation={self.interpolation!r})"
        )


# The name callers use: building the preprocessing of a split is constructing the callable.
build_transforms = ImageTransform
