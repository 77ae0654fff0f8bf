"""ONNX export (`fracturekit export`) and the ONNX backend of Predictor."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fixture_images import noise_image
from fracturekit import export as export_mod
from fracturekit.cli import main
from fracturekit.export import ExportError, export_onnx, onnx_metadata
from fracturekit.models import build_model, save_checkpoint
from fracturekit.predict import ONNX_META_KEY, Predictor

CLASSES = ["crack", "no_crack"]


def make_checkpoint(
    path: Path, backbone: str = "simple_cnn", *, num_classes: int = 2, in_chans: int = 3, **meta
) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(backbone, num_classes, in_chans=in_chans, pretrained=False)
    # Random BatchNorm statistics, so the exported graph's folded BN is really tested.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    defaults = {
        "classes": CLASSES,
        "img_size": 32,
        "positive": "crack",
        "threshold": 0.35,
        "temperature": 0.7,
        "metrics": {"f1": 0.8, "ece": float("nan")},
    }
    return save_checkpoint(path, model, {**defaults, **meta})


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, export_mod.ExportReport]:
    root = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(root / "model.pt")
    report = export_onnx(ckpt, root / "model.onnx")
    return ckpt, root / "model.onnx", report


def test_export_report_and_parity(exported) -> None:
    _, onnx_path, report = exported
    assert report.path == onnx_path and onnx_path.is_file()
    assert report.passed and report.max_abs_diff <= 1e-4
    assert report.check_source == "synthetic" and report.n_images == export_mod.N_SYNTHETIC
    assert report.batch_sizes == [export_mod.N_SYNTHETIC, 1]
    assert report.input_shape == (3, 32, 32)
    assert report.size_bytes == onnx_path.stat().st_size > 0
    assert not list(onnx_path.parent.glob(".*.tmp"))


def test_metadata_carries_the_checkpoint_description(exported) -> None:
    ckpt, onnx_path, _ = exported
    model = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props[ONNX_META_KEY])
    assert meta["classes"] == CLASSES and meta["img_size"] == 32
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.5, 0.5, 0.5]
    assert meta["threshold"] == pytest.approx(0.35) and meta["temperature"] == pytest.approx(0.7)
    assert meta["positive"] == "crack" and meta["backbone"] == "simple_cnn"
    assert meta["metrics"]["ece"] is None  # NaN is not JSON
    assert json.loads(props["classes"]) == CLASSES
    assert props["img_size"] == "32" and json.loads(props["mean"]) == [0.5, 0.5, 0.5]
    assert props["positive"] == "crack"
    # The batch axis is symbolic; channels and size are fixed.
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert [o.name for o in model.graph.output] == ["logits"]


def test_onnx_predictor_matches_torch(exported, tmp_path: Path) -> None:
    ckpt, onnx_path, _ = exported
    paths = []
    for i in range(5):
        noise_image(i, (48, 40)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    torch_p = Predictor.from_checkpoint(ckpt)
    onnx_p = Predictor.from_checkpoint(onnx_path)
    beside = Predictor.from_checkpoint(ckpt, backend="onnx")  # finds model.onnx beside it
    assert onnx_p.backend == beside.backend == "onnx"
    assert onnx_p.classes == CLASSES and onnx_p.threshold == pytest.approx(0.35)
    assert onnx_p.describe()["backbone"] == "simple_cnn"
    for batch_size in (1, 2, 5):
        a = list(torch_p.predict_paths(paths, batch_size))
        b = list(onnx_p.predict_paths(paths, batch_size))
        for x, y in zip(a, b, strict=True):
            assert x.label == y.label
            for c in CLASSES:
                assert abs(x.probabilities[c] - y.probabilities[c]) <= 1e-4


def test_check_images_given(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt")
    files = []
    for i in range(3):
        noise_image(10 + i).save(tmp_path / f"c{i}.png")
        files.append(tmp_path / f"c{i}.png")
    report = export_onnx(ckpt, tmp_path / "m.onnx", check_images=files)
    assert report.check_source == "images" and report.n_images == 3
    assert report.batch_sizes == [3, 1]


def test_refuses_a_model_that_fails_parity(tmp_path: Path, monkeypatch) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt")
    real = export_mod._torch_export

    def perturbed(model, example, path, opset, **kw):
        # Export a copy whose head is off by a little: the check must notice and refuse it.
        import copy

        other = copy.deepcopy(model)
        with torch.no_grad():
            other.head[-1].bias[0] += 0.05  # one logit: softmax ignores a common shift
        real(other, example, path, opset, **kw)

    monkeypatch.setattr(export_mod, "_torch_export", perturbed)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="differ from PyTorch's.*was not written"):
        export_onnx(ckpt, out)
    assert not out.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_refuses_to_overwrite(exported, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"user file")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(ckpt, out)
    assert out.read_bytes() == b"user file"
    export_onnx(ckpt, out, overwrite=True)
    assert onnx.load(str(out)).graph.output[0].name == "logits"


def test_grayscale_and_single_logit(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "g.pt", num_classes=1, in_chans=1, mean=None, std=None)
    report = export_onnx(ckpt, tmp_path / "g.onnx")
    assert report.passed and report.input_shape == (1, 32, 32)
    pred = Predictor.from_checkpoint(tmp_path / "g.onnx").predict_images([noise_image(1)])[0]
    assert list(pred.probabilities) == CLASSES


def test_onnx_metadata_is_json_safe() -> None:
    props = onnx_metadata({"classes": ["a"], "img_size": 8, "metrics": {"x": float("inf")}})
    assert json.loads(props[ONNX_META_KEY])["metrics"]["x"] is None
    assert props["classes"] == '["a"]'


def test_cli_export(tmp_path: Path, capsys) -> None:
    ckpt = make_checkpoint(tmp_path / "model.pt")
    assert main(["export", str(ckpt)]) == 0  # default: model.onnx beside the checkpoint
    assert (tmp_path / "model.onnx").is_file()
    assert "max |p_onnx - p_torch|" in capsys.readouterr().err
    assert main(["export", str(ckpt)]) == 2
    assert "exists" in capsys.readouterr().err
    out = tmp_path / "sub" / "other.onnx"
    noise_image(0).save(tmp_path / "check.png")
    args = ["export", str(ckpt), "--out", str(out), "--check-images", str(tmp_path / "check.png")]
    assert main(args) == 0
    assert "parity on 1 given image(s)" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")]) == 2

    # `fracturekit predict --backend onnx` finds model.onnx beside model.pt: same rows.
    rows = {}
    for backend in ("torch", "onnx"):
        out_csv = tmp_path / f"{backend}.csv"
        args = ["predict", str(ckpt), str(tmp_path / "check.png"), "--out", str(out_csv)]
        assert main([*args, "--backend", backend]) == 0
        rows[backend] = out_csv.read_text(encoding="utf-8").splitlines()
    assert rows["torch"][0] == rows["onnx"][0] == "path,label,p_crack,p_no_crack,threshold,error"
    torch_row, onnx_row = rows["torch"][1].split(","), rows["onnx"][1].split(",")
    assert torch_row[1] == onnx_row[1]
    assert float(torch_row[2]) == pytest.approx(float(onnx_row[2]), abs=1e-4)


@pytest.mark.slow
def test_efficientnet_lite0_parity(tmp_path: Path) -> None:
    """TF "same" padding and depthwise convolutions through the exporter, at 64 px."""
    ckpt = make_checkpoint(tmp_path / "lite0.pt", "efficientnet_lite0", img_size=64)
    report = export_onnx(ckpt, tmp_path / "lite0.onnx")
    assert report.passed and report.input_shape == (3, 64, 64)
    session_in = Predictor.from_checkpoint(tmp_path / "lite0.onnx")
    x = torch.randn(3, 3, 64, 64)
    torch_p = Predictor.from_checkpoint(ckpt)
    assert np.abs(session_in.predict_proba(x) - torch_p.predict_proba(x)).max() <= 1e-4


def test_onnx_predictor_averages_the_same_views(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", tta=4)
    export_onnx(ckpt, tmp_path / "m.onnx")
    torch_p, onnx_p = (
        Predictor.from_checkpoint(ckpt),
        Predictor.from_checkpoint(tmp_path / "m.onnx"),
    )
    assert onnx_p.tta == torch_p.tta == 4
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(onnx_p.logits(x), torch_p.logits(x), atol=1e-4, rtol=1e-4)
    onnx_p.meta["tta"] = 1
    assert not torch.allclose(onnx_p.logits(x), torch_p.logits(x), atol=1e-3)


# --------------------------------------------------------------------------------------------
# INT8 (`fracturekit export --int8`)


@pytest.fixture(scope="module")
def trained_on(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint whose stored config names a reachable class-folder data set."""
    from PIL import Image

    from fracturekit.synthetic import render_sample

    root = tmp_path_factory.mktemp("int8")
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / "data" / cls).mkdir(parents=True)
        for i in range(12):
            sample = render_sample(rng, 40, "concrete", cls == "crack")
            Image.fromarray(sample.image).save(root / "data" / cls / f"{i}.png")
    config = {"data": str(root / "data"), "layout": "folders", "val_fraction": 0.5, "seed": 0}
    return make_checkpoint(root / "model.pt", config=config), root / "data"


def test_int8_calibrates_on_training_and_checks_on_validation(trained_on, tmp_path) -> None:
    from fracturekit.quantize import export_int8

    ckpt, data = trained_on
    out = tmp_path / "model.int8.onnx"
    # An untrained model's probabilities sit near 0.5, where int8 moves its ranking; the limits
    # are opened here, their enforcement is tested below.
    report = export_int8(ckpt, out, max_auc_drop=1, max_f1_drop=1)
    assert report.passed and out.is_file() and report.size_bytes < report.fp32_size_bytes
    assert report.n_calibration == 12 and report.n_validation == 12
    assert report.calibration_source == f"the training split of {data}"
    assert set(report.fp32) == set(report.int8) == {"roc_auc", "f1"}
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props[ONNX_META_KEY])["threshold"] == pytest.approx(0.35)
    # The INT8 file runs through the same Predictor, close to FP32.
    images = sorted((data / "crack").glob("*.png"))[:4]
    torch_p, int8_p = Predictor.from_checkpoint(ckpt), Predictor.from_checkpoint(out)
    for a, b in zip(torch_p.predict_paths(images), int8_p.predict_paths(images), strict=True):
        assert abs(a.probabilities["crack"] - b.probabilities["crack"]) < 0.05


def test_int8_refuses_an_accuracy_drop_and_says_both(trained_on, tmp_path, monkeypatch) -> None:
    from fracturekit import quantize

    ckpt, _ = trained_on
    scores = iter([{"roc_auc": 0.95, "f1": 0.90, "n": 12}, {"roc_auc": 0.94, "f1": 0.895, "n": 12}])
    monkeypatch.setattr(quantize, "accuracy", lambda predictor, samples: next(scores))
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(quantize.Int8Error, match=r"ROC AUC 0.9500 -> 0.9400 \(drop \+0.0100.*F1"):
        quantize.export_int8(ckpt, out)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_int8_needs_images_when_the_training_data_is_gone(tmp_path, capsys) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", config={"data": str(tmp_path / "gone")})
    assert main(["export", str(ckpt), "--int8"]) == 2
    err = capsys.readouterr().err
    assert "not reachable" in err and "--calibration-images" in err and "--validation-images" in err
    # Given both, no training data is needed; the default name is CKPT.int8.onnx.
    from PIL import Image

    from fracturekit.synthetic import render_sample

    rng = np.random.default_rng(1)
    for cls in CLASSES:
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(4):
            img = render_sample(rng, 40, "concrete", cls == "crack").image
            Image.fromarray(img).save(tmp_path / "val" / cls / f"{i}.png")
    args = ["export", str(ckpt), "--int8", "--calibration-images", str(tmp_path / "val")]
    args += ["--validation-images", str(tmp_path / "val"), "--max-auc-drop", "1"]
    assert main([*args, "--max-f1-drop", "1"]) == 0
    assert (tmp_path / "m.int8.onnx").is_file()
    assert "calibrated on 8 image(s) of given images" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Segmenters (`meta["task"] == "segment"`): pixel logits, dynamic height and width


@pytest.fixture(scope="module")
def seg_exported(make_seg_checkpoint, tmp_path_factory):
    """A random-init 64-px U-Net checkpoint (its own copy) and its ONNX export."""
    import shutil

    root = tmp_path_factory.mktemp("seg_export")
    ckpt = root / "model.pt"
    shutil.copyfile(make_seg_checkpoint(threshold=0.6, min_area=3), ckpt)
    report = export_onnx(ckpt, root / "model.onnx")
    return ckpt, root / "model.onnx", report


def test_segmenter_export_parity_at_two_sizes(seg_exported) -> None:
    from fracturekit.models import load_checkpoint

    ckpt, onnx_path, report = seg_exported
    assert report.task == "segment" and report.passed and report.max_abs_diff <= 1e-4
    assert report.batch_sizes == [export_mod.N_SYNTHETIC, 1]
    assert report.dynamic_spatial and report.spatial_sizes == [(64, 64), (96, 128)]
    assert report.mask_disagreement is not None and report.mask_disagreement <= 1e-3
    graph = onnx.load(str(onnx_path)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True] and dims[1].dim_value == 3
    out_dims = graph.output[0].type.tensor_type.shape.dim
    assert out_dims[1].dim_value == 1 and all(out_dims[i].dim_param for i in (0, 2, 3))
    # The graph takes another multiple of 32 directly, non-square, and agrees with PyTorch.
    model, _ = load_checkpoint(ckpt)
    x = torch.randn(2, 3, 32, 160)
    with torch.inference_mode():
        ref = torch.sigmoid(model.eval()(x)).numpy()
    got = export_mod._session(onnx_path).run(None, {"input": x.numpy()})[0]
    assert got.shape == (2, 1, 32, 160)
    assert np.abs(torch.sigmoid(torch.from_numpy(got)).numpy() - ref).max() <= 1e-4


def test_segmenter_metadata_round_trips(seg_exported) -> None:
    _, onnx_path, report = seg_exported
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    meta = json.loads(props[ONNX_META_KEY])
    assert meta["task"] == "segment" and meta["decoder"] == "unet"
    assert meta["threshold"] == pytest.approx(0.6) and meta["min_area"] == 3
    assert props["task"] == "segment" and props["min_area"] == "3" and props["decoder"] == "unet"
    assert report.metadata["threshold"] == "0.6"
    predictor = Predictor.from_checkpoint(onnx_path)
    assert (predictor.task, predictor.threshold, predictor.min_area) == ("segment", 0.6, 3)


def test_onnx_segmenter_maps_and_masks_match_torch(seg_exported) -> None:
    ckpt, onnx_path, _ = seg_exported
    torch_p = Predictor.from_checkpoint(ckpt)
    onnx_p = Predictor.from_checkpoint(onnx_path)
    beside = Predictor.from_checkpoint(ckpt, backend="onnx")  # finds model.onnx beside it
    assert onnx_p.backend == beside.backend == "onnx" and beside.task == "segment"
    # Sizes other than img_size (64): the maps are resized back to each image's own size.
    images = [noise_image(i, size) for i, size in enumerate([(80, 48), (48, 80), (64, 64)])]
    a, b = torch_p.probability_maps(images), onnx_p.probability_maps(images)
    assert [m.shape for m in b] == [(48, 80), (80, 48), (64, 64)]
    assert all(m.dtype == np.float32 for m in b)
    # The ONNX backend resizes with Pillow, torch with torchvision (within a grey level when
    # shrinking; Pillow's bicubic kernel is softer when enlarging): on enlarged noise, the
    # worst case, the maps agree to a few 1e-2.
    for x, y in zip(a, b, strict=True):
        assert np.abs(x - y).max() <= 0.05 and np.abs(x - y).mean() <= 0.005
    masks_a, masks_b = torch_p.masks_from_maps(a), onnx_p.masks_from_maps(b)
    assert any(m.any() for m in masks_a) and not all(m.all() for m in masks_a)
    for x, y in zip(masks_a, masks_b, strict=True):
        assert (x != y).mean() <= 0.02
    # The same preprocessed batch, as a tensor or numpy, without sizes: img_size maps, equal
    # within the graph's own parity.
    batch = torch.stack([torch_p.preprocess(im) for im in images])
    plain = onnx_p.predict_proba_maps(batch.numpy())
    assert [m.shape for m in plain] == [(64, 64)] * 3
    assert np.abs(plain[0] - torch_p.predict_proba_maps(batch)[0]).max() <= 1e-4


@pytest.mark.parametrize(
    "src, size", [((64, 64), (80, 48)), ((32, 48), (7, 130)), ((5, 3), (5, 3))]
)
def test_numpy_resize_is_torch_bilinear(src: tuple[int, int], size: tuple[int, int]) -> None:
    import torch.nn.functional as F

    from fracturekit.predict import resize_probability

    prob = np.random.default_rng(0).random(src, dtype=np.float32)
    w, h = size
    ref = F.interpolate(torch.from_numpy(prob)[None, None], size=(h, w), mode="bilinear")[0, 0]
    assert np.abs(resize_probability(prob, size) - ref.numpy()).max() <= 1e-6


def test_segmenter_tta_averages_turned_back_views_on_both_backends(seg_exported) -> None:
    from fracturekit.models import INVERSE_VIEWS, VIEW_OPS

    ckpt, onnx_path, _ = seg_exported
    torch_p, onnx_p = Predictor.from_checkpoint(ckpt), Predictor.from_checkpoint(onnx_path)
    batch = torch.stack([torch_p.preprocess(noise_image(i, (64, 64))) for i in range(2)])
    one = np.stack(torch_p.predict_proba_maps(batch))
    for predictor in (torch_p, onnx_p):
        predictor.meta["tta"] = 8
    eight = np.stack(torch_p.predict_proba_maps(batch))
    with torch.inference_mode():
        logits = sum(
            VIEW_OPS[k](torch_p.model(op(batch)))
            for op, k in zip(VIEW_OPS, INVERSE_VIEWS, strict=True)
        )
    expect = torch.sigmoid(logits / 8)[:, 0].numpy()
    assert np.abs(eight - expect).max() <= 1e-5 and np.abs(eight - one).max() > 1e-3
    assert np.abs(np.stack(onnx_p.predict_proba_maps(batch.numpy())) - eight).max() <= 1e-4


def test_cli_summary_of_a_segmenter(seg_exported) -> None:
    from fracturekit.cli.export import _summary

    line = _summary(seg_exported[2])
    assert "[N, 3, H, W] with H, W any multiple of 32 -> pixel logits [N, 1, H, W]" in line
    assert "sizes 64x64, 96x128" in line and "masks at the stored threshold differ at" in line


def test_int8_refuses_a_segmenter_clearly(seg_exported, tmp_path: Path, capsys) -> None:
    from fracturekit.quantize import Int8Error, export_int8

    ckpt = seg_exported[0]
    with pytest.raises(Int8Error, match="INT8 export covers classifiers only"):
        export_int8(ckpt, tmp_path / "s.int8.onnx")
    assert main(["export", str(ckpt), "--int8", "--out", str(tmp_path / "s.int8.onnx")]) == 2
    assert "INT8 export covers classifiers only" in capsys.readouterr().err
    assert not (tmp_path / "s.int8.onnx").exists()


@pytest.mark.slow
def test_segmenter_falls_back_to_a_fixed_size(make_seg_checkpoint, tmp_path, monkeypatch) -> None:
    """A graph that does not hold at the second size is exported again at img_size."""
    real = export_mod._torch_export
    monkeypatch.setattr(
        export_mod,
        "_torch_export",
        lambda model, example, path, opset, **kw: real(model, example, path, opset),
    )
    report = export_onnx(make_seg_checkpoint(), tmp_path / "s.onnx")
    assert report.passed and not report.dynamic_spatial and report.spatial_sizes == [(64, 64)]
    dims = onnx.load(str(tmp_path / "s.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 64, 64]


@pytest.mark.slow
def test_refuses_a_segmenter_that_fails_parity(make_seg_checkpoint, tmp_path, monkeypatch) -> None:
    real = export_mod._torch_export

    def perturbed(model, example, path, opset, **kw):
        import copy

        other = copy.deepcopy(model)
        with torch.no_grad():
            other.net.segmentation_head[0].bias += 0.05
        real(other, example, path, opset, **kw)

    monkeypatch.setattr(export_mod, "_torch_export", perturbed)
    out = tmp_path / "s.onnx"
    with pytest.raises(ExportError, match="pixel probabilities differ.*was not written"):
        export_onnx(make_seg_checkpoint(), out)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
