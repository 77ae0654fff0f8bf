"""The self-contained HTML run report."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from fracturekit.report import write_report


def _png(path: Path, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)
    return path.read_bytes()


def _metrics(**extra) -> dict:
    from fracturekit.evaluate import compute_metrics

    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.7, 0.4, 0.3, 0.6, 0.1])
    m = compute_metrics(y, np.stack([1 - p, p], 1), ["no_crack", "crack"], prior=0.03, n_boot=50)
    m.update(extra)
    return m


def _data_uris(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


@pytest.fixture
def run_dir(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("backbone: efficientnet_lite0\nlr: 1.0e-05\nnote: <b>x</b>\n")
    (run / "history.csv").write_text(
        "epoch,train_loss,val_loss,val_acc\n1,0.70,0.60,0.55\n2,0.50,0.41,0.75\n3,0.40,0.52,0.70\n"
    )
    (run / "metrics.json").write_text(json.dumps(_metrics(localisation={"pointing_game": 0.8125})))
    (run / "classification_report.txt").write_text("precision recall <table>\n")
    images = {
        name: _png(run / name, (10 * i, 100, 200))
        for i, name in enumerate(
            [
                "curves.png",
                "confusion_matrix.png",
                "roc.png",
                "pr.png",
                "reliability.png",
                "mistakes.png",
            ]
        )
    }
    images["cams/img_07_gradcam.png"] = _png(run / "cams" / "img_07_gradcam.png", (1, 2, 3))
    (run / "cams" / "readme.txt").write_text("not an image")
    return run, images


def test_report_has_every_section_and_embeds_every_image(run_dir) -> None:
    run, images = run_dir
    path = write_report(run)
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")
    for section in (
        "summary",
        "config",
        "training",
        "metrics",
        "plots",
        "classification-report",
        "mistakes",
        "more",
        "cams",
    ):
        assert f'<section id="{section}">' in page, section
    embedded = _data_uris(page)
    assert sorted(embedded) == sorted(images.values())  # each image once, byte for byte
    assert not re.search(r"https?://", page)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "img 07 gradcam" in page  # caption from the file name
    assert "pointing_game" in page and "0.8125" in page  # entries added by other modules
    assert "1e-05" in page  # config values are not rounded away
    assert "best val_loss" in page and ">2<" in page  # the epoch with the lowest val_loss
    assert "At another prevalence" in page


def test_report_escapes_text(run_dir) -> None:
    run, _ = run_dir
    page = write_report(run).read_text(encoding="utf-8")
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "&lt;table&gt;" in page


def test_sections_appear_only_with_their_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(empty).read_text(encoding="utf-8")
    assert "<section" not in page and "none of the files" in page

    only = tmp_path / "only"
    only.mkdir()
    (only / "metrics.json").write_text(json.dumps(_metrics()))
    page = write_report(only).read_text(encoding="utf-8")
    assert '<section id="metrics">' in page and '<section id="summary">' in page
    for absent in ("config", "training", "plots", "mistakes", "cams", "more"):
        assert f'<section id="{absent}">' not in page
    assert not _data_uris(page)


def test_training_files_come_from_the_checkpoint_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    curves = _png(run / "curves.png")
    (run / "config.yaml").write_text("epochs: 3\n")
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(
        json.dumps(_metrics(source={"checkpoint": str(run / "model.pt"), "split": "all"}))
    )
    page = write_report(evaluation).read_text(encoding="utf-8")
    assert '<section id="config">' in page and '<section id="training">' in page
    assert _data_uris(page) == [curves]


def test_report_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        write_report(tmp_path / "missing")
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        write_report(tmp_path)


def test_report_of_a_real_evaluation(tmp_path: Path) -> None:
    from fracturekit.evaluate import evaluate_predictions

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    p = rng.dirichlet(np.ones(3), 40)
    evaluate_predictions(y, p, ["hairline", "displaced", "comminuted"], tmp_path, n_boot=20)
    page = write_report(tmp_path).read_text(encoding="utf-8")
    # confusion matrix, ROC, PR and reliability plots, all embedded; no mistakes gallery
    # without image paths.
    assert len(_data_uris(page)) == 4
    assert "comminuted" in page and not re.search(r"https?://", page)


def test_decision_in_words() -> None:
    from fracturekit.report import decision_text

    m = _metrics(source={"threshold_from": "prior"})
    assert decision_text(m).startswith("Positive class crack, decided when its probability is at")
    assert "decided for 3% positives" in decision_text(m)
    assert "validation split" not in decision_text(m)  # no prior_support: nothing said of it
    support = {
        "validation_negatives": 160, "negatives_at_or_above": 2, "validation_positives": 150,
        "positives_at_or_above": 120, "precision": 0.75, "precision_range": [0.42, 0.97],
        "level": 0.9, "few": True,
    }  # fmt: skip
    text = decision_text({**m, "prior_support": support})
    assert "2 of 160 negatives and 120 of 150 positives score at or above it" in text
    assert "precision 0.7500 at 3% positives (read on the scores that chose the" in text
    assert "optimistic), 0.4200–0.9700 over the 90% interval" in text
    assert "another training may put it elsewhere" in text
    steady = decision_text({**m, "prior_support": {**support, "few": False}})
    assert "2 of 160 negatives" in steady and "another training" not in steady
    given = decision_text(_metrics(source={"threshold_from": "given"}))
    assert "threshold given" in given and "re-weighted to 3% positives" in given
    stored = _metrics(prior=None, source={"threshold_from": "checkpoint"})
    assert "the checkpoint's threshold" in decision_text(stored)
    multi = {"positive": None, "prior": {"a": 0.185, "b": 0.815}}
    assert decision_text(multi).startswith("Decided for class priors a 18.5%, b 81.5%")
    assert decision_text({"positive": None, "prior": None}) == ""


def test_report_keys_are_the_metric_keys(tmp_path: Path) -> None:
    """Every key compute_metrics writes is rendered by the metrics section, none in "more"."""
    from fracturekit.metrics import EXTRA_KEYS, METRIC_KEYS
    from fracturekit.report import _KNOWN_METRIC_KEYS

    assert set(METRIC_KEYS) | set(EXTRA_KEYS) <= _KNOWN_METRIC_KEYS
    assert set(_metrics()) <= _KNOWN_METRIC_KEYS


def test_segmentation_section_shows_the_pixel_figures_and_plots(tmp_path: Path) -> None:
    from fracturekit.evaluate import SEGMENT_PLOTS
    from fracturekit.report import SEGMENT_FIGURES

    assert set(SEGMENT_PLOTS) <= {name for name, _ in SEGMENT_FIGURES}
    run = tmp_path / "seg"
    seg = {"n": 4, "threshold": 0.45, "pixel_f1": 0.8125, "pixel_f1_tol2": 0.9375}
    widths = {"images": 4, "measured": 3, "mae_px": 0.4375}
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(_metrics(segmentation=seg, width_check=widths)))
    images = [_png(run / name, (5 * i, 9, 9)) for i, (name, _) in enumerate(SEGMENT_FIGURES)]
    page = write_report(run).read_text(encoding="utf-8")
    assert '<section id="segmentation">' in page and '<section id="more">' not in page
    assert "pixel_f1_tol2" in page and "0.9375" in page and "0.4375" in page
    assert sorted(_data_uris(page)) == sorted(images)
    only = tmp_path / "classifier"
    only.mkdir()
    (only / "metrics.json").write_text(json.dumps(_metrics()))
    assert '<section id="segmentation">' not in write_report(only).read_text(encoding="utf-8")
