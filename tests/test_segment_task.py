"""Segmentation end to end: training (``--task segment``), checkpoints, Predictor, evaluate,
width and explain on a segmentation checkpoint.

Random initialisation and 64 px synthetic images; the runs that train are marked slow.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fracturekit.config import DECODER_NAMES, SEG_LOSS_NAMES, ConfigError, TrainConfig
from fracturekit.data import build_transforms, load_dataset
from fracturekit.models import (
    DECODERS,
    SEG_LOSSES,
    CheckpointError,
    Segmenter,
    build_segmenter,
    load_checkpoint,
    load_segmenter,
    read_checkpoint,
    save_checkpoint,
)
from fracturekit.models._checkpoint import check_meta
from fracturekit.predict import Predictor, drop_small_pieces
from fracturekit.seg_metrics import SEGMENTATION_KEYS
from fracturekit.train._segment_task import MaskedSamples, negative_classes, pixel_weights

# ---------------------------------------------------------------------------------------------
# fast: tables, data, checkpoints, Predictor


def test_config_names_match_the_tables() -> None:
    assert set(DECODER_NAMES) == set(DECODERS)
    assert set(SEG_LOSS_NAMES) == set(SEG_LOSSES)


def test_segment_config_checks() -> None:
    TrainConfig(task="segment", tile=64).validate()
    bad_keys = (
        {"task": "detect"},
        {"decoder": "deeplab"},
        {"tile": 40},
        {"min_area": -1},
        {"tile_focus": 1.5},
        {"tile_focus": -0.1},
    )
    for bad in bad_keys:
        with pytest.raises(ConfigError):
            TrainConfig(**bad).validate()


def test_flips_move_the_mask_with_the_image_and_crop_keeps_them_together() -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[5:30, 40:43] = 255  # an asymmetric bright bar; the mask is exactly the bar
    mask = rgb[..., 0] > 0
    transform = build_transforms(64, [0.0] * 3, [1.0] * 3, augment="flips", crop=32)
    moved = False
    for _ in range(30):
        x, m = transform(Image.fromarray(rgb), mask)
        assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32)
        assert torch.equal((x[0] > 0.5).float(), m[0])
        moved |= bool(m.sum() > 0)
    assert moved


def test_flips_color_keeps_the_mask_exact_and_moves_the_intensities() -> None:
    rgb = np.full((64, 64, 3), 100, np.uint8)
    rgb[5:30, 40:43] = 200  # a bright asymmetric bar on grey; the mask is exactly the bar
    mask = rgb[..., 0] > 150
    transform = build_transforms(64, [0.0] * 3, [1.0] * 3, augment="flips_color", crop=32)
    backgrounds = set()
    for _ in range(30):
        x, m = transform(Image.fromarray(rgb), mask)
        assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32)
        # brightness/contrast keep the bar brighter than the background: the mask still is it
        assert torch.equal((x[0] > x[0].min() + 0.1).float(), m[0]) or m.sum() == 0
        backgrounds.add(round(float(x[0][m[0] == 0].mean()), 3))
    assert len(backgrounds) > 5  # the intensities vary; plain flips leave them at 100/255
    plain = build_transforms(64, [0.0] * 3, [1.0] * 3, augment="flips", crop=32)
    x, m = plain(Image.fromarray(rgb), mask)
    assert float(x[0][m[0] == 0].mean()) == pytest.approx(100 / 255)


def test_focused_tiles_hold_the_small_fracture_at_the_asked_share() -> None:
    rgb = np.zeros((128, 128, 3), np.uint8)
    rgb[110:113, 4:7] = 255  # a 3 x 3 "fracture" in a corner: 1.5% of random 32-px tiles hold it
    mask = rgb[..., 0] > 0
    shares = {}
    for focus in (0.0, 0.5, 1.0):
        torch.manual_seed(0)
        transform = build_transforms(
            128, [0.0] * 3, [1.0] * 3, augment="flips", crop=32, crop_focus=focus
        )
        hits = []
        for _ in range(400):
            x, m = transform(Image.fromarray(rgb), mask)
            assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32)
            assert torch.equal((x[0] > 0.5).float(), m[0])  # image and mask cut together
            hits.append(bool(m.sum() > 0))
        shares[focus] = float(np.mean(hits))
    assert shares[0.0] < 0.06
    assert 0.42 < shares[0.5] < 0.6
    assert shares[1.0] == 1.0
    # an image without a positive pixel (or without a mask) gets plain random tiles
    transform = build_transforms(128, [0.0] * 3, [1.0] * 3, crop=32, crop_focus=1.0)
    x, m = transform(Image.fromarray(rgb), np.zeros((128, 128), bool))
    assert m.sum() == 0 and x.shape == (3, 32, 32)
    assert transform(Image.fromarray(rgb))[0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="crop_focus"):
        build_transforms(128, [0.0] * 3, [1.0] * 3, crop=32, crop_focus=2.0)


def _sample(path: str, cls: str, mask: str | None):
    from fracturekit.data import Sample

    return Sample(Path(path), 0, cls, mask=None if mask is None else Path(mask))


def test_positive_without_mask_is_weighted_zero_negative_is_empty() -> None:
    negatives = negative_classes(["crack", "no_crack"], "crack")
    assert negatives == {"no_crack"}
    samples = [
        _sample("a.png", "crack", "masks/a.png"),
        _sample("b.png", "crack", None),
        _sample("c.png", "no_crack", None),
    ]
    assert pixel_weights(samples, negatives) == [1.0, 0.0, 1.0]
    assert negative_classes(["photos"], "photos") == set()


def test_masked_samples_yield_empty_masks_for_negatives(tmp_path: Path) -> None:
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "n.png")
    data = MaskedSamples(
        [_sample(str(tmp_path / "n.png"), "no_crack", None)],
        build_transforms(32, [0.5] * 3, [0.5] * 3),
        3,
        {"no_crack"},
    )
    x, (mask, weight) = data[0]
    assert x.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert mask.sum() == 0 and float(weight) == 1.0


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory) -> Path:
    model = build_segmenter("efficientnet_lite0", pretrained=False).eval()
    path = tmp_path_factory.mktemp("seg") / "model.pt"
    save_checkpoint(path, model, {"img_size": 64, "threshold": 0.4, "min_area": 3})
    return path


def test_checkpoint_round_trip_dispatches_on_task(seg_ckpt: Path) -> None:
    model, meta = load_checkpoint(seg_ckpt)
    assert isinstance(model, Segmenter)
    assert (meta["task"], meta["decoder"], meta["threshold"], meta["min_area"]) == (
        "segment",
        "unet",
        0.4,
        3,
    )
    again, _ = load_segmenter(seg_ckpt)
    assert isinstance(again, Segmenter)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"decoder": "deeplab"}, "decoder"),
        ({"min_area": -2}, "min_area"),
        ({"task": "detect"}, "task"),
        ({"threshold": None}, "threshold"),
        ({"members": 0}, "members"),
        ({"members": 17}, "members"),
        ({"members": "2"}, "members"),
    ],
)
def test_check_meta_validates_segment_metas(seg_ckpt: Path, change: dict, needle: str) -> None:
    meta = {**read_checkpoint(seg_ckpt)["meta"], **change}
    with pytest.raises(CheckpointError, match=needle):
        check_meta(seg_ckpt, meta)


def test_load_segmenter_refuses_a_classifier(tmp_path: Path) -> None:
    from fracturekit.models import build_model

    path = tmp_path / "clf.pt"
    save_checkpoint(path, build_model("simple_cnn", 2, pretrained=False), {"img_size": 32})
    with pytest.raises(CheckpointError, match="segmenter"):
        load_segmenter(path)


def test_predictor_maps_and_masks_at_the_image_size(seg_ckpt: Path) -> None:
    predictor = Predictor.from_checkpoint(seg_ckpt)
    assert predictor.task == "segment" and predictor.min_area == 3
    images = [Image.new("RGB", (80, 48), "gray"), Image.new("RGB", (64, 64), "white")]
    maps = predictor.probability_maps(images)
    assert [m.shape for m in maps] == [(48, 80), (64, 64)]
    assert all(m.min() >= 0.0 and m.max() <= 1.0 for m in maps)
    masks = predictor.predict_masks(images)
    assert [m.shape for m in masks] == [(48, 80), (64, 64)] and masks[0].dtype == bool
    batch = torch.stack([predictor.preprocess(im) for im in images])
    assert predictor.predict_proba_maps(batch)[0].shape == (64, 64)


def test_onnx_backend_of_a_segmenter_asks_for_the_export(seg_ckpt: Path) -> None:
    # Segmenters have an ONNX backend (tests/test_export.py); without the file, say how to make it.
    with pytest.raises(FileNotFoundError, match="fracturekit export"):
        Predictor.from_checkpoint(seg_ckpt, backend="onnx")


def test_drop_small_pieces() -> None:
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = True
    mask[5:8, 5:8] = True
    kept = drop_small_pieces(mask, 4)
    assert not kept[0, 0] and kept[5:8, 5:8].all()


def test_masked_images_layout(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "masks").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("RGB", (32, 32)).save(root / f"{name}.png")
    Image.new("L", (32, 32)).save(root / "masks" / "a.png")
    splits = load_dataset(root, val_fraction=0.0)
    assert splits.layout == "masked-images" and splits.classes == ["photos"]
    by_name = {s.path.name: s.mask for s in splits.all_samples()}
    assert by_name["a.png"] is not None and by_name["b.png"] is None


# ---------------------------------------------------------------------------------------------
# slow: a tiny training run and the commands on its checkpoint


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> tuple[Path, Path]:
    from fracturekit.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("segrun")
    data = generate_dataset(root / "data", 24, 64, 0, workers=1)
    # A crack image without its mask: no pixel truth, left out of the pixel loss.
    (data / "masks" / sorted((data / "masks").glob("*.png"))[0].name).unlink()
    return data, root / "run"


def _train(data: Path, out: Path, *extra: str) -> None:
    from fracturekit.cli import main

    argv = [
        "train", str(data), "--task", "segment", "--no-pretrained", "--img-size", "64",
        "--tile", "32", "--augment", "flips", "--epochs", "2", "--batch-size", "8",
        "--test-fraction", "0.25", "--out", str(out), *extra,
    ]  # fmt: skip
    assert main(argv) == 0


@pytest.mark.slow
def test_train_segment_end_to_end(seg_run, capsys) -> None:
    data, out = seg_run
    _train(data, out)
    text = capsys.readouterr().out
    assert "have no mask file and are left out of the pixel loss" in text
    assert "pixel_f1_tol2" in text  # the test split's segmentation figures
    model, meta = load_checkpoint(out / "model.pt")
    assert isinstance(model, Segmenter)
    assert meta["task"] == "segment" and meta["decoder"] == "unet"
    assert 0 < meta["threshold"] < 1 and meta["min_area"] >= 1
    assert meta["classes"] == ["no_crack", "crack"] and meta["positive"] == "crack"
    assert set(meta["metrics"]["segmentation"]) == set(SEGMENTATION_KEYS)
    # The validation images' truth and image scores, for --prior: one each, two classes.
    stored = meta["validation"]
    assert len(stored["labels"]) == len(stored["probabilities"]) == stored["n"] > 0
    assert set(stored["labels"]) <= {0, 1} and all(len(p) == 2 for p in stored["probabilities"])
    with (out / "splits.csv").open() as fh:
        assert "mask" in next(csv.reader(fh))
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["segmentation"]) == list(SEGMENTATION_KEYS)


@pytest.mark.slow
def test_evaluate_segment_keys_and_plots(seg_run, tmp_path: Path) -> None:
    from fracturekit.evaluate import evaluate_checkpoint

    data, out = seg_run
    if not (out / "model.pt").exists():
        _train(data, out)
    metrics = evaluate_checkpoint(out / "model.pt", data, tmp_path / "eval", n_boot=10, split="all")
    assert list(metrics["segmentation"]) == list(SEGMENTATION_KEYS)
    assert set(metrics["localisation"]) == {"pointing_game"}
    for key in ("f1", "roc_auc", "accuracy", "precision", "recall"):
        assert key in metrics
    assert any("without a mask file" in n for n in metrics["notes"])
    for name in ("iou_histogram.png", "overlays_worst.png", "overlays_best.png", "metrics.json"):
        assert (tmp_path / "eval" / name).is_file()
    assert metrics["prior"] is None and metrics["source"]["threshold_from"] == "checkpoint"
    # At 3% positives the image decision moves; the pixel figures do not.
    rare = evaluate_checkpoint(
        out / "model.pt", data, tmp_path / "rare", n_boot=10, split="all", prior=0.03
    )
    assert rare["prior"] == pytest.approx(0.03) and rare["source"]["threshold_from"] == "prior"
    assert rare["threshold"] >= rare["segmentation"]["threshold"]
    assert rare["prior_support"]["validation_negatives"] >= 1 and "prior_support" not in metrics
    assert rare["segmentation"] == metrics["segmentation"]
    assert rare["roc_auc"] == metrics["roc_auc"]


@pytest.mark.slow
def test_width_and_explain_on_a_segmentation_checkpoint(seg_run, tmp_path: Path) -> None:
    from fracturekit.cli import main

    data, out = seg_run
    if not (out / "model.pt").exists():
        _train(data, out)
    image = sorted((data / "crack").glob("*.png"))[1]
    argv = ["width", str(image), "--model", str(out / "model.pt"), "--out", str(tmp_path / "w")]
    assert main([*argv, "--px-per-mm", "2"]) == 0
    assert (tmp_path / "w" / "widths.csv").is_file()
    assert main(["explain", str(out / "model.pt"), str(image), "--out", str(tmp_path / "x")]) == 0
    prob = np.load(tmp_path / "x" / f"{image.stem}_prob.npy")
    assert prob.shape == (64, 64) and (tmp_path / "x" / f"{image.stem}_prob.png").is_file()


def test_validation_image_scores_follow_the_record_rule() -> None:
    from fracturekit.train._segment_task import image_scores

    probs = torch.zeros(3, 8, 8, dtype=torch.uint8)
    probs[0, 2:5, 2:5] = 230  # a 9-px piece above 0.5
    probs[1, 0, 0] = 250  # a 1-px piece: below min_area
    outputs = {"probs": probs, "top": torch.tensor([0.91, 0.98, 0.2], dtype=torch.float64)}
    scores = image_scores(outputs, 0.5, min_area=4)
    assert scores[0] == pytest.approx(0.91)  # kept: the most probable pixel
    assert 0.49 < scores[1] < 0.5  # no piece of min_area: just below the threshold
    assert scores[2] == pytest.approx(0.2)


@pytest.mark.slow
def test_tta_segmenter_is_calibrated_on_the_averaged_maps(seg_run, tmp_path: Path) -> None:
    data, _ = seg_run
    out = tmp_path / "tta"
    _train(data, out, "--tta", "4", "--epochs", "1")
    predictor = Predictor.from_checkpoint(out / "model.pt")
    assert predictor.tta == 4
    with (out / "splits.csv").open() as fh:
        val = [r["path"] for r in csv.DictReader(fh) if r["split"] == "val"]
    stored = np.array(predictor.meta["validation"]["probabilities"])[:, 1]
    images = [Image.open(p).convert("RGB") for p in val]

    def tops(views: int) -> np.ndarray:
        predictor.meta["tta"] = views
        return np.array([m.max() for m in predictor.probability_maps(images)])

    # The stored most probable pixels are those of the 4-view maps, not of one view.
    kept = stored >= predictor.threshold  # below it the score is capped, not the maximum
    assert kept.any()
    four, one = tops(4), tops(1)
    assert np.abs(stored - four)[kept].max() <= 1e-4 < np.abs(stored - one)[kept].max()


# ---------------------------------------------------------------------------------------------
# several segmenters as one (train --members K)


def _segmenters(n: int) -> list[Segmenter]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(build_segmenter("efficientnet_lite0", pretrained=False).eval())
    return out


def test_segmenter_mean_averages_logits_and_survives_a_checkpoint(tmp_path: Path) -> None:
    from fracturekit.models import SegmenterMean

    members = _segmenters(2)
    mean = SegmenterMean(members).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = (members[0](x) + members[1](x)) / 2
        assert torch.allclose(mean(x), expected, atol=1e-6)
        assert not torch.allclose(members[0](x), members[1](x))  # the members differ
    path = save_checkpoint(tmp_path / "mean.pt", mean, {"img_size": 64, "threshold": 0.4})
    again, meta = load_segmenter(path)
    assert isinstance(again, SegmenterMean) and meta["members"] == 2
    with torch.no_grad():
        assert torch.equal(again(x), mean(x))
    # A single segmenter's meta has no members key.
    single = save_checkpoint(tmp_path / "one.pt", members[0], {"img_size": 64})
    assert "members" not in read_checkpoint(single)["meta"]


def test_segmenter_mean_runs_the_stages_its_members_share_once() -> None:
    from fracturekit.models import SegmenterMean

    members = _segmenters(3)
    mean = SegmenterMean(members).eval()
    assert mean.shared_stages() == 0  # three random initialisations share nothing
    # What train --members leaves: the frozen stem and first stage equal in every member.
    for member in members[1:]:
        for i in range(2):
            member.encoder_stages()[i].load_state_dict(members[0].encoder_stages()[i].state_dict())
    assert mean.shared_stages() == 2
    calls = [0, 0, 0]
    for i, member in enumerate(members):
        member.encoder_stages()[0].register_forward_hook(
            lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)
        )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = sum(m(x) for m in members) / 3
        calls[:] = [0, 0, 0]
        got = mean(x)
        assert calls == [1, 0, 0]  # the shared stem ran once, for all three
        assert torch.allclose(got, expected, atol=1e-5)
        mean.train()
        calls[:] = [0, 0, 0]
        mean(x)
        assert calls == [1, 1, 1]  # training: each member whole, its own gradients
    mean.eval()
    # A later stage that differs stops the sharing there.
    with torch.no_grad():
        next(members[2].encoder_stages()[1].parameters()).add_(1.0)
    assert mean.shared_stages() == 1


@pytest.mark.slow
def test_an_exported_segmenter_mean_holds_the_shared_stages_once(tmp_path: Path) -> None:
    import onnx

    from fracturekit.export import export_onnx
    from fracturekit.models import SegmenterMean

    members = _segmenters(2)
    for i in range(2):
        members[1].encoder_stages()[i].load_state_dict(members[0].encoder_stages()[i].state_dict())
    mean = SegmenterMean(members).eval()
    ckpt = save_checkpoint(tmp_path / "mean.pt", mean, {"img_size": 64, "threshold": 0.5})
    report = export_onnx(ckpt, tmp_path / "mean.onnx")  # proves it computes the same
    assert report.max_abs_diff <= 1e-4
    convs = [n for n in onnx.load(report.path).graph.node if n.op_type == "Conv"]

    def count(modules: list[torch.nn.Module]) -> int:
        return sum(isinstance(m, torch.nn.Conv2d) for s in modules for m in s.modules())

    shared = count(members[0].encoder_stages()[:2])
    assert len(convs) == 2 * count([members[0]]) - shared


def test_segmenter_mean_refuses_mixed_or_too_few_members() -> None:
    from fracturekit.models import SegmenterError, SegmenterMean

    with pytest.raises(SegmenterError, match="2..16"):
        SegmenterMean(_segmenters(1))
    other = build_segmenter("efficientnet_lite0", decoder="fpn", pretrained=False)
    with pytest.raises(SegmenterError, match="one architecture"):
        SegmenterMean([_segmenters(1)[0], other])


def test_a_classifier_meta_cannot_hold_members(tmp_path: Path) -> None:
    from fracturekit.models import build_model

    path = tmp_path / "clf.pt"
    save_checkpoint(path, build_model("simple_cnn", 2, pretrained=False), {"img_size": 32})
    with pytest.raises(CheckpointError, match="members"):
        check_meta(path, {**read_checkpoint(path)["meta"], "members": 2})


def test_members_config_checks_and_member_seeds(tmp_path: Path) -> None:
    from fracturekit.train._members import member_config, member_folder

    with pytest.raises(ConfigError, match="task=segment"):
        TrainConfig(members=2).validate()
    with pytest.raises(ConfigError, match="members=0"):
        TrainConfig(task="segment", members=0).validate()
    cfg = TrainConfig(task="segment", members=3, seed=5).validate()
    members = [member_config(cfg, tmp_path, i) for i in range(3)]
    assert [m.seed for m in members] == [5, 6, 7]
    assert {m.split_seed for m in members} == {5} and {m.members for m in members} == {1}
    assert (
        member_config(TrainConfig(task="segment", members=2, split_seed=9), tmp_path, 1).split_seed
        == 9
    )
    # Resuming the whole run resumes the members that began (a last.pt), starts the others.
    member_folder(tmp_path, 0).mkdir(parents=True)
    (member_folder(tmp_path, 0) / "last.pt").write_bytes(b"")
    resumed = TrainConfig(task="segment", members=2, resume=str(tmp_path))
    assert member_config(resumed, tmp_path, 0).resume == str(member_folder(tmp_path, 0))
    assert member_config(resumed, tmp_path, 1).resume is None
    assert member_config(cfg, tmp_path, 0).resume is None  # not resuming: never


def test_members_refuse_a_folder_holding_a_run(tmp_path: Path) -> None:
    from fracturekit.train import train

    (tmp_path / "members" / "0").mkdir(parents=True)
    cfg = TrainConfig(data=str(tmp_path), task="segment", members=2)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path, progress=False)


@pytest.mark.slow
def test_train_members_writes_their_calibrated_mean(seg_run, tmp_path: Path) -> None:
    from fracturekit.models import SegmenterMean
    from fracturekit.train._members import member_folder

    data, _ = seg_run
    out = tmp_path / "pair"
    _train(data, out, "--members", "2", "--epochs", "1")
    model, meta = load_checkpoint(out / "model.pt")
    assert isinstance(model, SegmenterMean) and meta["members"] == 2
    assert [m["seed"] for m in meta["metrics"]["members"]] == [0, 1]
    assert meta["config"]["members"] == 2
    # Each member is a whole checkpoint of its own, on the same validation images.
    for i in range(2):
        member, member_meta = load_checkpoint(member_folder(out, i) / "model.pt")
        assert isinstance(member, Segmenter) and member_meta["config"]["seed"] == i
        assert member_meta["validation"]["labels"] == meta["validation"]["labels"]
        for a, b in zip(member.parameters(), model.members[i].parameters(), strict=True):
            assert torch.equal(a, b)
    # The stored validation scores are the mean's, not a member's.
    with (out / "splits.csv").open() as fh:
        val = [r["path"] for r in csv.DictReader(fh) if r["split"] == "val"]
    predictor = Predictor.from_checkpoint(out / "model.pt")
    images = [Image.open(p).convert("RGB") for p in val]
    tops = np.array([m.max() for m in predictor.probability_maps(images)])
    stored = np.array(meta["validation"]["probabilities"])[:, 1]
    kept = stored >= predictor.threshold
    assert kept.any() and np.abs(stored - tops)[kept].max() <= 1e-4
    assert predictor.describe()["members"] == 2  # GET /model
    # Resuming the finished run trains nothing again and writes the same mean.
    from fracturekit.cli import main

    assert main(["train", "--resume", str(out)]) == 0
    again = read_checkpoint(out / "model.pt")
    assert again["meta"]["validation"] == meta["validation"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again["state_dict"].items())
