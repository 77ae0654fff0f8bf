"""Class-activation maps: every method on every backbone row, heads, hooks, pictures, the CLI."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fracturekit.cli import main
from fracturekit.explain import (
    CAM_METHODS,
    compute_cams,
    derive_crack_mask,
    evaluate_localisation,
    explain_images,
    feature_maps,
    layer_choices,
    overlay,
    resolve_layers,
    resolve_target,
    save_overlay_figure,
    write_cam_gallery,
)
from fracturekit.models import (
    BACKBONES,
    PretrainedUnavailableWarning,
    apply_freeze,
    build_model,
    save_checkpoint,
)
from fracturekit.predict import Predictor

SIZE = 32
_MODELS: dict[str, torch.nn.Module] = {}
# Score-CAM runs one forward pass per channel of the target layer (1280 for EfficientNet,
# 2048 for ResNet-50): seconds even at 64 px, so only the small networks run it by default.
SCORECAM_FAST = {"lenet", "simple_cnn"}
# Score-CAM runs one forward pass per channel of the target layer: minutes a case on 2 cores.
SCORECAM_HEAVY = {"resnet50", "densenet121", "vgg19", "convnext_tiny"}


def _build(name: str, num_classes: int = 2, **kw) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedUnavailableWarning)
        return build_model(name, num_classes, pretrained=False, **kw)


def model_for(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = _build(name).eval()
    return _MODELS[name]


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


def _cases() -> list:
    cases = []
    for backbone in BACKBONES:
        for method in CAM_METHODS:
            marks = []
            if method == "scorecam" and backbone not in SCORECAM_FAST:
                marks.append(pytest.mark.slow)
            cases.append(pytest.param(backbone, method, marks=marks, id=f"{backbone}-{method}"))
    return cases


@pytest.mark.parametrize(("backbone", "method"), _cases())
def test_every_method_on_every_backbone(backbone: str, method: str) -> None:
    model = model_for(backbone)
    # 64 px: the last stage of most rows is then 2x2 (at 32 px a 1x1 map has no "where").
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    if method == "scorecam" and backbone in SCORECAM_HEAVY:
        x = x[:1]  # one forward pass per channel (2,048 for resnet50): one image is enough
    maps = [compute_cams(model, x, method=method, target=t) for t in (0, 1)]
    for cams in maps:
        assert cams.shape == (len(x), 64, 64) and cams.dtype == np.float32
        assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0
    # A class with no positive evidence gives a zero map, but the log-odds of one class is minus
    # the other's: at least one of the two must show something.
    assert max(float(maps[0].max()), float(maps[1].max())) > 0.5
    assert _no_hooks(model)


def test_target_layer_is_found_for_every_row() -> None:
    for backbone in BACKBONES:
        model = model_for(backbone)
        assert "cam" in layer_choices(model)
        assert any(model.cam_layer() is m for m in model.modules()) or model.cam_layer() in (
            model.blocks()
        )


def test_hooks_flags_and_mode_are_restored_even_after_a_failure() -> None:
    model = _build("simple_cnn")
    apply_freeze(model, "all-but-head")
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    cams = compute_cams(model, torch.randn(1, 3, SIZE, SIZE))
    assert cams.shape == (1, SIZE, SIZE)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert not model.cam_layer()._forward_hooks and _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient computed
    with pytest.raises(RuntimeError):  # wrong channel count: the forward pass fails
        compute_cams(model, torch.randn(1, 5, SIZE, SIZE))
    assert _no_hooks(model) and model.training
    assert [p.requires_grad for p in model.parameters()] == flags


def test_single_logit_head_matches_its_two_logit_twin() -> None:
    torch.manual_seed(3)
    single = _build("simple_cnn", 1)
    double = _build("simple_cnn", 2)
    trunk = {k: v for k, v in single.state_dict().items() if not k.startswith("head.")}
    double.load_state_dict(trunk, strict=False)
    w, b = single.head[-1].weight.data, single.head[-1].bias.data
    double.head[-1].weight.data = torch.cat([torch.zeros_like(w), w])  # z1 - z0 == z_single
    double.head[-1].bias.data = torch.cat([torch.zeros_like(b), b])
    x = torch.randn(3, 3, SIZE, SIZE)
    for method in ("gradcam", "layercam"):
        for target in (0, 1):
            a = compute_cams(single.eval(), x, method=method, target=target)
            c = compute_cams(double.eval(), x, method=method, target=target)
            np.testing.assert_allclose(a, c, atol=1e-4)
    # For a single-logit head, class 0's evidence is the opposite of class 1's.
    pos = compute_cams(single, x, method="hirescam", target=1)
    neg = compute_cams(single, x, method="hirescam", target=0)
    assert not np.allclose(pos, neg)


def test_multiclass_default_explains_the_predicted_class() -> None:
    torch.manual_seed(5)
    model = _build("simple_cnn", 3).eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    default = compute_cams(model, x)
    for i, c in enumerate(predicted.tolist()):
        explicit = compute_cams(model, x[i : i + 1], target=c)
        np.testing.assert_allclose(default[i], explicit[0], atol=1e-5)


def test_targets_by_name_and_errors() -> None:
    assert resolve_target(None, classes=["crack", "no_crack"], positive="crack") == 0
    assert resolve_target(None, classes=["a", "b"], positive=None) == 1
    assert resolve_target(None, classes=["a", "b", "c"]) is None
    assert resolve_target("no_crack", classes=["crack", "no_crack"]) == 1
    assert resolve_target("2", classes=["a", "b", "c"]) == 2
    with pytest.raises(ValueError, match="use one of crack, no_crack"):
        resolve_target("dent", classes=["crack", "no_crack"])
    with pytest.raises(ValueError, match="out of range"):
        resolve_target(5, classes=["a", "b"])
    with pytest.raises(ValueError, match="unknown CAM method"):
        compute_cams(model_for("simple_cnn"), torch.randn(1, 3, 8, 8), method="magic")
    with pytest.raises(ValueError, match=r"unknown layer 'nope': use one of cam, block0"):
        compute_cams(model_for("simple_cnn"), torch.randn(1, 3, 8, 8), layer="nope")


def test_fine_layers_are_the_last_stride16_block_and_the_next() -> None:
    expected = {
        "efficientnet_lite0": ["block5", "block6"],
        "resnet18": ["block3", "block4"],
        "vgg19": ["block3", "block4"],
        "convnext_tiny": ["block3", "block4"],
        "simple_cnn": ["block3"],  # its last block is the stride-16 one: the CAM layer alone
    }
    for backbone, names in expected.items():
        model = model_for(backbone)
        assert resolve_layers(model, "fine")[1] == names
        assert _no_hooks(model)
    assert resolve_layers(model_for("lenet"), "fine")[0] == [model_for("lenet").cam_layer()]


def test_other_layers_and_layer_lists() -> None:
    model = model_for("efficientnet_lite0")
    x = torch.randn(1, 3, 64, 64)
    for layer in ("block4", "backbone.blocks.3", ["block4", "cam"], "fine", ["fine", "block2"]):
        cams = compute_cams(model, x, layer=layer)
        assert cams.shape == (1, 64, 64) and 0 <= cams.min() <= cams.max() <= 1
    maps = feature_maps(model, x, ["block2", "block4"])
    assert maps["block2"].shape[2:] == (16, 16) and maps["block4"].shape[2:] == (4, 4)
    assert _no_hooks(model)


def test_overlay_blends_at_the_image_size() -> None:
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    cam = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    out = overlay(image, cam, alpha=0.45)
    assert out.mode == "RGB" and out.size == (40, 30)
    assert (np.asarray(overlay(image, cam, alpha=0.0)) == np.asarray(image)).all()
    full = np.asarray(overlay(image, cam, alpha=1.0))
    assert not (full == np.asarray(image)).all()
    assert full[0, 0, 2] > full[0, 0, 0] and full[-1, -1, 0] > full[-1, -1, 2]  # jet: blue->red
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, cam, alpha=2)


def test_overlay_figure_is_a_png(tmp_path: Path) -> None:
    path = save_overlay_figure(
        Image.new("L", (50, 40), 128), np.random.default_rng(0).random((8, 8)), tmp_path / "f.png",
        "predicted crack (p = 0.97)",
    )  # fmt: skip
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > im.height
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # no temporary file left


# --------------------------------------------------------------------------------------------
# through a Predictor: files, the CLI, the gallery, localisation


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    meta = {"img_size": SIZE, "classes": ["crack", "no_crack"], "positive": "crack"}
    return save_checkpoint(path, _build("simple_cnn"), meta)


def _images(folder: Path, n: int, size=(48, 40)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def test_explain_images_writes_overlays_and_heat_maps(ckpt: Path, tmp_path: Path) -> None:
    paths = _images(tmp_path / "in", 3)
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"not an image")
    predictor = Predictor.from_checkpoint(ckpt)
    out = tmp_path / "out"
    results = explain_images(predictor, [*paths, bad], out, batch_size=2, feature_grids=["block1"])
    assert [r.path for r in results] == [str(p) for p in [*paths, bad]]
    assert results[-1].error is not None and "broken.png" in results[-1].error
    for r in results[:-1]:
        assert r.error is None and r.target == "crack" and r.label in ("crack", "no_crack")
        heat = np.load(r.heatmap)
        assert heat.shape == (40, 48) and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() <= 1.0
        assert r.figure.exists() and r.overlay.exists() and r.layer_grids["block1"].exists()
        assert Image.open(r.overlay).size == (48, 40)
    with pytest.raises(FileExistsError, match="img0_cam.png"):
        explain_images(predictor, paths[:1], out)
    again = explain_images(predictor, paths[:1], out, overwrite=True, target="no_crack")
    assert again[0].target == "no_crack"


def test_explain_cli(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "in"
    _images(folder, 2)
    out = tmp_path / "cams"
    assert main(["explain", str(ckpt), str(folder), "--out", str(out), "--method", "layercam"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "img0_cam.npy", "img0_cam.png", "img0_overlay.png",
        "img1_cam.npy", "img1_cam.png", "img1_overlay.png",
    ]  # fmt: skip
    code = main(["explain", str(ckpt), str(folder), "--out", str(out), "--layers", "blockX"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown layer 'blockX'" in err and "block0" in err and "Traceback" not in err
    assert main(["explain", str(ckpt), str(folder), "--out", str(out)]) == 2  # exists
    assert main(["explain", str(ckpt), str(folder / "gone.png"), "--out", str(tmp_path / "x")]) == 1


def test_cam_gallery_groups_and_names(ckpt: Path, tmp_path: Path) -> None:
    paths = _images(tmp_path / "in", 6)
    predictor = Predictor.from_checkpoint(ckpt)
    predictor.meta["threshold"] = 0.0  # everything predicted positive: TPs and FPs only
    labels = ["crack", "crack", "crack", "no_crack", "no_crack", 1]
    out = tmp_path / "run" / "cams"
    out.mkdir(parents=True)
    (out / "false_negative_01_old.png").write_bytes(b"stale")
    (out / "notes.txt").write_text("kept")
    written = write_cam_gallery(predictor, paths, labels, out, n_per_group=2)
    names = [p.name for p in written]
    assert len(names) == 4
    assert sum(n.startswith("true_positive_0") for n in names) == 2
    assert sum(n.startswith("false_positive_0") for n in names) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "notes.txt"])
    with pytest.raises(ValueError, match="not one of the classes"):
        write_cam_gallery(predictor, paths[:1], ["dent"], out)


def test_evaluate_localisation_scores_positive_masked_images(ckpt: Path, tmp_path: Path) -> None:
    from fracturekit.data import Sample

    paths = _images(tmp_path / "img", 4)
    masks = []
    for i in range(4):
        mask = np.zeros((40, 48), np.uint8)
        if i != 2:  # image 2 has an empty mask
            mask[10:14, :] = 255
        masks.append(tmp_path / f"m{i}.png")
        Image.fromarray(mask).save(masks[-1])
    samples = [
        Sample(paths[0], 0, "crack", mask=masks[0]),
        Sample(paths[1], 0, "crack", mask=masks[1]),
        Sample(paths[2], 0, "crack", mask=masks[2]),
        Sample(paths[3], 1, "no_crack", mask=masks[3]),  # negative class: not scored
        Sample(tmp_path / "missing.png", 0, "crack", mask=masks[0]),
    ]
    out = evaluate_localisation(Predictor.from_checkpoint(ckpt), samples, batch_size=2)
    assert out["n"] == 2 and out["n_empty"] == 1 and len(out["unreadable"]) == 1
    assert 0 <= out["pointing_game"] <= 1 and 0 <= out["energy_in_mask"] <= 1
    # The default: HiResCAM at the "fine" layers, which fall back to the last stage of a
    # network without a stride-16 block followed by another.
    assert out["method"] == "hirescam" and out["layer"] == "block3"


def test_derived_crack_mask_follows_a_dark_line(ckpt: Path) -> None:
    rng = np.random.default_rng(0)
    gray = 170 + rng.normal(0, 4, (64, 64))
    gray[30:33, 5:60] = 60  # a 3 px wide dark crack
    image = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8)).convert("RGB")
    derived = derive_crack_mask(Predictor.from_checkpoint(ckpt), image, cam_threshold=0.0)
    truth = np.zeros((64, 64), bool)
    truth[30:33, 5:60] = True
    iou = (derived.mask & truth).sum() / (derived.mask | truth).sum()
    assert iou > 0.8
    assert derived.cam.shape == (64, 64) and derived.centre_lines[31, 10:55].mean() > 0.9


def test_heat_map_region_gates_the_derived_mask(ckpt: Path, monkeypatch) -> None:
    from fracturekit.explain import crack_mask

    gray = np.full((64, 64), 170, np.uint8)
    gray[30:33, 2:62] = 60
    image = Image.fromarray(gray).convert("RGB")
    cam = np.zeros((64, 64), np.float32)
    cam[:, :16] = 1.0  # attention on the left quarter only
    monkeypatch.setattr(crack_mask, "image_cam", lambda *a, **k: cam)
    derived = derive_crack_mask(Predictor.from_checkpoint(ckpt), image, max_width=8)
    cols = np.nonzero(derived.mask.any(axis=0))[0]
    # The region is the attended quarter grown by max_width (8 px): columns up to 23.
    assert cols.min() <= 10 and 20 <= cols.max() <= 24  # (skeleton ends retract a little)
    assert derived.mask[30:33, 10:20].all() and not derived.mask[:, 30:].any()


def test_width_cli_model_path_on_a_synthetic_crack(ckpt: Path, tmp_path: Path) -> None:
    from fracturekit.synthetic import render_sample

    sample = render_sample(np.random.default_rng(2), 64, "concrete", True)
    image = tmp_path / "crack.png"
    Image.fromarray(sample.image).save(image)
    mask = tmp_path / "crack_mask.png"
    Image.fromarray(sample.mask.astype(np.uint8) * 255).save(mask)
    out = tmp_path / "widths"
    assert main(["width", str(image), "--model", str(ckpt), "--out", str(out)]) == 0
    assert (out / "widths.csv").read_text().startswith("image,crack,length_px")
    assert (out / "attention_width.csv").read_text().startswith("image,crack,points")
    # With the true mask too: the crack is measured from the mask and the heat map is sampled
    # along its skeleton.
    out2 = tmp_path / "widths2"
    code = main(
        ["width", str(image), "--mask", str(mask), "--model", str(ckpt), "--out", str(out2)]
    )
    assert code == 0
    rows = (out2 / "attention_width.csv").read_text().splitlines()
    assert len(rows) >= 2 and rows[1].startswith("crack,1,")
    assert (out2 / "attention_crack.png").exists()


def test_measure_files_pairs_masks_and_names_the_problems(tmp_path: Path) -> None:
    """``measure_files`` without a model: inputs paired with their masks, no attention."""
    from fracturekit.explain import measure_files
    from fracturekit.synthetic import render_sample

    sample = render_sample(np.random.default_rng(8), 64, "asphalt", True)
    image = tmp_path / "img.png"
    Image.fromarray(sample.image).save(image)
    (tmp_path / "masks").mkdir()
    Image.fromarray(sample.mask.astype(np.uint8) * 255).save(tmp_path / "masks" / "img.png")
    out = tmp_path / "out"
    written = measure_files([image, image], out, masks=[tmp_path / "masks"], plot=False)
    assert list(written.report.measurements) == ["img", "img_2"] and written.attention == {}
    assert written.report.measurements["img"] and (out / "widths.csv").is_file()
    with pytest.raises(ValueError, match="one --mask per INPUT"):
        measure_files([image], out, masks=[tmp_path / "a.png", tmp_path / "b.png"])
    with pytest.raises(ValueError, match="img.png.*give --mask M"):
        measure_files([image], out)


@pytest.mark.slow
def test_several_layers_back_propagate_from_the_first_one_only() -> None:
    """Fused layers: gradients start at the first target layer to run (memory), and the maps
    equal those computed with gradients from the input; a layer off that path falls back."""
    from fracturekit.explain.cams import _ClassScore, _run_cam, method_row

    model = model_for("efficientnet_lite0")
    x = torch.randn(2, 3, 64, 64)
    layers, _ = resolve_layers(model, "fine")
    targets = [_ClassScore(1, 2) for _ in range(2)]
    for method in ("hirescam", "gradcam", "layercam"):
        fast = compute_cams(model, x, method=method, layer="fine")
        full = _run_cam(
            method_row(method), model, layers, x.clone().requires_grad_(True), targets, cut=False
        )
        np.testing.assert_allclose(fast, full, atol=1e-5)
    assert _no_hooks(model) and not any(p.grad is not None for p in model.parameters())

    class TwoBranches(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.b = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.head = torch.nn.Sequential(torch.nn.Linear(8, 2))

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            both = torch.cat([self.a(t), self.b(t)], 1)  # b is not downstream of a
            return self.head(both.mean((2, 3)))

    net = TwoBranches().eval()
    cams = compute_cams(net, torch.randn(1, 3, 16, 16), layer=[net.a, net.b], target=1)
    assert cams.shape == (1, 16, 16) and np.isfinite(cams).all() and _no_hooks(net)


# --------------------------------------------------------------------------------------------
# one path per concern: the image walk, layer names, the positive class, drawing without CAMs


def test_explain_cli_skips_masks_and_hidden_folders(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _images(data / "crack", 1)
    _images(data / "masks", 1, size=(48, 40))[0].rename(data / "masks" / "mask_of_img0.png")
    _images(data / ".thumbs", 1)[0].rename(data / ".thumbs" / "thumb.png")
    out = tmp_path / "cams"
    assert main(["explain", str(ckpt), str(data), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "img0_cam.npy", "img0_cam.png", "img0_overlay.png",
    ]  # fmt: skip


def test_feature_grids_and_the_cam_layer_have_separate_names(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import inspect

    params = inspect.signature(explain_images).parameters
    assert "feature_grids" in params and "cam_layer" in params
    assert "layers" not in params and "layer" not in params
    predictor = Predictor.from_checkpoint(ckpt)
    paths = _images(tmp_path / "in", 1)
    (r,) = explain_images(
        predictor, paths, tmp_path / "out", feature_grids=["block1"], cam_layer="block2"
    )
    assert r.layer == "block2" and list(r.layer_grids) == ["block1"]
    # Both spellings of the CLI flag list the layer names.
    for flag in ("--feature-grids", "--layers"):
        assert main(["explain", str(ckpt), str(paths[0]), "--out", "x", flag, "help"]) == 0
        assert "block1" in capsys.readouterr().out


_FIGURE = re.compile(
    r"\b0\.\d{2,}\b"  # a measured score such as a pointing game of 0.94
    r"|\d+(?:\.\d+)? ?(?:%|ms|MiB|GiB|MB|GB)(?!\w)"  # shares, times, memory
    r"|\b\d+(?:\.\d+)?x (?:faster|slower)"
)


def test_docstrings_carry_no_benchmark_figures() -> None:
    """Measured figures go stale in docstrings: the README keeps them."""
    import ast

    import fracturekit.cli.explain as cli_explain
    import fracturekit.explain as package
    import fracturekit.render as render

    files = [*Path(package.__file__).parent.glob("*.py"), Path(render.__file__)]
    files.append(Path(cli_explain.__file__))
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            kinds = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            doc = ast.get_docstring(node) if isinstance(node, kinds) else None
            if doc and _FIGURE.search(doc):
                found.append(f"{path.name}: {_FIGURE.search(doc).group()}")
    assert not found, found


def test_scan_and_render_need_no_cam_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fracturekit.scan, fracturekit.render; "
        "bad = [m for m in sys.modules if m.startswith(('fracturekit.explain', 'pytorch_grad_cam'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_positive_index_of_binary_models(ckpt: Path) -> None:
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.positive_index == 0  # "crack", the first class
    predictor.meta["positive"] = None
    assert predictor.positive_index == 1  # the class a single-logit head scores


def test_multiclass_models_have_no_positive_class_anywhere(tmp_path: Path) -> None:
    """A 3-class checkpoint naming a "positive" class: heat maps, the gallery, crack masks
    (``width --model``, ``/explain``) and ``scan`` all treat it as multi-class."""
    from fracturekit.explain import crack_mask_from_image, image_cam
    from fracturekit.scan import scan_image

    torch.manual_seed(0)
    classes = ["a", "b", "c"]
    meta = {"img_size": SIZE, "classes": classes, "positive": "b"}
    path = save_checkpoint(tmp_path / "model.pt", _build("simple_cnn", 3), meta)
    predictor = Predictor.from_checkpoint(path)
    assert predictor.positive_index is None
    (image_path,) = _images(tmp_path / "in", 1)
    image = Image.open(image_path).convert("RGB")
    pred = predictor.predict_images([image])[0]

    # Heat maps explain the predicted class, not "b".
    predicted = classes.index(pred.label)
    by_prediction = compute_cams(
        predictor.model, predictor.preprocess(image)[None], method="hirescam", layer="fine",
        target=predicted,
    )[0]  # fmt: skip
    from fracturekit.render import resize_map

    np.testing.assert_allclose(image_cam(predictor, image), resize_map(by_prediction, image.size))
    # A crack mask is derived whatever the prediction (no positive class to wait for).
    wrong = type(pred)(**{**pred.to_dict(), "label": next(c for c in classes if c != "b")})
    assert crack_mask_from_image(predictor, image, prediction=wrong) is not None
    # The gallery groups by correct / mistake.
    written = write_cam_gallery(predictor, [image_path], [pred.label], tmp_path / "g")
    assert [p.name.split("_")[0] for p in written] == ["correct"]
    # scan maps one positive class: a multi-class model has none.
    with pytest.raises(ValueError, match="names no positive class"):
        scan_image(predictor, image_path, tile=SIZE, out=tmp_path / "scan")


def test_crack_mask_from_image_waits_for_the_positive_class(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one crack-mask path of ``width --model`` and ``/explain``: a binary model predicting
    its negative class has no crack to measure; without a prediction a mask is always derived."""
    from fracturekit.explain import crack_mask_from_image, measure_files

    predictor = Predictor.from_checkpoint(ckpt)
    image = Image.new("RGB", (SIZE, SIZE), 128)
    pred = predictor.predict_images([image])[0]
    as_label = {c: type(pred)(**{**pred.to_dict(), "label": c}) for c in predictor.classes}
    assert crack_mask_from_image(predictor, image, prediction=as_label["no_crack"]) is None
    assert crack_mask_from_image(predictor, image, prediction=as_label["crack"]) is not None
    assert crack_mask_from_image(predictor, image) is not None
    # `width --model` (measure_files) on an image without a mask goes through it.
    seen = []
    real = crack_mask_from_image
    monkeypatch.setattr(
        "fracturekit.explain.measure.crack_mask_from_image",
        lambda *a, **k: seen.append(a) or real(*a, **k),
    )
    written = measure_files(
        [_images(tmp_path, 1)[0]], tmp_path / "widths", predictor=predictor, plot=False
    )
    assert len(written.report.measurements) == 1 and len(seen) == 1
