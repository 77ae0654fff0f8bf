"""Synthetic crack data: exact masks, known widths, determinism, the data-set layout and CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from fracturekit import synthetic
from fracturekit.cli import main
from fracturekit.synthetic import (
    KIND_NAMES,
    KINDS,
    CentreLine,
    TrueCrack,
    generate_dataset,
    match_truth,
    render_mask,
    render_sample,
)


def _straight(x0, y0, angle, length, width):
    s = np.arange(0.0, length + 1e-9, 1.0)
    xy = np.stack([x0 + s * np.cos(angle), y0 + s * np.sin(angle)], axis=1)
    return TrueCrack(1, [CentreLine(xy, np.full(len(s), float(width)))])


def _brute_force_mask(a, b, width, size):
    """Pixel centres within width/2 of segment a-b, computed independently."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    d = np.asarray(b, float) - np.asarray(a, float)
    t = np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / (d @ d), 0, 1)
    dist = np.hypot(xx - a[0] - t * d[0], yy - a[1] - t * d[1])
    return dist <= width / 2


@pytest.mark.parametrize("angle", [0.0, 0.3, np.pi / 4, 1.2, 2.5])
@pytest.mark.parametrize("width", [1.0, 2.5, 6.0])
def test_mask_is_exactly_the_width_convention(angle, width):
    # Length a whole number of px so the last vertex is the segment's end.
    crack = _straight(10.3, 31.7, angle, 30.0, width)
    a, b = crack.branches[0].xy[0], crack.branches[0].xy[-1]
    assert np.array_equal(render_mask([crack], 64), _brute_force_mask(a, b, width, 64))


def test_one_px_line_is_one_row():
    crack = _straight(5.0, 20.0, 0.0, 40.0, 1.0)
    mask = render_mask([crack], 48)
    rows = np.nonzero(mask.any(axis=1))[0]
    assert rows.tolist() == [20]
    assert mask.sum() == 41


def test_true_crack_statistics():
    xy = np.stack([np.arange(11.0), np.zeros(11)], axis=1)
    w = np.linspace(2.0, 4.0, 11)
    crack = TrueCrack(1, [CentreLine(xy, w)])
    assert crack.length_px == pytest.approx(10.0)
    assert crack.mean_width_px == pytest.approx(3.0)
    assert crack.median_width_px == pytest.approx(3.0, abs=0.11)
    assert crack.max_width_px == pytest.approx(4.0)


@pytest.mark.parametrize("kind", [*KINDS, "mixed"])
@pytest.mark.parametrize("with_crack", [True, False])
def test_render_sample_every_kind(kind, with_crack):
    sample = render_sample(np.random.default_rng(3), 64, kind, with_crack)
    assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
    assert sample.mask.shape == (64, 64) and sample.mask.dtype == bool
    assert sample.image.std() > 2  # textured, not flat
    if with_crack:
        assert sample.mask.sum() >= 8
        assert sample.cracks
        for crack in sample.cracks:
            for line in crack.branches:
                assert line.width.min() >= synthetic.MIN_WIDTH
                assert line.width.max() <= synthetic.MAX_WIDTH
                steps = np.hypot(*np.diff(line.xy, axis=0).T)
                assert steps.max() <= synthetic.STEP + 1e-9
        # The recorded geometry renders to exactly this mask.
        assert np.array_equal(render_mask(sample.cracks, 64), sample.mask)
    else:
        assert not sample.mask.any() and not sample.cracks
    if kind == "xray":
        assert np.array_equal(sample.image[..., 0], sample.image[..., 2])  # grey


def test_render_sample_is_deterministic():
    a = render_sample(np.random.default_rng([5, 1]), 64, "asphalt", True)
    b = render_sample(np.random.default_rng([5, 1]), 64, "asphalt", True)
    c = render_sample(np.random.default_rng([5, 2]), 64, "asphalt", True)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


def test_crack_is_darker_than_its_surroundings():
    from scipy import ndimage as ndi

    darker = 0
    for i in range(12):
        s = render_sample(np.random.default_rng([11, i]), 96, "mixed", True)
        grey = s.image.astype(float).mean(axis=2)
        ring = ndi.binary_dilation(s.mask, iterations=4) & ~ndi.binary_dilation(s.mask)
        darker += np.median(grey[s.mask]) < np.median(grey[ring]) - 5
    assert darker >= 11


def test_unknown_kind_and_tiny_size_are_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        render_sample(np.random.default_rng(0), 64, "marble", True)
    with pytest.raises(ValueError, match="at least 16"):
        render_sample(np.random.default_rng(0), 8, "concrete", True)


def test_match_truth_flags_tips_and_border():
    crack = _straight(10.0, 32.0, 0.0, 40.0, 4.0)
    pts = np.array([[30.0, 32.0], [11.0, 32.0], [30.0, 40.0], [30.0, 33.0]])
    m = match_truth([crack], pts, 64)
    assert m.width[0] == pytest.approx(4.0) and m.well_defined[0]
    assert not m.well_defined[1]  # at a free tip
    assert np.isnan(m.width[2]) and not m.well_defined[2]  # 8 px off the centre line
    assert m.well_defined[3] and m.distance[3] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Data set on disk


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_generate_dataset_layout(tmp_path):
    out = generate_dataset(tmp_path / "ds", 10, 32, seed=4, kind="mixed", crack_fraction=0.3)
    crack = sorted(p.name for p in (out / "crack").iterdir())
    no_crack = sorted(p.name for p in (out / "no_crack").iterdir())
    assert len(crack) == 3 and len(no_crack) == 7
    assert sorted(p.name for p in (out / "masks").iterdir()) == crack
    assert len(list((out / "profiles").iterdir())) == 3
    for name in crack:
        mask = np.asarray(Image.open(out / "masks" / name))
        assert set(np.unique(mask)) == {0, 255}
        img = Image.open(out / "crack" / name)
        assert img.mode == "RGB" and img.size == (32, 32)
    with open(out / "cracks.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(synthetic.CRACK_COLUMNS)
    assert {r["image"] + ".png" for r in rows} == set(crack)
    for r in rows:
        assert 1.0 <= float(r["mean_width_px"]) <= float(r["max_width_px"]) <= 20.0
        # The profile's vertices add up to the recorded length.
        with open(out / "profiles" / f"{r['image']}.csv", newline="") as fh:
            prof = [p for p in csv.DictReader(fh) if p["crack"] == r["crack"]]
        xy = {}
        for p in prof:
            xy.setdefault(p["branch"], []).append((float(p["x"]), float(p["y"])))
        length = sum(np.hypot(*np.diff(np.array(v), axis=0).T).sum() for v in xy.values())
        assert length == pytest.approx(float(r["length_px"]), abs=0.01 * len(xy))
    meta = json.loads((out / "synth.json").read_text())
    assert meta["complete"] and meta["seed"] == 4 and meta["crack_images"] == 3
    with open(out / "images.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 10


def test_generate_dataset_is_byte_identical_whatever_the_workers(tmp_path):
    a = generate_dataset(tmp_path / "a", 34, 32, seed=9, workers=1)
    b = generate_dataset(tmp_path / "b", 34, 32, seed=9, workers=2)
    c = generate_dataset(tmp_path / "c", 34, 32, seed=10, workers=1)
    assert _tree(a) == _tree(b)
    assert _tree(a) != _tree(c)


def test_generate_dataset_refuses_non_empty_folders(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(user, 4, 32, seed=0)
    with pytest.raises(FileExistsError, match="no synth.json"):
        generate_dataset(user, 4, 32, seed=0, overwrite=True)
    assert (user / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_only_generated_files(tmp_path):
    out = generate_dataset(tmp_path / "ds", 6, 32, seed=0)
    (out / "notes.txt").write_text("keep me")
    (out / "crack" / "my_photo.png").write_bytes(b"not ours")
    generate_dataset(out, 4, 32, seed=1, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "crack" / "my_photo.png").read_bytes() == b"not ours"
    generated = [p for p in out.rglob("concrete_*.png") if p.parent.name != "masks"]
    assert len(generated) == 4
    assert json.loads((out / "synth.json").read_text())["n"] == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be"),
        ({"size": 8}, "size must be"),
        ({"crack_fraction": 1.5}, "crack_fraction"),
        ({"kind": "wood"}, "unknown kind"),
    ],
)
def test_generate_dataset_bad_arguments(tmp_path, kwargs, message):
    args = {"n": 4, "size": 32, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path / "x", **args)


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synth", str(out), "--n", "6", "--size", "32", "--seed", "2", "--kind", "rock"]
    assert main(args) == 0
    assert "wrote 6 rock images" in capsys.readouterr().out
    assert len(list((out / "crack").iterdir())) == 3
    assert main(args) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--crack-fraction", "1"]) == 0
    assert len(list((out / "crack").iterdir())) == 6 and not (out / "no_crack").exists()


def test_kind_names_match_the_table():
    assert set(KIND_NAMES) == set(KINDS) | {"mixed"}
    assert set(synthetic.MIXED_KINDS) <= set(KINDS)


def test_every_command_offers_every_synthetic_kind():
    from fracturekit.cli import build_parser
    from fracturekit.contracts import SYNTH_KINDS

    sub = build_parser()._subparsers._group_actions[0].choices
    for command in ("synth", "demo"):
        kind = next(a for a in sub[command]._actions if a.dest == "kind")
        assert tuple(kind.choices) == SYNTH_KINDS, command
    assert {"masonry", "mixed"} <= set(SYNTH_KINDS)


def test_distractor_rows_are_named():
    for table in (synthetic.SURFACE_DISTRACTORS, synthetic.XRAY_DISTRACTORS):
        for name, row in table.items():
            assert callable(row.draw), name
            assert row.weight > 0, name
            assert isinstance(row.before_crack, bool), name
