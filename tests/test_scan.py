"""Tiled scanning: streamed readers, the tile grid, stitching, regions, outputs and the CLI."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from fracturekit.cli import main
from fracturekit.io import ImageReadError, read_image
from fracturekit.models import PretrainedUnavailableWarning, build_model, save_checkpoint
from fracturekit.predict import Predictor
from fracturekit.scan import find_regions, open_rows, scan_image, tile_positions


class BrightnessPredictor:
    """A stand-in classifier: the "crack probability" of a tile is its mean brightness.

    It has the attributes ``scan_image`` uses, so stitching can be checked against a known
    answer.
    """

    task = "classify"
    classes = ["crack", "no_crack"]
    positive = "crack"
    positive_index = 0
    threshold = 0.5
    img_size = 16
    in_chans = 3

    def __init__(self) -> None:
        self.batches: list[int] = []

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        return torch.tensor([arr.mean()])

    def stack(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        self.batches.append(len(batch))
        p = batch[:, 0].numpy()
        return np.stack([p, 1 - p], axis=1)


def _square_image(path: Path, size=(300, 200), box=(100, 40, 180, 120)) -> Path:
    arr = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr).convert("RGB").save(path)
    return path


def test_tile_positions_cover_the_axis() -> None:
    assert tile_positions(100, 40, 20) == [0, 20, 40, 60]
    assert tile_positions(105, 40, 20) == [0, 20, 40, 60, 65]  # one flush with the far edge
    assert tile_positions(30, 40, 20) == [0]
    for length, tile, stride in ((1000, 224, 112), (999, 64, 48), (77, 10, 10)):
        starts = tile_positions(length, tile, stride)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False))


def test_stitched_map_and_region_of_a_bright_square(tmp_path: Path) -> None:
    predictor = BrightnessPredictor()
    image = _square_image(tmp_path / "wall.png")
    out = tmp_path / "scan"
    result = scan_image(predictor, image, tile=40, stride=20, batch_size=7, out=out)
    assert result.probability.shape == (10, 15)  # ceil(200 / 20) x ceil(300 / 20)
    assert result.n_tiles == len(tile_positions(300, 40, 20)) * len(tile_positions(200, 40, 20))
    assert max(predictor.batches) == 7 and sum(predictor.batches) == result.n_tiles
    # Cell (3, 6) = pixels y 60-80, x 120-140 lies inside the square: every tile covering its
    # centre is all white.
    assert result.probability[3, 6] == pytest.approx(1.0)
    assert result.probability[0, 0] == pytest.approx(0.0)
    assert len(result.regions) == 1
    region = result.regions[0]
    x0, y0, x1, y1 = region["bbox"]
    assert 80 <= x0 <= 100 and 180 <= x1 <= 200 and 20 <= y0 <= 40 and 120 <= y1 <= 140
    xs = [p[0] for p in region["polygon"]]
    assert min(xs) >= 0 and max(xs) <= 300 and region["max_probability"] == pytest.approx(1.0)

    summary = json.loads((out / "regions.json").read_text())
    assert summary["map_shape"] == [10, 15] and summary["threshold"] == 0.5
    assert summary["regions"][0]["area_px"] == region["area_px"] > 0
    saved = np.load(out / "probability.npy")
    np.testing.assert_allclose(saved, result.probability)
    assert Image.open(out / "probability.png").size == (15, 10)
    assert Image.open(out / "overlay.png").size == (300, 200)
    rows = (out / "tiles.csv").read_text().splitlines()
    assert rows[0] == "x,y,width,height,probability" and len(rows) == result.n_tiles + 1
    with pytest.raises(FileExistsError, match="overlay.png"):
        scan_image(predictor, image, tile=40, stride=20, out=out)


def test_image_smaller_than_a_tile_is_one_padded_tile(tmp_path: Path) -> None:
    image = _square_image(tmp_path / "small.png", size=(30, 20), box=(0, 0, 30, 20))
    result = scan_image(BrightnessPredictor(), image, tile=64, out=tmp_path / "s")
    assert result.n_tiles == 1 and result.probability.shape == (1, 1)
    assert result.probability[0, 0] == pytest.approx(1.0)  # mirrored padding, not black


def test_find_regions_polygon_and_area() -> None:
    prob = np.zeros((6, 8), np.float32)
    prob[1:3, 2:5] = 0.9
    prob[5, 7] = 0.6  # a second region in the clipped corner cell
    regions = find_regions(prob, 0.5, cell=10, width=75, height=58)
    assert [r["id"] for r in regions] == [1, 2]
    big, corner = regions
    assert big["area_px"] == 600 and big["cells"] == 6 and big["bbox"] == [20, 10, 50, 30]
    # The outline crosses the threshold between the last cell centre inside (0.9) and the
    # first outside (0): 0.5 / 0.9 of a cell from the outside centre, i.e. ~0.6 px within the
    # cells' edge.
    xs, ys = zip(*big["polygon"], strict=True)
    assert min(xs) == pytest.approx(20.6, abs=0.1) and max(xs) == pytest.approx(49.4, abs=0.1)
    assert min(ys) == pytest.approx(10.6, abs=0.1) and max(ys) == pytest.approx(29.4, abs=0.1)
    assert corner["area_px"] == 5 * 8  # the last cells are cut by the image border
    assert corner["max_probability"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    "kind", ["tiff-tiled", "tiff-strips", "tiff-raw", "tiff16", "rgba-tiff", "bmp24", "bmp8",
             "pgm16", "ppm", "png"],
)  # fmt: skip
def test_streamed_readers_match_read_image(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    rgb = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
    gray16 = (rng.random((70, 90)) * 4000 + 500).astype(np.uint16)
    path = tmp_path / {"bmp24": "a.bmp", "bmp8": "a.bmp", "pgm16": "a.pgm", "ppm": "a.ppm",
                       "png": "a.png"}.get(kind, "a.tif")  # fmt: skip
    if kind == "tiff-tiled":
        tifffile.imwrite(path, rgb, tile=(32, 32), compression="zlib")
    elif kind == "tiff-strips":
        tifffile.imwrite(path, rgb, rowsperstrip=9, compression="zlib")
    elif kind == "tiff-raw":
        tifffile.imwrite(path, rgb)
    elif kind == "tiff16":
        tifffile.imwrite(path, gray16, tile=(16, 16))
    elif kind == "rgba-tiff":
        Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(path)
    elif kind == "bmp8":
        Image.fromarray(rgb[..., 0]).save(path)
    elif kind == "pgm16":
        Image.fromarray(gray16).save(path)
    else:
        Image.fromarray(rgb).save(path)
    source = open_rows(path)
    assert source.streamed == ("decoded" if kind == "png" else source.streamed)
    if kind != "png":
        assert source.streamed in ("tiff", "memmap")
    bands = list(source.bands())
    got = np.concatenate(bands)
    want = np.asarray(read_image(path, channels=source.channels))
    if want.ndim == 2:
        want = want[..., None]
    assert got.shape == want.shape and (got == want).all()


def test_reader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="missing.tif: no such file"):
        open_rows(tmp_path / "missing.tif")
    path = tmp_path / "cut.bmp"
    Image.new("RGB", (50, 40)).save(path)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(ImageReadError, match="cut.bmp: BMP file is shorter"):
        open_rows(path)
    big = tmp_path / "big.pgm"
    big.write_bytes(b"P5\n5000 5000\n255\n")
    with pytest.raises(ImageReadError, match="over the scan limit"):
        open_rows(big, max_pixels=1_000_000)


def test_scan_streams_a_tiled_tiff_band_by_band(tmp_path: Path) -> None:
    path = tmp_path / "log.tif"
    arr = np.zeros((400, 120), np.uint8)
    arr[280:360, 20:100] = 255
    tifffile.imwrite(path, arr, tile=(32, 32), compression="zlib")
    result = scan_image(BrightnessPredictor(), path, tile=40, stride=20, out=tmp_path / "o")
    assert result.streamed == "tiff" and result.probability.shape == (20, 6)
    assert result.probability[15:17, 2:4].min() == pytest.approx(1.0)
    assert len(result.regions) == 1


def test_multiclass_checkpoint_needs_a_positive_class(tmp_path: Path) -> None:
    predictor = BrightnessPredictor()
    predictor.classes = ["a", "b", "c"]
    predictor.positive, predictor.positive_index = None, None
    with pytest.raises(ValueError, match="names no positive class"):
        scan_image(predictor, _square_image(tmp_path / "x.png"), out=tmp_path / "o")
    with pytest.raises(ValueError, match="stride"):
        scan_image(BrightnessPredictor(), tmp_path / "x.png", tile=16, stride=32, out=tmp_path)


def test_scan_cli_with_a_tiny_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedUnavailableWarning)
        model = build_model("simple_cnn", 1, pretrained=False)
    ckpt = save_checkpoint(
        tmp_path / "model.pt",
        model,
        {"img_size": 32, "classes": ["intact", "cracked"], "positive": "cracked"},
    )
    image = _square_image(tmp_path / "wall.png", size=(150, 100), box=(50, 30, 90, 70))
    out = tmp_path / "scan"
    assert main(["scan", str(ckpt), str(image), "--out", str(out), "--stride", "8"]) == 0
    prob = np.load(out / "probability.npy")
    assert prob.shape == (math.ceil(100 / 8), math.ceil(150 / 8))
    assert np.isfinite(prob).all() and 0 <= prob.min() <= prob.max() <= 1
    summary = json.loads((out / "regions.json").read_text())
    assert summary["tile"] == 32 and summary["stride"] == 8 and summary["positive"] == "cracked"
    assert isinstance(summary["regions"], list)
    predictor = Predictor.from_checkpoint(ckpt)
    assert summary["threshold"] == pytest.approx(predictor.threshold)
    assert main(["scan", str(ckpt), str(tmp_path / "nope.png"), "--out", str(out / "x")]) == 2


def test_a_stream_that_ends_early_is_a_truncated_read() -> None:
    from types import SimpleNamespace

    from fracturekit.io import ImageReadError
    from fracturekit.tiling import RowWindow

    source = SimpleNamespace(
        bands=lambda: iter([np.zeros((4, 6, 3), np.uint8)]),
        width=6,
        channels=3,
        height=10,
        path="short.tif",
    )
    window = RowWindow(source, lambda band: None)
    assert window.rows(0, 4).shape == (4, 6, 3)
    with pytest.raises(ImageReadError, match="ended after 4 of 10 rows") as err:
        window.rows(0, 8)
    assert err.value.kind == "truncated"
