"""`fracturekit predict` on a segmentation checkpoint: the image-level decision from the mask, a
crack_fraction column and, with --masks, every mask written as a 0/255 PNG at the image's size."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fixture_images import noise_image
from fracturekit.cli import main
from fracturekit.predict import (
    Predictor,
    mask_names,
    predict_batch,
    prediction_columns,
    resize_probability,
)


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    noise_image(0, size=(70, 50)).save(root / "a" / "x.png")
    noise_image(1, size=(64, 64)).save(root / "a" / "x.jpg")  # same stem, same folder
    noise_image(2, size=(33, 90)).save(root / "b" / "x.png")  # same name, other folder
    (root / "b" / "broken.png").write_bytes(b"not an image")
    return root


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_all_crack_model_writes_full_masks_and_fractions(make_seg_checkpoint, photos, tmp_path):
    ckpt = make_seg_checkpoint(bias=3.0)
    out, masks = tmp_path / "r.csv", tmp_path / "masks"
    result = predict_batch(ckpt, [photos], out=out, masks=masks, batch_size=2)
    assert (result.n, result.failed) == (4, 1)
    rows = _rows(out)
    assert list(rows[0]) == prediction_columns(["background", "crack"], segment=True, masks=True)
    good = [r for r in rows if not r["error"]]
    assert {r["label"] for r in good} == {"crack"}
    assert all(float(r["crack_fraction"]) == 1.0 for r in good)
    assert all(float(r["p_crack"]) >= float(r["threshold"]) for r in good)
    written = sorted(p.relative_to(masks).as_posix() for p in masks.rglob("*.png"))
    assert written == ["a/x.jpg.png", "a/x.png.png", "b/x.png"]
    for r in good:
        mask = np.asarray(Image.open(r["mask"]))
        assert mask.shape == np.asarray(Image.open(r["path"])).shape[:2]
        assert set(np.unique(mask)) == {255}
    broken = next(r for r in rows if r["error"])
    assert broken["mask"] == "" and broken["crack_fraction"] == ""
    # Nothing the user has is overwritten without asking.
    with pytest.raises(FileExistsError, match="masks"):
        predict_batch(ckpt, [photos], out=tmp_path / "again.csv", masks=masks)


def test_no_crack_model_and_json_records(make_seg_checkpoint, photos, tmp_path) -> None:
    ckpt = make_seg_checkpoint(bias=-3.0)
    out = tmp_path / "r.json"
    predict_batch(ckpt, [photos / "a"], out=out)
    records = json.loads(out.read_text())
    assert [r["label"] for r in records] == ["background", "background"]
    assert all(r["crack_fraction"] == 0.0 and "mask_file" not in r for r in records)
    assert all(r["probabilities"]["crack"] < r["threshold"] for r in records)
    assert all(
        r["probabilities"]["crack"] + r["probabilities"]["background"] == pytest.approx(1.0)
        for r in records
    )


def test_cli_masks_and_usage_errors(make_seg_checkpoint, photos, tmp_path, capsys) -> None:
    from fracturekit.models import build_model, save_checkpoint

    ckpt = make_seg_checkpoint(bias=3.0)
    args = ["predict", str(ckpt), str(photos / "a"), "--masks", str(tmp_path / "m")]
    assert main([*args, "--out", str(tmp_path / "r.csv")]) == 0
    assert len(list((tmp_path / "m").glob("*.png"))) == 2
    assert main(args) == 2  # the folder holds masks now
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert "crack_fraction" in capsys.readouterr().out  # the printed table
    clf = save_checkpoint(
        tmp_path / "clf.pt", build_model("simple_cnn", 2, pretrained=False), {"img_size": 32}
    )
    assert main(["predict", str(clf), str(photos / "a"), "--masks", str(tmp_path / "n")]) == 2
    assert "needs a segmentation checkpoint" in capsys.readouterr().err


def test_classifier_columns_unchanged() -> None:
    assert prediction_columns(["crack", "no_crack"]) == [
        "path",
        "label",
        "p_crack",
        "p_no_crack",
        "threshold",
        "error",
    ]


def test_mask_names(tmp_path: Path) -> None:
    paths = [str(tmp_path / "s" / "1.jpg"), str(tmp_path / "s" / "1.jpg"), str(tmp_path / "2.png")]
    names = mask_names(paths, tmp_path / "m")
    assert [n.relative_to(tmp_path / "m").as_posix() for n in names] == [
        "s/1.png",
        "s/1.png",
        "2.png",
    ]


@pytest.mark.parametrize("size", [(80, 48), (17, 300), (3, 2), (64, 64)])
def test_resize_matches_torch_bilinear(size: tuple[int, int]) -> None:
    prob = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    w, h = size
    ref = F.interpolate(
        torch.from_numpy(prob)[None, None], size=(h, w), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert np.abs(resize_probability(prob, size) - ref).max() < 1e-5


def test_records_agree_with_predictor_masks(make_seg_checkpoint, photos) -> None:
    predictor = Predictor.from_checkpoint(make_seg_checkpoint())  # random init: mixed pixels
    path = photos / "a" / "x.png"
    rec = next(predictor.predict_paths([path], keep_masks=True))
    mask = predictor.predict_masks([Image.open(path).convert("RGB")])[0]
    assert np.array_equal(rec.mask, mask)
    assert rec.crack_fraction == pytest.approx(mask.mean())
    assert (rec.label == "crack") == bool(mask.any())


def test_describe_says_the_task(make_seg_checkpoint) -> None:
    info = Predictor.from_checkpoint(make_seg_checkpoint(bias=3.0)).describe()
    assert (info["task"], info["decoder"], info["min_area"]) == ("segment", "unet", 0)
    assert info["members"] == 1


def _with_validation(predictor: Predictor, negatives: list[float], positives: list[float]):
    """Give a segmenter the validation image scores training stores (``meta["validation"]``)."""
    scores = [*negatives, *positives]
    predictor.meta["validation"] = {
        "n": len(scores),
        "with_pixel_truth": len(scores),
        "labels": [0] * len(negatives) + [1] * len(positives),
        "probabilities": [[1.0 - s, s] for s in scores],
    }
    return predictor


def test_a_prior_moves_the_image_decision_never_the_pixel_threshold(
    make_seg_checkpoint, photos
) -> None:
    # Every pixel at sigmoid(2.2) = 0.90: the pixel threshold 0.5 keeps the whole image.
    predictor = Predictor.from_checkpoint(make_seg_checkpoint(bias=2.2))
    path = photos / "a" / "x.png"
    plain = next(predictor.predict_paths([path], keep_masks=True))
    assert plain.label == "crack" and plain.mask.all() and plain.threshold == 0.5
    # Validation negatives reach 0.95: at 3% positives the image threshold goes above them.
    negatives = list(np.linspace(0.05, 0.95, 40))
    _with_validation(predictor, negatives, [0.97, 0.98, 0.99, 0.995] * 10).with_prior(0.03)
    assert predictor.image_threshold > 0.95 and predictor.threshold == 0.5
    support = predictor.prior_support
    assert support["negatives_at_or_above"] == 0 and support["positives_at_or_above"] == 40
    assert support["few"] and support["precision_range"][1] == 1.0
    rec = next(predictor.predict_paths([path], keep_masks=True))
    assert rec.label == "background" and not rec.mask.any() and rec.crack_fraction == 0.0
    assert rec.probabilities["crack"] == pytest.approx(plain.probabilities["crack"])
    assert rec.threshold == predictor.image_threshold
    assert predictor.describe()["image_threshold"] == predictor.image_threshold
    # Pixels are untouched: masks_from_maps still gives the full mask.
    assert predictor.predict_masks([Image.open(path).convert("RGB")])[0].all()
    # At a high prior the rule would go below the pixel threshold (positives from 0.2 up): it
    # stops there, so a positive image always has a mask.
    positives = list(np.linspace(0.2, 1.0, 40))
    _with_validation(predictor, list(np.linspace(0.0, 0.6, 40)), positives).with_prior(0.95)
    assert predictor.image_threshold == 0.5
    # The support counts at the threshold used (0.5), not the rule's lower one.
    assert predictor.prior_support["negatives_at_or_above"] == 7  # linspace(0, 0.6, 40) >= 0.5
    assert next(predictor.predict_paths([path])).label == "crack"
    # None restores the checkpoint's decision.
    assert predictor.with_prior(None).image_threshold == 0.5


def test_a_segmenter_without_validation_scores_refuses_a_prior(make_seg_checkpoint) -> None:
    predictor = Predictor.from_checkpoint(make_seg_checkpoint(bias=3.0))
    with pytest.raises(ValueError, match="stores no validation scores"):
        predictor.with_prior(0.03)


def test_evaluate_refuses_a_threshold_for_a_segmenter(make_seg_checkpoint, tmp_path) -> None:
    from fracturekit.evaluate import evaluate_checkpoint

    with pytest.raises(ValueError, match="--threshold\\) is for classifiers"):
        evaluate_checkpoint(make_seg_checkpoint(), tmp_path, tmp_path / "out", threshold=0.9)
    assert not (tmp_path / "out").exists()
