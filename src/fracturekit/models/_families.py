"""Family adapters: how to cut a network into ordered trunk blocks, and where CAM looks.

Each adapter is a row of ``FAMILIES``. ``blocks(net)`` returns modules that, applied in order to
the input, reproduce ``net.forward_features`` exactly; ``net.forward_head(x, pre_logits=True)``
then pools to the feature vector. Blocks reference the network's own submodules, so freezing a
block freezes the real parameters and state-dict keys stay timm's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


class _ForwardFeatures(nn.Module):
    """A whole ``forward_features`` as one block, for timm families without an adapter."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_features(x)


def _identity(net: nn.Module) -> None:
    return None


@dataclass(frozen=True)
class Family:
    """One family adapter.

    Attributes:
        blocks: ordered trunk blocks (stem first) reproducing ``forward_features``.
        cam: the module (given the network and its blocks) whose activations class-activation
            maps use; it must run inside ``forward``.
        matches: recognises the family on an arbitrary timm model (``auto`` rows).
        prepare: trims parts the fracture model does not use (called once after building).
        rename: maps a foreign (e.g. torchvision) state-dict key to this family's timm key.
    """

    blocks: Callable[[nn.Module], list[nn.Module]]
    cam: Callable[[nn.Module, list[nn.Module]], nn.Module]
    matches: Callable[[nn.Module], bool] = lambda net: False
    prepare: Callable[[nn.Module], None] = _identity
    rename: Callable[[str], str] = lambda key: key


def _has(*names: str) -> Callable[[nn.Module], bool]:
    return lambda net: all(hasattr(net, n) for n in names)


def _vgg_blocks(net: nn.Module) -> list[nn.Module]:
    # The five VGG conv blocks, each ending at its max-pool.
    blocks, current = [], []
    for layer in net.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*current))
            current = []
    if current:
        blocks.append(nn.Sequential(*current))
    return blocks


def _vgg_prepare(net: nn.Module) -> None:
    # timm's VGG keeps the 4096-wide fc6/fc7 as 7x7 convs (~120 M parameters) before pooling;
    # the fracture model pools the 512-channel conv trunk instead (Keras include_top=False).
    net.pre_logits = nn.Identity()


def _densenet_blocks(net: nn.Module) -> list[nn.Module]:
    f = net.features
    return [
        nn.Sequential(f.conv0, f.norm0, f.pool0),
        nn.Sequential(f.denseblock1, f.transition1),
        nn.Sequential(f.denseblock2, f.transition2),
        nn.Sequential(f.denseblock3, f.transition3),
        nn.Sequential(f.denseblock4, f.norm5),
    ]


def _densenet_rename(key: str) -> str:
    # torchvision's published DenseNet files use "norm.1"/"conv.2" inside dense layers.
    import re

    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.(\d)\.", r"\1\2.", key)


FAMILIES: dict[str, Family] = {
    "efficientnet": Family(
        blocks=lambda n: [
            nn.Sequential(n.conv_stem, n.bn1),
            *n.blocks,
            nn.Sequential(n.conv_head, n.bn2),
        ],
        cam=lambda n, b: n.bn2,
        matches=_has("conv_stem", "bn1", "blocks", "conv_head", "bn2"),
    ),
    "resnet": Family(
        blocks=lambda n: [
            nn.Sequential(n.conv1, n.bn1, n.act1, n.maxpool),
            n.layer1,
            n.layer2,
            n.layer3,
            n.layer4,
        ],
        cam=lambda n, b: n.layer4,
        matches=_has("conv1", "bn1", "act1", "maxpool", "layer1", "layer4"),
    ),
    "vgg": Family(
        blocks=_vgg_blocks,
        cam=lambda n, b: n.features[-1],
        prepare=_vgg_prepare,
    ),
    "densenet": Family(
        blocks=_densenet_blocks,
        cam=lambda n, b: n.features.norm5,
        rename=_densenet_rename,
    ),
    "convnext": Family(
        blocks=lambda n: [n.stem, *n.stages[:-1], nn.Sequential(n.stages[-1], n.norm_pre)],
        cam=lambda n, b: n.stages[-1],
        matches=_has("stem", "stages", "norm_pre"),
    ),
    "scratch": Family(blocks=lambda n: list(n.stages), cam=lambda n, b: b[-1]),
    # Any other timm model: its forward_features is one block (train-last counts it as one)
    # and CAM looks at that block's output.
    "generic": Family(blocks=lambda n: [_ForwardFeatures(n)], cam=lambda n, b: b[-1]),
}


def family_for(name: str, net: nn.Module) -> str:
    """The adapter key for a table row's family, recognising ``auto`` rows by structure."""
    if name != "auto":
        return name
    for key, fam in FAMILIES.items():
        if fam.matches(net):
            return key
    return "generic"
