"""The mask summaries every command shares: fraction, polygons, widths, the PNG format."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fracturekit.masks import (
    crack_fraction,
    drop_small_pieces,
    mask_png,
    mask_polygons,
    segment_image_score,
    width_summary,
)


def _two_pieces() -> np.ndarray:
    mask = np.zeros((40, 60), bool)
    mask[10:14, 5:45] = True  # a 4-px wide, 40-px long bar: 160 px
    mask[30:33, 50:53] = True  # a 3x3 speck: 9 px
    return mask


def test_crack_fraction() -> None:
    assert crack_fraction(_two_pieces()) == pytest.approx(169 / 2400)
    assert crack_fraction(np.zeros((0, 0), bool)) == 0.0


def test_polygons_outline_pieces_largest_first_in_image_pixels() -> None:
    polys = mask_polygons(_two_pieces(), tolerance=0.5)
    assert [p["area_px"] for p in polys] == [160, 9] and [p["id"] for p in polys] == [1, 2]
    assert polys[0]["bbox"] == [5, 10, 45, 14]
    xs = [x for x, _ in polys[0]["polygon"]]
    ys = [y for _, y in polys[0]["polygon"]]
    # The outline runs along the pixel edges, within half a pixel of the bounding box.
    assert min(xs) == pytest.approx(5, abs=0.5) and max(xs) == pytest.approx(45, abs=0.5)
    assert min(ys) == pytest.approx(10, abs=0.5) and max(ys) == pytest.approx(14, abs=0.5)
    # Offsets and scales place a reduced tile's mask in the whole image.
    moved = mask_polygons(_two_pieces(), offset=(100, 200), scale=2.0, min_area=10)
    assert len(moved) == 1 and moved[0]["bbox"] == [110, 220, 190, 228]
    assert moved[0]["area_px"] == 640
    assert mask_polygons(_two_pieces(), limit=1)[0]["area_px"] == 160


def test_width_summary_reads_the_bar() -> None:
    summary = width_summary(_two_pieces(), px_per_mm=2.0)
    assert summary["cracks"] == 1  # the speck is under min_area
    assert summary["mean_width_px"] == pytest.approx(4.0, abs=0.5)
    assert 34 <= summary["length_px"] <= 41
    assert summary["mean_width_mm"] == pytest.approx(summary["mean_width_px"] / 2, abs=1e-3)
    assert len(summary["rows"]) == 1 and "image" not in summary["rows"][0]
    empty = width_summary(np.zeros((8, 8), bool))
    assert empty["cracks"] == 0 and empty["mean_width_px"] is None


def test_mask_png_is_0_255_at_the_mask_size() -> None:
    image = Image.open(io.BytesIO(mask_png(_two_pieces())))
    assert image.mode == "L" and image.size == (60, 40)
    values = np.asarray(image)
    assert set(np.unique(values)) == {0, 255} and (values == 255).sum() == 169


def test_piece_filter_and_image_score() -> None:
    kept = drop_small_pieces(_two_pieces(), 10)
    assert kept.sum() == 160
    prob = np.where(_two_pieces(), 0.9, 0.1)
    assert segment_image_score(prob, kept, 0.5) == pytest.approx(0.9)
    assert segment_image_score(prob, np.zeros_like(kept), 0.5) < 0.5
