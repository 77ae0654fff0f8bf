"""The segmenter: decoders over the backbone table, embedded encoder weights, stages, checkpoints.

Random initialisation and 64 px inputs, except where the embedded Lite0 weights are the point.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from fracturekit.models import (
    CheckpointError,
    PretrainedUnavailableWarning,
    WeightsError,
    build_model,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from fracturekit.models._segment import (
    DECODERS,
    SEGMENT_ARCH_KEYS,
    Segmenter,
    SegmenterError,
    build_segmenter,
    freeze_encoder,
    load_encoder_state,
    load_segmenter,
    save_segmenter,
    segment_data_config,
    segmenter_from_meta,
)

_CACHE: dict[tuple[str, str], Segmenter] = {}


def segmenter_for(backbone: str, decoder: str = "unet") -> Segmenter:
    """One randomly initialised segmenter per (backbone, decoder) for the whole module."""
    if (backbone, decoder) not in _CACHE:
        _CACHE[backbone, decoder] = build_segmenter(
            backbone, decoder=decoder, pretrained=False
        ).eval()
    return _CACHE[backbone, decoder]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_decoders_map_images_to_pixel_logits(decoder: str, batch: torch.Tensor) -> None:
    model = segmenter_for("efficientnet_lite0", decoder)
    with torch.no_grad():
        logits = model(batch)
        own = model.net(batch)  # smp's own forward path
    assert logits.shape == (2, 1, 64, 64)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, own, rtol=0, atol=0)
    assert model.arch == {
        "task": "segment",
        "backbone": "efficientnet_lite0",
        "decoder": decoder,
        "in_chans": 3,
        "num_classes": 1,
        "hidden": [],
        "dropout": 0.0,
    }
    assert tuple(model.arch) == SEGMENT_ARCH_KEYS
    assert model.pretrained is None


@pytest.mark.parametrize(("backbone", "n_stages"), [("efficientnet_lite0", 5), ("resnet18", 5)])
def test_forward_until_from_is_exact(backbone: str, n_stages: int, batch: torch.Tensor) -> None:
    model = segmenter_for(backbone)
    assert len(model.encoder_stages()) == n_stages
    with torch.no_grad():
        full = model(batch)
        feats = model.forward_until(batch, n_stages)
        assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4, 2]  # reductions 1..32
        assert [f.shape[1] for f in feats] == model.net.encoder.out_channels
        for start in range(n_stages + 1):
            again = model.forward_from(model.forward_until(batch, start), start)
            assert torch.equal(again, full), start
    with pytest.raises(ValueError, match=r"start must be in 0\.\.5"):
        model.forward_until(batch, 6)


def test_any_timm_name_with_random_init(batch: torch.Tensor) -> None:
    # ConvNeXt's features start at 1/4 scale (smp pads the list): its encoder is one stage.
    with pytest.warns(PretrainedUnavailableWarning, match="convnext_atto"):
        model = build_segmenter("convnext_atto", decoder="fpn").eval()
    assert model.pretrained is None
    assert len(model.encoder_stages()) == 1
    with torch.no_grad():
        full = model(batch)
        assert full.shape == (2, 1, 64, 64)
        assert torch.equal(model.forward_from(model.forward_until(batch, 1), 1), full)
        assert torch.equal(model.forward_from(model.forward_until(batch, 0), 0), full)


def test_input_size_and_arguments_are_checked(batch: torch.Tensor) -> None:
    model = segmenter_for("efficientnet_lite0")
    with pytest.raises(ValueError, match="multiples of 32, got 48x64"):
        model(batch[:, :, :48])
    with pytest.raises(SegmenterError, match="unknown decoder 'deeplab'.*unet, unet_small, fpn"):
        build_segmenter("resnet18", decoder="deeplab", pretrained=False)
    with pytest.raises(SegmenterError, match="'lenet' is a from-scratch classifier"):
        build_segmenter("lenet", pretrained=False)
    with pytest.raises(ValueError, match="in_chans must be 1 or 3"):
        build_segmenter("resnet18", pretrained=False, in_chans=2)


@pytest.mark.slow
@pytest.mark.parametrize("in_chans", [3, 1])
def test_embedded_weights_fill_the_encoder(in_chans: int) -> None:
    """Every encoder tensor is the classifier's ImageNet trunk tensor of the same name."""
    model = build_segmenter("efficientnet_lite0", in_chans=in_chans)
    assert model.pretrained == "imagenet (embedded efficientnet-lite0 weights)"
    trunk = build_model("efficientnet_lite0", 2, in_chans=in_chans).backbone.state_dict()
    encoder = model.net.encoder.model.state_dict()
    assert len(encoder) == 288  # 296 - conv_head, bn2 (6) - classifier (2)
    assert set(trunk) - set(encoder) == {
        "conv_head.weight",
        "bn2.weight",
        "bn2.bias",
        "bn2.running_mean",
        "bn2.running_var",
        "bn2.num_batches_tracked",
    }
    assert all(torch.equal(v, trunk[k]) for k, v in encoder.items())
    assert encoder["conv_stem.weight"].shape[1] == in_chans


def test_weights_file_from_a_classifier_checkpoint(tmp_path) -> None:
    """A classifier's trunk initialises the encoder, through FeatureListNet's flattened names."""
    classifier = build_model("convnext_atto", 2, pretrained=False)
    ckpt = save_checkpoint(tmp_path / "model.pt", classifier, {"classes": ["no", "crack"]})
    model = build_segmenter("convnext_atto", weights=str(ckpt))
    assert model.pretrained == f"file:{ckpt.resolve()}"
    trunk = classifier.backbone.state_dict()
    encoder = model.net.encoder.model.state_dict()
    assert "stages_0.blocks.0.conv_dw.weight" in encoder
    flat = {k.replace(".", "_"): v for k, v in trunk.items()}
    assert all(torch.equal(v, flat[k.replace(".", "_")]) for k, v in encoder.items())
    # Every encoder tensor is loaded, counted, and the rest of the trunk (its head norm) is not.
    assert load_encoder_state(model.net.encoder, trunk, "trunk") == len(encoder) < len(trunk)


def test_encoder_state_that_does_not_fit_is_listed() -> None:
    model = segmenter_for("resnet18")
    state = dict(model.net.encoder.model.state_dict())
    state["conv1.weight"] = torch.zeros(1, 3, 3, 3)
    del state["layer4.1.bn2.bias"]
    with pytest.raises(WeightsError, match=r"1 encoder tensors missing.*1 shapes differ"):
        load_encoder_state(model.net.encoder, state, "src.pt")


def test_freeze_encoder_stages(batch: torch.Tensor) -> None:
    model = build_segmenter("resnet18", pretrained=False)
    total = _trainable(model)
    stages = model.encoder_stages()
    assert freeze_encoder(model, 0) == total
    frozen = sum(p.numel() for s in stages[:2] for p in s.parameters())
    assert freeze_encoder(model, 2) == total - frozen
    model.train()
    stem_bn = stages[0][1]
    assert isinstance(stem_bn, torch.nn.BatchNorm2d) and not stem_bn.training
    assert stages[2][0][0].bn1.training  # a trainable stage's BatchNorm trains
    # The frozen prefix computes the same features in train mode as in eval mode.
    with torch.no_grad():
        cached = model.forward_until(batch, 2)
        model.eval()
        assert all(
            torch.equal(a, b) for a, b in zip(cached, model.forward_until(batch, 2), strict=True)
        )
    model.train()
    model(batch).mean().backward()
    assert all(p.grad is None for s in stages[:2] for p in s.parameters())
    assert stages[2][0][0].conv1.weight.grad is not None
    with pytest.raises(ValueError, match=r"stages must be in 0\.\.5"):
        freeze_encoder(model, 6)


def test_checkpoint_round_trip(tmp_path, batch: torch.Tensor) -> None:
    model = segmenter_for("efficientnet_lite0", "fpn")
    path = save_segmenter(tmp_path / "seg.pt", model, {"threshold": 0.4, "min_area": 12})
    back, meta = load_segmenter(path)
    assert isinstance(back, Segmenter) and not back.training
    with torch.no_grad():
        assert torch.equal(back(batch), model(batch))
    assert meta["task"] == "segment" and meta["decoder"] == "fpn"
    assert (meta["threshold"], meta["min_area"], meta["img_size"]) == (0.4, 12, 224)
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["pretrained"] is None
    assert read_checkpoint(path)["meta"] == meta  # the classifier's reader accepts the file
    again, _ = load_checkpoint(path)  # the one loader dispatches on meta["task"]
    assert isinstance(again, Segmenter)
    classifier = save_checkpoint(
        tmp_path / "cls.pt", build_model("resnet18", 2, pretrained=False), None
    )
    with pytest.raises(CheckpointError, match="not a usable segmenter.*task is None"):
        load_segmenter(classifier)


def test_segment_meta_is_checked(tmp_path) -> None:
    model = segmenter_for("efficientnet_lite0")
    with pytest.raises(ValueError, match="decoder='fpn' contradicts the model"):
        save_segmenter(tmp_path / "x.pt", model, {"decoder": "fpn"})
    with pytest.raises(ValueError, match="multiple of 32, got 240"):
        save_segmenter(tmp_path / "x.pt", model, {"img_size": 240})
    with pytest.raises(ValueError, match="threshold must be in"):
        save_segmenter(tmp_path / "x.pt", model, {"threshold": 1.5})
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(SegmenterError, match="lacks decoder"):
        segmenter_from_meta({"task": "segment", "backbone": "resnet18", "in_chans": 3})


def test_default_sizes_are_multiples_of_the_stride() -> None:
    def fake(backbone: str) -> SimpleNamespace:
        return SimpleNamespace(arch={"backbone": backbone, "in_chans": 3}, stride=32)

    sizes = [
        segment_data_config(fake(name))["img_size"]
        for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
    ]
    assert sizes == [224, 256, 288]
    assert segment_data_config(fake("resnet18"), 64)["img_size"] == 64


def test_pretrained_without_weights_warns_for_other_rows() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PretrainedUnavailableWarning)
        with pytest.raises(PretrainedUnavailableWarning, match="resnet18"):
            build_segmenter("resnet18")


def test_nothing_frozen_trains_through_the_runner(batch: torch.Tensor) -> None:
    from fracturekit.train._runner import Runner

    model = segmenter_for("efficientnet_lite0")
    freeze_encoder(model, 0)
    out = Runner(model, 0, False)(batch, cached=False)
    assert out.shape == (batch.shape[0], 1, *batch.shape[-2:])
    out.mean().backward()  # the whole encoder gets gradients
    assert all(p.grad is not None for p in model.net.encoder.parameters())
