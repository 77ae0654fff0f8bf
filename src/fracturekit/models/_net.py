"""The fracture model: a backbone trunk cut into blocks, pooling, and a small dense head."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from fracturekit.config import FREEZE_POLICIES as FREEZE_POLICIES  # declared once, re-exported
from fracturekit.models._families import FAMILIES, family_for
from fracturekit.models._scratch import SCRATCH_NETS
from fracturekit.models._table import BackboneSpec, get_spec
from fracturekit.models._weights import EMBEDDED, load_weights_file


class PretrainedUnavailableWarning(UserWarning):
    """``pretrained=True`` was asked for a backbone with no embedded weights and no file.

    The model starts from random initialisation and records ``pretrained=None``. Strict callers
    turn it into an error: ``warnings.simplefilter("error", PretrainedUnavailableWarning)``.
    """


class FractureNet(nn.Module):
    """Backbone trunk + pooling + head.

    ``forward(x) == forward_from(forward_until(x, s), s)`` exactly for every ``s`` in
    ``0..len(blocks())``: all three run the same blocks in the same order, so a trainer may
    compute the frozen prefix once (``forward_until``) and train only the rest.

    Frozen BatchNorm layers (all of their parameters frozen by ``apply_freeze``) stay in eval
    mode when ``train()`` is called, so their running statistics keep the pretrained values.

    Attributes:
        backbone: the timm (or from-scratch) network without classifier; ``backbone(x)`` gives
            pooled features.
        head: ``nn.Sequential`` of optional hidden ``Linear-ReLU-Dropout`` layers, then
            ``Dropout`` (when ``dropout > 0``) and ``Linear(num_features, num_classes)``.
        num_features: width of the pooled feature vector.
        spec: the backbone's table row.
        arch: the arguments that rebuild this architecture (stored in checkpoints).
        pretrained: where the trunk weights came from, or None for random initialisation.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Sequential,
        *,
        spec: BackboneSpec,
        family: str,
        num_features: int,
        arch: dict,
        pretrained: str | None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec
        self.family = family
        self.num_features = num_features
        self.arch = arch
        self.pretrained = pretrained
        # A plain list (not a ModuleList): the blocks are the backbone's own submodules, so
        # registering them again would duplicate state-dict keys.
        self._blocks: list[nn.Module] = FAMILIES[family].blocks(backbone)

    def blocks(self) -> list[nn.Module]:
        """Ordered trunk blocks, stem first."""
        return list(self._blocks)

    def cam_layer(self) -> nn.Module:
        """The module whose activations class-activation maps use (runs inside ``forward``)."""
        return FAMILIES[self.family].cam(self.backbone, self._blocks)

    def _check_start(self, start: int) -> None:
        if not 0 <= start <= len(self._blocks):
            raise ValueError(f"start must be in 0..{len(self._blocks)}, got {start}")

    def forward_until(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Run blocks ``[0, start)``: the activations a cached-prefix trainer stores."""
        self._check_start(start)
        for block in self._blocks[:start]:
            x = block(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Pool trunk activations to the feature vector (the backbone's own pooling)."""
        return self.backbone.forward_head(x, pre_logits=True)

    def forward_from(self, feats: torch.Tensor, start: int) -> torch.Tensor:
        """Run blocks ``start..`` on cached activations, then pooling and head: logits."""
        self._check_start(start)
        for block in self._blocks[start:]:
            feats = block(feats)
        return self.head(self.pool(feats))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[N, num_features]``."""
        return self.pool(self.forward_until(x, len(self._blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]``."""
        return self.forward_from(x, 0)

    def train(self, mode: bool = True) -> FractureNet:
        """Set train/eval mode, keeping frozen BatchNorm layers in eval mode."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if _is_frozen_norm(module):
                    module.eval()
        return self


def _is_frozen_norm(module: nn.Module) -> bool:
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return False
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def set_train_mode(model: nn.Module, mode: bool = True) -> nn.Module:
    """``model.train(mode)`` that keeps frozen BatchNorm layers in eval mode.

    ``FractureNet.train`` already does this; the function serves wrapped models (e.g. a
    ``DistributedDataParallel`` around a ``FractureNet`` calls it too) and other modules.
    """
    model.train(mode)
    if mode:
        for module in model.modules():
            if _is_frozen_norm(module):
                module.eval()
    return model


def build_head(
    num_features: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0
) -> nn.Sequential:
    """``[Linear-ReLU-Dropout] * len(hidden)``, then ``Dropout`` and ``Linear`` to the classes."""
    layers: list[nn.Module] = []
    prev = num_features
    for width in hidden:
        layers += [nn.Linear(prev, int(width)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = int(width)
    if dropout > 0 and not hidden:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


def _make_trunk(spec: BackboneSpec, in_chans: int, embedded: bool) -> nn.Module:
    if spec.timm_name is None:
        return SCRATCH_NETS[spec.builder](in_chans=in_chans)
    import timm

    # pretrained=False always: timm must never reach for the network. Embedded weights load
    # into the full 1000-class architecture (strict), whose classifier is then removed.
    net = timm.create_model(
        spec.timm_name, pretrained=False, in_chans=in_chans, num_classes=1000 if embedded else 0
    )
    return net


def build_model(
    backbone: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    pretrained: bool = True,
    weights: str | None = None,
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
) -> FractureNet:
    """Build a fracture classifier.

    Args:
        backbone: a ``BACKBONES`` name or any timm model name.
        num_classes: head outputs; 1 builds a single-logit (sigmoid) binary head.
        in_chans: 1 (grayscale) or 3.
        pretrained: use embedded ImageNet weights where the backbone has them
            (``efficientnet_lite0``). Elsewhere, without ``weights``, the model is randomly
            initialised, a ``PretrainedUnavailableWarning`` says so and ``pretrained`` is None.
        weights: a local timm/torchvision state dict or fracturekit checkpoint for the trunk;
            it takes precedence over embedded weights.
        hidden: widths of hidden dense layers in the head (each Linear-ReLU-Dropout).
        dropout: dropout in the head.

    Raises:
        UnknownBackboneError: ``backbone`` is not known.
        ValueError: bad ``num_classes``, ``in_chans``, ``hidden`` or ``dropout``.
        FileNotFoundError, WeightsError: ``weights`` is missing or does not fit.
    """
    spec = get_spec(backbone)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    hidden = [int(h) for h in hidden]
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden layer widths must be positive, got {hidden}")

    use_embedded = pretrained and weights is None and spec.embedded is not None
    net = _make_trunk(spec, in_chans, use_embedded)
    source: str | None = None
    if use_embedded:
        source = EMBEDDED[spec.embedded](net)
        net.reset_classifier(0)
    family = family_for(spec.family, net)
    FAMILIES[family].prepare(net)
    if weights is not None:
        source = load_weights_file(net, weights, FAMILIES[family].rename)
    elif pretrained and source is None:
        warnings.warn(
            f"backbone {spec.name!r} has no embedded pretrained weights and no weights file "
            "was given: it starts from random initialisation (recorded as pretrained=None). "
            "Pass weights=PATH (--weights) for a local timm/torchvision state dict.",
            PretrainedUnavailableWarning,
            stacklevel=2,
        )
    if spec.timm_name is None:
        num_features = net.num_features
    elif family == "vgg":
        num_features = net.num_features  # the conv trunk's width: pre_logits was removed
    else:
        num_features = int(getattr(net, "head_hidden_size", None) or net.num_features)
    arch = {
        "backbone": spec.name,
        "num_classes": int(num_classes),
        "in_chans": int(in_chans),
        "hidden": hidden,
        "dropout": float(dropout),
    }
    return FractureNet(
        net,
        build_head(num_features, int(num_classes), hidden, float(dropout)),
        spec=spec,
        family=family,
        num_features=int(num_features),
        arch=arch,
        pretrained=source,
    )


def logits_to_proba(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities ``[N, C_out]`` from either head kind, after temperature scaling.

    A single-logit head scores class index 1: its output becomes ``[1 - p, p]`` with
    ``p = sigmoid(z / T)``, so callers never branch on the head type. Multi-logit heads give
    ``softmax(z / T)``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
    z = logits.float() / temperature
    if z.shape[1] == 1:
        p = torch.sigmoid(z)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(z, dim=1)


def apply_freeze(model: FractureNet, policy: str, train_last: int | None = None) -> int:
    """Set ``requires_grad`` by policy and return the number of trainable parameters.

    Policies:
        ``none``: everything trains.
        ``all-but-head``: only the head trains.
        ``train-last``: the last ``train_last`` trunk blocks, any pooling layers after them
        (ConvNeXt's head norm, LeNet's dense layers) and the head train; earlier blocks keep
        their weights ("freeze the first N - p layers"). ``train_last=0`` equals
        ``all-but-head`` plus the pooling layers; ``train_last >= len(blocks())`` trains all.

    Frozen BatchNorm layers are put in eval mode by ``model.train()`` (see ``FractureNet``).
    """
    if policy not in FREEZE_POLICIES:
        raise ValueError(
            f"freeze policy must be one of {', '.join(FREEZE_POLICIES)}, got {policy!r}"
        )
    if policy == "train-last" and (train_last is None or int(train_last) < 0):
        raise ValueError(f"freeze 'train-last' needs train_last >= 0, got {train_last}")
    for p in model.parameters():
        p.requires_grad_(policy == "none")
    if policy != "none":
        for p in model.head.parameters():
            p.requires_grad_(True)
    if policy == "train-last":
        blocks = model.blocks()
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        for p in model.backbone.parameters():
            if id(p) not in in_blocks:  # pooling layers after the trunk
                p.requires_grad_(True)
        n = min(int(train_last), len(blocks))
        for block in blocks[len(blocks) - n :]:
            for p in block.parameters():
                p.requires_grad_(True)
    model.train(model.training)  # refresh which BatchNorm layers are frozen
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
