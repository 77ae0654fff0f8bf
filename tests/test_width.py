"""Crack width and length from masks: the width convention, accuracy on known cracks, outputs, CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from fracturekit.cli import main
from fracturekit.synthetic import CentreLine, TrueCrack, match_truth, render_mask, render_sample
from fracturekit.width import (
    METHODS,
    MM_COLUMNS,
    WIDTH_COLUMNS,
    as_binary_mask,
    measure_images,
    measure_mask,
    severity,
)


def _band(angle: float, width: float, length: float = 60.0, size: int = 96, centre=(48.3, 47.8)):
    s = np.arange(-length / 2, length / 2 + 1e-9, 1.0)
    xy = np.stack([centre[0] + s * np.cos(angle), centre[1] + s * np.sin(angle)], axis=1)
    crack = TrueCrack(1, [CentreLine(xy, np.full(len(s), float(width)))])
    return crack, render_mask([crack], size)


def _errors(crack, mask, size, method):
    """Width errors at well-defined skeleton points, and the relative length error."""
    [m] = measure_mask(mask, method=method)
    truth = match_truth([crack], m.skeleton_rc[:, ::-1].astype(float), size)
    keep = truth.well_defined & np.isfinite(m.widths_px)
    assert keep.sum() > 10
    return m.widths_px[keep] - truth.width[keep], m.length_px / crack.length_px - 1


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("vertical", [False, True])
def test_one_px_line_is_one_px_wide(method, vertical):
    mask = np.zeros((40, 40), bool)
    if vertical:
        mask[5:35, 20] = True
    else:
        mask[20, 5:35] = True
    [m] = measure_mask(mask, method=method)
    # Exactly 1 px along the line; the two end pixels sit on the tips' round caps.
    assert np.allclose(m.widths_px[1:-1], 1.0, atol=0.02)
    assert np.allclose(m.widths_px, 1.0, atol=0.2)
    assert m.length_px == pytest.approx(29.0, abs=1.0)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("width", [1.5, 2.5, 4.0, 7.0, 12.0, 18.0])
def test_straight_cracks_of_known_width(method, width):
    abs_err, len_err = [], []
    for angle in (0.0, 0.4, np.pi / 4, 1.9, 2.8):
        crack, mask = _band(angle, width)
        err, lerr = _errors(crack, mask, 96, method)
        abs_err.append(np.abs(err).mean())
        len_err.append(abs(lerr))
    assert np.mean(abs_err) <= (1.0 if width < 3 else 0.5)
    assert max(len_err) <= 0.05


@pytest.mark.parametrize("method", list(METHODS))
def test_curved_crack_of_varying_width(method):
    t = np.arange(0.0, 110.0, 1.0)
    radius = 40.0
    xy = np.stack([50 + radius * np.cos(t / radius), 50 + radius * np.sin(t / radius)], axis=1)
    w = 3.0 + 5.0 * np.sin(np.pi * t / t[-1]) ** 2  # 3 px at the ends, 8 px in the middle
    crack = TrueCrack(1, [CentreLine(xy, w)])
    mask = render_mask([crack], 100)
    err, lerr = _errors(crack, mask, 100, method)
    assert np.abs(err).mean() <= 0.5
    assert abs(lerr) <= 0.05


def test_rendered_samples_match_their_recorded_widths():
    """The issue's check: measured widths of render_sample masks vs the recorded truth."""
    for method in METHODS:
        errors, truths, len_err = [], [], []
        for i in range(6):
            s = render_sample(np.random.default_rng([21, i]), 128, "mixed", True)
            cracks = measure_mask(s.mask, method=method)
            for m in cracks:
                truth = match_truth(s.cracks, m.skeleton_rc[:, ::-1].astype(float), 128)
                keep = truth.well_defined & np.isfinite(m.widths_px)
                errors.append(m.widths_px[keep] - truth.width[keep])
                truths.append(truth.width[keep])
            measured = sum(m.length_px for m in cracks)
            len_err.append(measured / sum(c.length_px for c in s.cracks) - 1)
        err, tru = np.concatenate(errors), np.concatenate(truths)
        assert len(err) > 200
        assert np.abs(err[tru >= 3]).mean() <= 0.5, method
        assert np.abs(err[tru < 3]).mean() <= 1.0, method
        assert np.mean(np.abs(len_err)) <= 0.05, method


def test_spurs_are_pruned():
    mask = np.zeros((40, 80), bool)
    mask[17:24, 5:75] = True  # 7 px wide band
    mask[14:17, 40:42] = True  # a 3 px bump on its edge
    [m] = measure_mask(mask)
    assert len(m.chains) == 1
    # A blunt 70 x 7 px band: its centre line runs between the centres of its end caps.
    assert m.length_px == pytest.approx(63.0, abs=2.0)


def test_components_are_separate_cracks_and_small_ones_ignored():
    mask = np.zeros((60, 60), bool)
    mask[10:13, 5:55] = True
    mask[40:44, 5:55] = True
    mask[50, 50] = True  # one-pixel speck
    cracks = measure_mask(mask, min_area=10)
    assert [c.crack for c in cracks] == [1, 2]
    assert cracks[0].median_width_px == pytest.approx(3.0, abs=0.3)
    assert cracks[1].median_width_px == pytest.approx(4.0, abs=0.3)
    assert measure_mask(np.zeros((20, 20), bool)) == []


def test_scale_gives_mm_and_severity():
    mask = np.zeros((40, 80), bool)
    mask[15:25, 5:75] = True  # 10 px wide
    [m] = measure_mask(mask, px_per_mm=4.0)
    assert m.mean_width_mm == pytest.approx(m.mean_width_px / 4.0)
    assert m.length_mm == pytest.approx(m.length_px / 4.0)
    assert m.severity == "moderate"  # 2.5 mm
    [plain] = measure_mask(mask)
    assert plain.severity is None and plain.mean_width_mm is None


@pytest.mark.parametrize(
    ("mm", "cls"),
    [
        (0.2, "narrow"),
        (1.59, "narrow"),
        (1.6, "moderate"),
        (3.2, "moderate"),
        (3.21, "wide"),
        (10.0, "wide"),
    ],
)
def test_severity_classes(mm, cls):
    assert severity(mm) == cls


def test_non_binary_masks_are_refused():
    with pytest.raises(ValueError, match="m.png: mask is not binary"):
        as_binary_mask(np.array([[0, 128], [255, 0]], np.uint8), "m.png")
    with pytest.raises(ValueError, match="2-D"):
        as_binary_mask(np.zeros((2, 2, 2)), "m")
    assert as_binary_mask(np.array([[0, 255]], np.uint8)).tolist() == [[False, True]]
    assert as_binary_mask(np.array([[0, 1]])).tolist() == [[False, True]]
    with pytest.raises(ValueError, match="unknown width method"):
        measure_mask(np.zeros((5, 5), bool), method="ruler")
    with pytest.raises(ValueError, match="px_per_mm"):
        measure_mask(np.zeros((5, 5), bool), px_per_mm=0)


def test_measure_images_writes_csv_profiles_and_plot(tmp_path):
    s = render_sample(np.random.default_rng(2), 64, "concrete", True)
    report = measure_images([("a", s.mask, s.image)], tmp_path, px_per_mm=2.0)
    with open(report.widths_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [*WIDTH_COLUMNS, *MM_COLUMNS]
    assert len(rows) == len(report.measurements["a"]) >= 1
    assert rows[0]["severity"] in ("narrow", "moderate", "wide")
    with open(tmp_path / "profile_a.csv", newline="") as fh:
        prof = list(csv.DictReader(fh))
    assert list(prof[0])[:6] == ["crack", "index", "x", "y", "width_px", "width_mm"]
    assert len(prof) == sum(len(m.widths_px) for m in report.measurements["a"])
    assert Image.open(tmp_path / "profile_a.png").format == "PNG"
    with pytest.raises(ValueError, match="mask is 64x64 px but the image is 32x32"):
        measure_images([("b", s.mask, s.image[:32, :32])], tmp_path / "x")


# --------------------------------------------------------------------------------------------
# CLI


@pytest.fixture()
def files(tmp_path):
    s = render_sample(np.random.default_rng(8), 64, "asphalt", True)
    Image.fromarray(s.image).save(tmp_path / "img.png")
    Image.fromarray(s.mask.astype(np.uint8) * 255).save(tmp_path / "img_mask.png")
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(s.mask.astype(np.uint8) * 255).save(masks / "img.png")
    return tmp_path


def test_cli_mask_input(files, capsys):
    out = files / "out"
    assert main(["width", str(files / "img_mask.png"), "--out", str(out), "--no-plot"]) == 0
    assert (out / "widths.csv").exists() and (out / "profile_img_mask.csv").exists()
    assert not (out / "profile_img_mask.png").exists()
    assert "img_mask:" in capsys.readouterr().out


def test_cli_image_with_mask(files):
    out = files / "out"
    args = ["width", str(files / "img.png"), "--mask", str(files / "masks"), "--out", str(out)]
    assert main([*args, "--method", "orthogonal", "--px-per-mm", "3"]) == 0
    header = (out / "widths.csv").read_text().splitlines()[0]
    assert header.endswith("severity")
    assert (out / "profile_img.png").exists()


def test_cli_errors_name_the_problem(files, capsys):
    out = str(files / "out")
    assert main(["width", str(files / "img.png"), "--out", out]) == 2
    assert "give --mask" in capsys.readouterr().err
    assert main(["width", str(files / "img.png"), "--model", "m.pt", "--out", out]) == 2
    assert "m.pt" in capsys.readouterr().err
    assert main(["width", str(files / "nope.png"), "--out", out]) == 2
    assert "nope.png: no such file" in capsys.readouterr().err
    Image.new("L", (10, 10)).save(files / "small.png")
    args = ["width", str(files / "img.png"), "--mask", str(files / "small.png"), "--out", out]
    assert main(args) == 2
    assert "small.png: mask is 10x10 px but" in capsys.readouterr().err
    (files / "junk.png").write_bytes(b"not a png")
    assert main(["width", str(files / "junk.png"), "--out", out]) == 2
    assert "junk.png: cannot read the mask" in capsys.readouterr().err
    args = ["width", str(files / "img.png"), "--mask", "a.png", "--mask", "b.png", "--out", out]
    assert main(args) == 2
    assert "one --mask per INPUT" in capsys.readouterr().err
