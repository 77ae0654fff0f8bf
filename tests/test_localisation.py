"""Localisation scores on hand-made heat maps and masks whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fracturekit.localisation import dilate_mask, localisation_scores, score_image, summarise


def _peak(shape: tuple[int, int], rc: tuple[int, int]) -> np.ndarray:
    cam = np.zeros(shape, np.float32)
    cam[rc] = 1.0
    return cam


def _mask(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def test_dilation_is_a_euclidean_disc() -> None:
    mask = np.zeros((41, 41), bool)
    mask[20, 20] = True
    grown = dilate_mask(mask, 8)
    rr, cc = np.nonzero(grown)
    dist = np.hypot(rr - 20, cc - 20)
    assert dist.max() <= 8 and grown[20, 28] and grown[12, 20] and not grown[26, 26]
    assert (dilate_mask(mask, 0) == mask).all()


def test_pointing_game_hit_inside_and_within_tolerance() -> None:
    mask = _mask((50, 50), slice(10, 12), slice(0, 50))  # a 2-px horizontal crack
    assert score_image(_peak((50, 50), (11, 30)), mask)["hit"] == 1.0
    near = _peak((50, 50), (17, 30))  # 6 px below the crack's lower edge (row 11)
    assert score_image(near, mask, dilate_px=8)["hit"] == 1.0
    assert score_image(near, mask, dilate_px=2)["hit"] == 0.0
    assert score_image(_peak((50, 50), (40, 30)), mask)["hit"] == 0.0


def test_flat_heat_map_points_nowhere() -> None:
    mask = _mask((20, 20), slice(0, 20), slice(0, 5))
    assert score_image(np.zeros((20, 20)), mask)["hit"] == 0.0
    assert score_image(np.full((20, 20), 0.5), mask)["hit"] == 0.0


def test_energy_is_the_share_of_mass_in_the_dilated_mask() -> None:
    mask = _mask((10, 10), slice(0, 3), slice(0, 10))
    uniform = np.ones((10, 10))
    assert score_image(uniform, mask, dilate_px=0)["energy"] == pytest.approx(0.3)
    assert score_image(uniform, mask, dilate_px=0)["area"] == pytest.approx(0.3)
    inside = mask.astype(float)
    assert score_image(inside, mask, dilate_px=0)["energy"] == pytest.approx(1.0)
    # Mass at distance 2 counts with a 2-px tolerance only.
    ring = _peak((10, 10), (4, 5))
    assert score_image(ring, mask, dilate_px=2)["energy"] == pytest.approx(1.0)
    assert score_image(ring, mask, dilate_px=1)["energy"] == pytest.approx(0.0)


def test_pixel_auc_uses_the_undilated_mask() -> None:
    mask = _mask((16, 16), slice(4, 8), slice(2, 14))
    assert score_image(mask.astype(float), mask)["auc"] == pytest.approx(1.0)
    assert score_image(1.0 - mask, mask)["auc"] == pytest.approx(0.0)
    full = np.ones((8, 8), bool)
    assert math.isnan(score_image(np.random.default_rng(0).random((8, 8)), full)["auc"])


def test_summary_averages_per_image_aucs_and_skips_empty_masks() -> None:
    shape = (16, 16)
    mask = _mask(shape, slice(4, 8), slice(2, 14))
    good, bad = mask.astype(float), 1.0 - mask
    out = localisation_scores(
        [good, bad, np.zeros(shape)], [mask, mask, np.zeros(shape, bool)], dilate_px=0
    )
    assert out["n"] == 2 and out["n_empty"] == 1
    assert out["pixel_auc"] == pytest.approx(0.5)  # mean of 1.0 and 0.0
    assert out["pointing_game"] == pytest.approx(0.5)
    assert out["chance"] == pytest.approx(mask.mean())
    assert set(out) >= {"pointing_game", "energy_in_mask", "pixel_auc", "n"}


def test_nothing_scored_gives_none() -> None:
    out = summarise([])
    assert out["n"] == 0 and out["pointing_game"] is None and out["pixel_auc"] is None


def test_bad_pairs_are_refused_with_the_image_named() -> None:
    with pytest.raises(ValueError, match="image 0: .*differ in shape"):
        localisation_scores([np.zeros((4, 4))], [np.ones((5, 5), bool)])
    with pytest.raises(ValueError, match="2 heat maps but 1 masks"):
        localisation_scores([np.zeros((4, 4))] * 2, [np.ones((4, 4), bool)])
    with pytest.raises(ValueError, match="empty"):
        score_image(np.zeros((4, 4)), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="NaN"):
        score_image(np.full((4, 4), np.nan), np.ones((4, 4), bool))
