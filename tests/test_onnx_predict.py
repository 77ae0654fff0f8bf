"""`fracturekit predict model.onnx`: the ONNX path never imports torch, and preprocesses as the
PyTorch path does (Pillow's resize: within one grey level of torchvision's)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixture_images import noise_image
from fracturekit.export import export_onnx
from fracturekit.models import VIEW_OPS, build_model, save_checkpoint
from fracturekit.predict import NUMPY_VIEWS, Predictor

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("onnxp")
    model = build_model("simple_cnn", 2, pretrained=False)
    meta = {"classes": ["crack", "no_crack"], "img_size": 32, "positive": "crack"}
    ckpt = save_checkpoint(root / "model.pt", model, {**meta, "threshold": 0.5})
    export_onnx(ckpt, root / "model.onnx")
    return ckpt, root / "model.onnx"


@pytest.mark.parametrize("backend", ["auto", "onnx", "openvino"])
def test_onnx_predict_never_imports_torch(onnx_pair, tmp_path: Path, backend: str) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    _, onnx_path = onnx_pair
    for i in range(3):
        noise_image(i, (50 + i, 40)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"no image")
    out = tmp_path / "r.csv"
    code = (
        "import sys\n"
        "from fracturekit.cli import main\n"
        f"rc = main(['predict', {str(onnx_path)!r}, {str(tmp_path)!r}, '--out', {str(out)!r}, "
        f"'--backend', {backend!r}])\n"
        "assert rc == 1, rc  # one unreadable file\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and sum(bool(r["error"]) for r in rows) == 1


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("size, mode", [((50, 37), "RGB"), ((32, 32), "L"), ((20, 90), "RGBA")])
def test_numpy_preprocessing_matches_torchvision(onnx_pair, interpolation, size, mode) -> None:
    ckpt, onnx_path = onnx_pair
    torch_p, onnx_p = Predictor.from_checkpoint(ckpt), Predictor.from_checkpoint(onnx_path)
    for p in (torch_p, onnx_p):
        p.meta["interpolation"] = interpolation
        p.meta["mean"], p.meta["std"] = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image = noise_image(3, size).convert(mode)
    a = torch_p.preprocess(image).numpy()
    b = onnx_p.preprocess(image)
    assert isinstance(b, np.ndarray) and b.dtype == np.float32 and b.shape == a.shape
    # One grey level, in normalised units, at most; exact without resizing or for nearest.
    # Bicubic enlarging (the 20-px side) differs more: torch's kernel has a = -0.75, Pillow's
    # -0.5; on average still within a grey level.
    level = 1 / 255 / 0.224 + 1e-5
    diff = np.abs(a - b)
    if size == (32, 32) or interpolation == "nearest":
        assert diff.max() <= 1e-6
    elif interpolation == "bilinear":
        assert diff.max() <= level and (diff > 1e-6).mean() < 0.25  # noise: the worst case
    else:
        assert diff.mean() <= level


def test_numpy_views_are_the_torch_views() -> None:
    x = torch.randn(2, 3, 5, 5)
    for t_op, n_op in zip(VIEW_OPS, NUMPY_VIEWS, strict=True):
        assert np.array_equal(t_op(x).numpy(), n_op(x.numpy()))


def test_onnx_rows_agree_with_torch_rows(onnx_pair, tmp_path: Path) -> None:
    ckpt, onnx_path = onnx_pair
    paths = []
    for i in range(6):
        noise_image(i, (64 + 7 * i, 48)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    a = list(Predictor.from_checkpoint(ckpt).predict_paths(paths, 4))
    b = list(Predictor.from_checkpoint(onnx_path).predict_paths(paths, 4))
    for x, y in zip(a, b, strict=True):
        assert abs(x.probabilities["crack"] - y.probabilities["crack"]) <= 5e-3
    image = Image.new("RGB", (32, 32), "gray")  # no resize: the same input, the same answer
    pa = Predictor.from_checkpoint(ckpt).predict_images([image])[0]
    pb = Predictor.from_checkpoint(onnx_path).predict_images([image])[0]
    assert abs(pa.probabilities["crack"] - pb.probabilities["crack"]) <= 1e-5


# --------------------------------------------------------------------------------------------
# OpenVINO runs the same exported file


def test_openvino_backend_matches_onnx_runtime(onnx_pair, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    ckpt, onnx_path = onnx_pair
    images = [noise_image(i, (40 + i, 36)) for i in range(5)]
    ort_p = Predictor.from_checkpoint(onnx_path)
    ov_p = Predictor.from_checkpoint(ckpt, "openvino")  # the .onnx beside model.pt
    assert ov_p.backend == "openvino" and ov_p.meta == ort_p.meta
    a = ort_p.predict_proba(ort_p.stack([ort_p.preprocess(im) for im in images]))
    b = ov_p.predict_proba(ov_p.stack([ov_p.preprocess(im) for im in images]))
    np.testing.assert_allclose(a, b, atol=1e-5)  # float32 on both (no bfloat16)
    # A later call must not change an earlier answer (OpenVINO reuses its output buffer).
    first = ov_p.predict_proba(ov_p.stack([ov_p.preprocess(images[0])]))
    ov_p.predict_proba(ov_p.stack([ov_p.preprocess(images[1])]))
    np.testing.assert_allclose(first, b[:1], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        Predictor.from_checkpoint(tmp_path / "model.pt", "openvino")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="junk.onnx"):
        Predictor.from_checkpoint(tmp_path / "junk.onnx", "openvino")


def test_openvino_segmenter_matches_onnx_runtime(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from fracturekit.models import build_segmenter

    model = build_segmenter("efficientnet_lite0", decoder="unet_small", pretrained=False)
    meta = {"classes": ["crack", "no_crack"], "img_size": 64, "positive": "crack"}
    ckpt = save_checkpoint(tmp_path / "seg.pt", model, {**meta, "threshold": 0.5, "min_area": 0})
    export_onnx(ckpt, tmp_path / "seg.onnx")
    images = [noise_image(i, (64, 64)) for i in range(2)]
    ort_maps = Predictor.from_checkpoint(tmp_path / "seg.onnx").probability_maps(images)
    ov_maps = Predictor.from_checkpoint(ckpt, "openvino").probability_maps(images)
    for a, b in zip(ort_maps, ov_maps, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
