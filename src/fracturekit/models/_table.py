"""The backbone table: one row a backbone. Pure Python, so importing it costs nothing.

A row names how to build the network (a timm architecture or one of the small from-scratch
networks), which family adapter splits it into trunk blocks (see ``_families``), its default
preprocessing, and whether weights ship inside the installed packages.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# [-1, 1] scaling: x * 2 - 1 == (x - 0.5) / 0.5.
SIGNED_MEAN = (0.5, 0.5, 0.5)
SIGNED_STD = (0.5, 0.5, 0.5)

DEFAULT_BACKBONE = "efficientnet_lite0"


class UnknownBackboneError(ValueError):
    """The backbone is neither a row of ``BACKBONES`` nor a timm model name."""


@dataclass(frozen=True)
class BackboneSpec:
    """One row of the backbone table.

    Attributes:
        name: the name users type (``--backbone NAME``).
        family: key of the family adapter that lists trunk blocks and the CAM layer
            (``efficientnet``, ``resnet``, ``vgg``, ``densenet``, ``convnext``, ``scratch``,
            ``generic``).
        timm_name: timm architecture built for this row; None for the from-scratch networks.
        builder: name of a from-scratch network in ``_scratch.SCRATCH_NETS`` (when
            ``timm_name`` is None).
        img_size: default square input size in pixels.
        mean: per-channel normalisation mean for 3-channel input.
        std: per-channel normalisation std for 3-channel input.
        interpolation: resize interpolation (``bilinear`` or ``bicubic``).
        embedded: key of ``_weights.EMBEDDED`` when weights ship with the installed packages.
        description: one line for ``--help`` and reports.
    """

    name: str
    family: str
    timm_name: str | None = None
    builder: str | None = None
    img_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    embedded: str | None = None
    description: str = ""


def _rows(*specs: BackboneSpec) -> dict[str, BackboneSpec]:
    return {s.name: s for s in specs}


def _lite(index: int, img_size: int, description: str) -> BackboneSpec:
    """The EfficientNet-Lite row ``index``: timm's TF port, [-1, 1] inputs, weights embedded."""
    name = f"efficientnet_lite{index}"
    return BackboneSpec(
        name,
        "efficientnet",
        timm_name=f"tf_{name}",
        img_size=img_size,
        mean=SIGNED_MEAN,
        std=SIGNED_STD,
        embedded=name,
        description=description,
    )


BACKBONES: dict[str, BackboneSpec] = _rows(
    # The embedded ImageNet weights expect inputs scaled to [-1, 1] (as timm's config for
    # tf_efficientnet_lite0 says): the stem BatchNorm's running variance matches natural photos
    # scaled that way, while ImageNet mean/std inflates it about 4x
    # (tests/test_models.py::test_embedded_weights_expect_signed_inputs). Both scalings put a
    # cat and a cup class in the top 5 of chelsea/coffee; [-1, 1] with higher confidence.
    _lite(0, 224, "EfficientNet-Lite0, ImageNet weights embedded (default)"),
    # Lite1/Lite2: the same recipe at their native input sizes (240 / 260 px, timm's config for
    # tf_efficientnet_lite1/2); weights from the optional extra ``fracturekit[lite]``.
    _lite(1, 240, "EfficientNet-Lite1 (240 px), ImageNet weights from fracturekit[lite]"),
    _lite(2, 260, "EfficientNet-Lite2 (260 px), ImageNet weights from fracturekit[lite]"),
    BackboneSpec("vgg19", "vgg", timm_name="vgg19", interpolation="bilinear",
                 description="VGG-19 convolutional trunk (global average pooled)"),
    BackboneSpec("densenet121", "densenet", timm_name="densenet121",
                 description="DenseNet-121"),
    BackboneSpec("resnet18", "resnet", timm_name="resnet18", description="ResNet-18"),
    BackboneSpec("resnet50", "resnet", timm_name="resnet50", description="ResNet-50"),
    BackboneSpec("efficientnet_b0", "efficientnet", timm_name="efficientnet_b0",
                 description="EfficientNet-B0"),
    BackboneSpec("convnext_tiny", "convnext", timm_name="convnext_tiny",
                 description="ConvNeXt-Tiny"),
    BackboneSpec("lenet", "scratch", builder="lenet", img_size=227, mean=SIGNED_MEAN,
                 std=SIGNED_STD, interpolation="bilinear",
                 description="LeNet-5 style conv-pool-conv-pool-dense, trained from scratch"),
    BackboneSpec("simple_cnn", "scratch", builder="simple_cnn", img_size=224, mean=SIGNED_MEAN,
                 std=SIGNED_STD, interpolation="bilinear",
                 description="four Conv-BN-ReLU-Pool blocks, trained from scratch"),
)  # fmt: skip


def get_spec(backbone: str) -> BackboneSpec:
    """Return the table row for ``backbone``, or an ad-hoc row for any other timm name.

    Ad-hoc rows take timm's pretrained config (input size, mean/std, interpolation) and family
    ``auto`` (the adapter is recognised from the built network's structure).

    Raises:
        UnknownBackboneError: the name is neither in the table nor a timm architecture.
    """
    if backbone in BACKBONES:
        return BACKBONES[backbone]
    import timm

    if not timm.is_model(backbone):
        raise UnknownBackboneError(
            f"unknown backbone {backbone!r}: use one of {', '.join(BACKBONES)} "
            "or a timm model name (see timm.list_models())"
        )
    cfg = timm.get_pretrained_cfg(backbone)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = cfg.get("input_size", (3, 224, 224))
    return BackboneSpec(
        backbone,
        "auto",
        timm_name=backbone,
        img_size=int(size[-1]),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        description=f"timm {backbone}",
    )


def data_config(backbone: str, img_size: int | None = None, *, in_chans: int = 3) -> dict:
    """Preprocessing for ``backbone``: ``{"img_size", "mean", "std", "interpolation"}``.

    Args:
        backbone: a ``BACKBONES`` name or any timm model name (timm's pretrained config is used).
        img_size: overrides the row's default input size (run configs set 224/227/256).
        in_chans: 1 averages mean and std to one value each (grayscale models).

    Returns:
        A plain dict; ``mean`` and ``std`` are lists with ``in_chans`` entries.
    """
    spec = get_spec(backbone)
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    mean, std = list(spec.mean), list(spec.std)
    if in_chans == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    size = spec.img_size if img_size is None else int(img_size)
    if size < 8:
        raise ValueError(f"img_size must be at least 8 px, got {size}")
    return {"img_size": size, "mean": mean, "std": std, "interpolation": spec.interpolation}
