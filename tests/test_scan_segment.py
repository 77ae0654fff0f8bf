"""Scanning with a segmenter: blending, the streamed mask, min_area, pieces, widths, the CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage

from fracturekit.cli import main
from fracturekit.io import open_rows
from fracturekit.masks import MaskPngWriter, drop_small_pieces, mask_png
from fracturekit.predict import Predictor
from fracturekit.scan import scan_image
from fracturekit.scan_segment import (
    SEGMENT_OUTPUT_FILES,
    BandBuffer,
    PackedMask,
    PieceFilter,
    PieceTracker,
    block_max,
    stitched_rows,
    window_weight,
)
from fracturekit.tiling import RowWindow, tile_positions

EIGHT = np.ones((3, 3), bool)


class PixelSegmenter:
    """A stand-in segmenter: a pixel's probability is its grey value / 255, plus
    ``offsets[k % len(offsets)]`` in the k-th window (raster order), so each window can disagree
    with its neighbours and the blend shows."""

    task = "segment"
    classes = ["background", "crack"]
    positive = "crack"
    positive_index = 1
    in_chans = 1

    def __init__(self, img_size=16, *, threshold=0.5, min_area=0, offsets=(0.0,)) -> None:
        self.img_size, self.threshold, self.min_area = img_size, threshold, min_area
        self.offsets = offsets
        self.windows = 0

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr)[None]

    def stack(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict_proba_maps(self, batch: torch.Tensor, sizes=None) -> list[np.ndarray]:
        assert sizes is None and batch.shape[-1] == self.img_size
        out = []
        for x in batch:
            out.append(x[0].numpy() + self.offsets[self.windows % len(self.offsets)])
            self.windows += 1
        return out


def _grey(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def _stitch(predictor, path: Path, *, tile: int, stride: int, batch_size: int = 5):
    source = open_rows(path, channels=1)
    band = BandBuffer(source.width, min(tile, source.height))
    rows = stitched_rows(
        predictor,
        RowWindow(source, lambda b: None),
        band,
        source.width,
        source.height,
        tile=tile,
        stride=stride,
        batch_size=batch_size,
    )
    return np.concatenate([r for _, r in rows]), band


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_window_weight_is_positive_tapered_and_symmetric() -> None:
    w = window_weight(16)
    assert w.shape == (16, 16) and w.dtype == np.float32
    assert w.min() > 0 and w.max() <= 1.0
    np.testing.assert_allclose(w, w[::-1]), np.testing.assert_allclose(w, w.T)
    assert w[8, 8] > 0.9 and w[0, 0] < 0.01


@pytest.mark.parametrize("shape", [(97, 150), (30, 11), (64, 64)])
def test_stitched_map_equals_the_pixels_everywhere(tmp_path: Path, shape) -> None:
    # Every window reports the pixel itself, so any stitch but a correct one (misplaced windows,
    # uncovered or doubly normalised pixels, seams) shows.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    arr = np.clip(120 + 60 * np.sin(xx / 9.0) * np.cos(yy / 7.0) + rng.normal(0, 8, shape), 0, 255)
    image = _grey(tmp_path / "g.png", arr)
    prob, band = _stitch(PixelSegmenter(16), image, tile=16, stride=6)
    assert prob.shape == shape
    np.testing.assert_allclose(prob, arr.astype(np.uint8) / 255.0, atol=1e-5)
    assert band.peak_rows <= 16


def test_blend_of_disagreeing_windows_is_the_weighted_mean(tmp_path: Path) -> None:
    h, w, tile, stride = 53, 70, 16, 8
    arr = np.full((h, w), 100, np.uint8)
    offsets = (0.0, 0.4, -0.2, 0.3, 0.1)
    prob, _ = _stitch(
        PixelSegmenter(tile, offsets=offsets),
        _grey(tmp_path / "f.png", arr),
        tile=tile,
        stride=stride,
    )
    weight = window_weight(tile)
    total, wsum, k = np.zeros((h, w)), np.zeros((h, w)), 0
    for y in tile_positions(h, tile, stride):
        for x in tile_positions(w, tile, stride):
            total[y : y + tile, x : x + tile] += weight * (100 / 255 + offsets[k % len(offsets)])
            wsum[y : y + tile, x : x + tile] += weight
            k += 1
    np.testing.assert_allclose(prob, total / wsum, atol=1e-5)
    # No seam: next to each other, pixels differ far less than the windows do (0.6 apart).
    assert np.abs(np.diff(prob, axis=0)).max() < 0.2
    assert np.abs(np.diff(prob, axis=1)).max() < 0.2


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_all_crack_checkpoint_gives_a_full_mask_of_the_image_size(
    tmp_path: Path, make_seg_checkpoint, kind: str
) -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (97, 150, 3), dtype=np.uint8)
    if kind == "png":
        image = tmp_path / "odd.png"
        Image.fromarray(arr).save(image)
    else:
        image = tmp_path / "odd.tif"
        tifffile.imwrite(image, arr, tile=(32, 32), photometric="rgb", compression="zlib")
    predictor = Predictor.from_checkpoint(make_seg_checkpoint(bias=3.0))
    out = tmp_path / "scan"
    result = scan_image(predictor, image, batch_size=3, out=out)
    assert result.task == "segment" and result.tile == 64 and result.stride == 32
    assert result.streamed == ("tiff" if kind == "tiff" else "decoded")
    mask = _mask(out / "mask.png")
    assert mask.shape == (97, 150) and mask.dtype == np.uint8 and (mask == 255).all()
    assert sorted(p.name for p in out.iterdir()) == sorted(SEGMENT_OUTPUT_FILES)
    summary = json.loads((out / "regions.json").read_text())
    assert summary["crack_fraction"] == 1.0 and summary["pieces"] == 1
    assert summary["regions"][0]["bbox"] == [0, 0, 150, 97]
    assert summary["regions"][0]["area_px"] == 150 * 97
    assert result.band_rows <= 64
    assert Image.open(out / "overlay.png").size == (150, 97)
    assert np.load(out / "probability.npy").shape == (97, 150)


def test_no_crack_checkpoint_gives_an_empty_mask(tmp_path: Path, make_seg_checkpoint) -> None:
    image = _grey(tmp_path / "a.png", np.full((40, 90), 128))
    predictor = Predictor.from_checkpoint(make_seg_checkpoint(bias=-3.0))
    # A window other than the model's input: resized to 64 px and the map back.
    result = scan_image(predictor, image, tile=48, stride=20, out=tmp_path / "o")
    mask = _mask(tmp_path / "o" / "mask.png")
    assert mask.shape == (40, 90) and not mask.any()
    assert result.pieces == 0 and result.regions == [] and result.widths["cracks"] == 0
    rows = (tmp_path / "o" / "widths.csv").read_text().splitlines()
    assert rows == ["piece,length_px,mean_width_px,median_width_px,max_width_px,p95_width_px,scale"]


def test_other_tile_size_is_resized_to_the_model(tmp_path: Path, make_seg_checkpoint) -> None:
    image = _grey(tmp_path / "a.png", np.full((70, 33), 50))
    predictor = Predictor.from_checkpoint(make_seg_checkpoint(bias=3.0))
    scan_image(predictor, image, tile=100, stride=30, out=tmp_path / "o")
    assert (_mask(tmp_path / "o" / "mask.png") == 255).all()


def test_reduced_map_and_overlay_share_the_thumbnail_grid(tmp_path: Path) -> None:
    # 2100 px wide: the thumbnail (at most 2048 px) halves it, and the maps follow.
    arr = np.zeros((21, 2100), np.uint8)
    arr[10, 3:2095] = 255  # a 1-px line: block maxima keep it
    result = scan_image(PixelSegmenter(16), _grey(tmp_path / "w.png", arr), out=tmp_path / "o")
    assert result.scale == 2 and result.probability.shape == result.mask.shape == (11, 1050)
    assert Image.open(tmp_path / "o" / "overlay.png").size == (1050, 11)
    assert result.mask[5, 2:1047].all() and result.probability[5].max() == 1.0
    assert _mask(tmp_path / "o" / "mask.png").shape == (21, 2100)
    assert json.loads((tmp_path / "o" / "regions.json").read_text())["map_scale"] == 2


def _blobs(shape, seed=0, level=0.62) -> np.ndarray:
    noise = np.random.default_rng(seed).random(shape)
    return ndimage.uniform_filter(noise, 3) > level


def test_piece_filter_is_drop_small_pieces_of_the_whole_mask() -> None:
    rng = np.random.default_rng(3)
    mask = _blobs((300, 80))
    mask[20:200, 40] = True  # a long thin piece through many bands
    expected = drop_small_pieces(mask, 9)
    flt = PieceFilter(80, 0.5, 9)
    out, y = [], 0
    while y < len(mask):
        n = int(rng.integers(1, 12))
        got, prob = flt.push(mask[y : y + n].astype(np.float32), y + n >= len(mask))
        assert len(got) == len(prob)
        out.append(got)
        y += n
    np.testing.assert_array_equal(np.concatenate(out), expected)
    assert flt.peak_rows <= 9 + 11


def test_piece_tracker_finds_the_pieces_of_the_whole_mask() -> None:
    rng = np.random.default_rng(4)
    mask = _blobs((200, 60), seed=2)
    mask[5:190, 30] = True
    mask[100, :] = True
    labels, n = ndimage.label(mask, structure=EIGHT)
    areas = np.bincount(labels.ravel())[1:]
    boxes = {
        (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop): int(areas[i])
        for i, sl in enumerate(ndimage.find_objects(labels))
    }
    tracker, y = PieceTracker(60, keep=5), 0
    while y < len(mask):
        k = int(rng.integers(1, 9))
        tracker.add(mask[y : y + k], mask[y : y + k].astype(np.float32) * 0.75)
        y += k
    pieces = tracker.finish()
    assert tracker.count == n and tracker.pixels == int(mask.sum())
    assert [p.area for p in pieces] == sorted(areas, reverse=True)[:5]
    for p in pieces:
        assert boxes[(p.y0, p.x0, p.y1, p.x1)] == p.area
        assert mask[p.seed] and p.max_probability == 0.75
        assert p.probability_sum == pytest.approx(0.75 * p.area)


def test_scan_applies_min_area_exactly_in_bounded_rows(tmp_path: Path) -> None:
    blobs = _blobs((400, 50), seed=5)
    image = _grey(tmp_path / "b.png", np.where(blobs, 220, 20))
    predictor = PixelSegmenter(16, min_area=12)
    result = scan_image(predictor, image, stride=4, out=tmp_path / "o")
    expected = drop_small_pieces(blobs, 12)
    np.testing.assert_array_equal(_mask(tmp_path / "o" / "mask.png") > 0, expected)
    assert result.min_area == 12 and result.crack_pixels == int(expected.sum())
    assert result.band_rows <= 16  # the weighted sums: one window's rows
    assert result.held_rows <= 12 + 16  # mask rows held back: under min_area plus a band


def test_regions_and_widths_of_drawn_cracks(tmp_path: Path, monkeypatch) -> None:
    arr = np.zeros((120, 200), np.uint8)
    arr[30:33, 10:190] = 255  # 3 px wide, 180 px long
    arr[50:115, 100:105] = 255  # 5 px wide, 65 px long
    arr[5:7, 5:7] = 255  # a dot too small to measure
    image = _grey(tmp_path / "c.png", arr)
    out = tmp_path / "o"
    result = scan_image(PixelSegmenter(32), image, out=out, px_per_mm=2.0)
    assert result.pieces == 3 and [r["area_px"] for r in result.regions] == [540, 325, 4]
    first = result.regions[0]
    assert first["bbox"] == [10, 30, 190, 33] and first["scale"] == 1
    xs, ys = zip(*first["polygon"], strict=True)
    assert min(xs) == pytest.approx(10, abs=1) and max(xs) == pytest.approx(190, abs=1)
    assert min(ys) == pytest.approx(30, abs=1) and max(ys) == pytest.approx(33, abs=1)
    with open(out / "widths.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["piece"] for r in rows] == ["1", "2"]
    assert float(rows[0]["mean_width_px"]) == pytest.approx(3, abs=0.3)
    assert float(rows[1]["mean_width_px"]) == pytest.approx(5, abs=0.3)
    assert float(rows[0]["length_px"]) == pytest.approx(180, rel=0.03)
    assert float(rows[0]["mean_width_mm"]) == pytest.approx(1.5, abs=0.15)
    summary = json.loads((out / "regions.json").read_text())
    assert summary["widths"]["cracks"] == 2 and summary["px_per_mm"] == 2.0

    # A piece whose box is over the crop budget is read reduced; area and box stay exact.
    monkeypatch.setattr("fracturekit.scan_segment.MAX_CROP_PX", 200)
    result = scan_image(PixelSegmenter(32), image, out=tmp_path / "r")
    big = result.regions[0]
    assert big["scale"] > 1 and big["area_px"] == 540 and big["bbox"] == [10, 30, 190, 33]
    with open(tmp_path / "r" / "widths.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert int(row["scale"]) == big["scale"]
    assert float(row["length_px"]) == pytest.approx(180, rel=0.15)

    # So is a piece with more pixels than the area budget, whatever its box.
    monkeypatch.setattr("fracturekit.scan_segment.MAX_CROP_PX", 1 << 22)
    monkeypatch.setattr("fracturekit.scan_segment.MAX_CROP_AREA", 400)
    result = scan_image(PixelSegmenter(32), image, out=tmp_path / "a")
    assert result.regions[0]["scale"] == 2 and result.regions[0]["area_px"] == 540
    assert result.regions[1]["scale"] == 1  # 5 x 65 = 325 px: within the budget


def test_packed_mask_crops_and_reduces() -> None:
    mask = _blobs((37, 29), seed=7)
    packed = PackedMask(io.BytesIO(), 29)
    packed.write(mask[:20])
    packed.write(mask[20:])
    np.testing.assert_array_equal(packed.crop(3, 30, 5, 27), mask[3:30, 5:27])
    np.testing.assert_array_equal(packed.crop(3, 30, 5, 27, 4), block_max(mask[3:30, 5:27], 4))


def test_mask_png_writer_matches_mask_png() -> None:
    mask = _blobs((45, 31), seed=8)
    buf = io.BytesIO()
    png = MaskPngWriter(buf, 31, 45)
    for y in range(0, 45, 7):
        png.write(mask[y : y + 7])
    png.close()
    assert np.array_equal(
        np.asarray(Image.open(buf)), np.asarray(Image.open(io.BytesIO(mask_png(mask))))
    )
    with pytest.raises(ValueError, match="44 of 45 rows"):
        short = MaskPngWriter(io.BytesIO(), 31, 45)
        short.write(mask[:44])
        short.close()
    with pytest.raises(ValueError, match="width 31"):
        MaskPngWriter(io.BytesIO(), 31, 45).write(mask[:, :30])


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    image = _grey(tmp_path / "a.png", np.zeros((20, 20)))
    seg = PixelSegmenter(16)
    with pytest.raises(ValueError, match="tile=4"):
        scan_image(seg, image, tile=4, out=tmp_path / "o")
    with pytest.raises(ValueError, match="stride=40"):
        scan_image(seg, image, stride=40, out=tmp_path / "o")
    with pytest.raises(ValueError, match="batch_size=0"):
        scan_image(seg, image, batch_size=0, out=tmp_path / "o")
    with pytest.raises(ValueError, match="px_per_mm=0"):
        scan_image(seg, image, px_per_mm=0.0, out=tmp_path / "o")
    classifier = PixelSegmenter(16)
    classifier.task = "classify"
    with pytest.raises(ValueError, match="classifier scan measures no widths"):
        scan_image(classifier, image, px_per_mm=2.0, out=tmp_path / "o")
    scan_image(seg, image, out=tmp_path / "o")
    with pytest.raises(FileExistsError, match="mask.png"):
        scan_image(seg, image, out=tmp_path / "o")
    assert not list((tmp_path / "o").glob(".*"))  # no temporary file left behind


def test_scan_cli_with_a_segmentation_checkpoint(
    tmp_path: Path, make_seg_checkpoint, capsys
) -> None:
    image = _grey(tmp_path / "wall.png", np.full((50, 70), 90))
    ckpt = make_seg_checkpoint(bias=3.0)
    out = tmp_path / "scan"
    assert main(["scan", str(ckpt), str(image), "--out", str(out), "--px-per-mm", "4"]) == 0
    printed = capsys.readouterr().out
    assert "3500 crack px (100.000%)" in printed and "1 piece(s)" in printed
    assert (_mask(out / "mask.png") == 255).all()
    header = (out / "widths.csv").read_text().splitlines()[0]
    assert header.endswith("p95_width_mm,severity,scale")
    assert main(["scan", str(ckpt), str(image), "--out", str(out), "--px-per-mm", "-1"]) == 2
    assert "px_per_mm=-1" in capsys.readouterr().err
    assert main(["scan", str(ckpt), str(tmp_path / "nope.png"), "--out", str(out / "x")]) == 2
