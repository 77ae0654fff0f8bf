"""``fracturekit demo``: the whole pipeline on generated data, with its segmentation stage.

The fast tests cover the width check's pieces, the mask overlay and the command line; the slow
one runs the demo end to end at 64 px (classifier, then segmenter, evaluation and width check).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fracturekit import demo
from fracturekit.seg_metrics import SEGMENTATION_KEYS

# pixel_f1_tol2 the tiny demo's segmenter beats (64 px, 76 training images, 4 epochs) and a
# randomly initialised one does not.
TRAINED_TOL2 = 0.5


def test_recorded_widths_are_length_weighted_per_image(tmp_path: Path) -> None:
    path = tmp_path / "cracks.csv"
    path.write_text(
        "image,crack,branches,length_px,mean_width_px,median_width_px,max_width_px\n"
        "a,1,1,100.0,2.0,2.0,3.0\n"
        "a,2,1,300.0,6.0,6.0,8.0\n"
        "b,1,1,50.0,4.5,4.0,5.0\n"
    )
    assert demo._recorded_widths(path) == {"a": 5.0, "b": 4.5}


def test_width_summary_leaves_out_images_without_a_crack() -> None:
    rows = [
        ("a.png", 3.0, 3.1, 3.6, 0.5),
        ("b.png", 5.0, 4.9, 3.9, -1.0),
        ("c.png", 2.0, 2.2, None, None),  # nothing predicted
    ]
    summary = demo._width_summary(rows)
    assert summary == {
        "images": 3,
        "measured": 2,
        "mae_px": 0.75,
        "mae_true_mask_vs_record_px": round((0.1 + 0.1 + 0.2) / 3, 3),
        "mean_true_px": 4.0,
        "mean_predicted_px": 3.75,
    }
    assert demo._width_summary([])["mae_px"] is None


def test_mask_overlay_colours() -> None:
    from fracturekit.render import truth_overlay

    image = np.full((4, 4, 3), 100, np.uint8)
    pred = np.zeros((4, 4), bool)
    truth = np.zeros((4, 4), bool)
    pred[0, 0] = truth[0, 0] = True  # both: yellow
    pred[1, 1] = True  # prediction only: red
    truth[2, 2] = True  # truth only: green
    out = truth_overlay(image, pred, truth)
    grey = 100 / 255
    assert out.shape == (4, 4, 3) and out.dtype == np.float32
    assert np.allclose(out[3, 3], grey)
    assert np.allclose(out[0, 0], [0.4 * grey + 0.6, 0.4 * grey + 0.6, 0.4 * grey])
    assert np.allclose(out[1, 1], [0.4 * grey + 0.6, 0.4 * grey, 0.4 * grey])
    assert np.allclose(out[2, 2], [0.4 * grey, 0.4 * grey + 0.6, 0.4 * grey])
    with pytest.raises(ValueError, match="match the image"):
        truth_overlay(image, pred[:2], truth)


def test_test_subset_takes_equal_shares_of_each_class(tmp_path: Path) -> None:
    from fracturekit.synthetic import generate_dataset

    test = generate_dataset(tmp_path / "test", 10, 32, 0, workers=1)
    path = demo._test_subset(test, tmp_path / "subset.csv", 4)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["crack", "crack", "no_crack", "no_crack"]
    assert all(Path(r["path"]).is_file() for r in rows)
    assert all(Path(r["mask"]).is_file() for r in rows[:2]) and not rows[2]["mask"]
    assert [Path(r["path"]).name for r in rows[:2]] == sorted(
        p.name for p in (test / "crack").glob("*.png")
    )[:2]


def test_demo_refuses_an_earlier_segmentation_run(tmp_path: Path) -> None:
    (tmp_path / "segment").mkdir()
    (tmp_path / "segment" / "model.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match="--overwrite"):
        demo.run_demo(tmp_path)
    assert not (tmp_path / "data").exists()  # refused before any work


def test_cli_passes_the_segmentation_options(monkeypatch, tmp_path: Path) -> None:
    from fracturekit.cli import main

    seen: dict = {}

    def fake(out, **kwargs):
        seen.update(kwargs)
        raise FileExistsError("stop here")

    monkeypatch.setattr(demo, "run_demo", fake)
    args = ["demo", "--out", str(tmp_path), "--no-progress"]
    assert main(args) != 0
    assert seen["segment"] is True and seen["seg_epochs"] is None and seen["seg_test"] == 60
    assert main([*args, "--skip-segment", "--seg-epochs", "1", "--seg-test", "0"]) != 0
    assert seen["segment"] is False and seen["seg_epochs"] == 1 and seen["seg_test"] is None
    seen.clear()
    assert main([*args, "--seg-test", "-1"]) == 2 and not seen


# ---------------------------------------------------------------------------------------------
# slow: the demo end to end at 64 px


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> demo.DemoResult:
    out = tmp_path_factory.mktemp("demo")
    return demo.run_demo(
        out, n_train=80, n_test=40, size=64, img_size=64, epochs=1, progress=False,
        seg_epochs=4, seg_test=20, width_images=4,
    )  # fmt: skip


@pytest.mark.slow
def test_demo_segments_and_checks_widths(tiny_demo: demo.DemoResult) -> None:
    seg = tiny_demo.segment
    assert seg is not None and seg.run_dir == tiny_demo.out / "segment"
    for name in (
        "model.pt", "metrics.json", "report.html", "iou_histogram.png", "overlays_best.png",
        "overlays_worst.png", "widths.csv", "width_check.png", "segment_test.csv",
    ):  # fmt: skip
        assert (seg.run_dir / name).is_file(), name
    metrics = json.loads((seg.run_dir / "metrics.json").read_text())
    assert list(metrics["segmentation"]) == list(SEGMENTATION_KEYS)
    assert metrics["n"] == 20 and metrics["segmentation"]["n"] == 20
    for key in SEGMENTATION_KEYS[2:]:
        assert 0.0 <= metrics["segmentation"][key] <= 1.0, key
    widths = metrics["width_check"]
    assert widths["images"] == 4 and widths == seg.metrics["width_check"]
    assert widths["mae_true_mask_vs_record_px"] < 0.5  # the measurement itself is accurate
    with (seg.run_dir / "widths.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and list(rows[0]) == list(demo.WIDTH_COLUMNS)
    page = seg.report.read_text(encoding="utf-8")
    assert '<section id="segmentation">' in page and "pixel_f1_tol2" in page
    assert "width_check" in page and "mae_px" in page
    assert {"segment: train", "segment: evaluate"} <= set(tiny_demo.seconds)
    assert tiny_demo.report.is_file()  # the classifier's report is still written


@pytest.mark.slow
def test_trained_segmenter_beats_an_untrained_one(tiny_demo, make_seg_checkpoint, tmp_path):
    """The demo's segmenter finds the cracks: a random-init U-Net scores below the bound."""
    from fracturekit.evaluate import evaluate_checkpoint

    seg = tiny_demo.segment
    trained = seg.metrics["segmentation"]["pixel_f1_tol2"]
    untrained = evaluate_checkpoint(
        make_seg_checkpoint(), seg.run_dir / "segment_test.csv", tmp_path, layout="csv",
        split="all", val_fraction=0.0, n_boot=10,
    )["segmentation"]["pixel_f1_tol2"]  # fmt: skip
    assert untrained < TRAINED_TOL2 < trained, (untrained, trained)
