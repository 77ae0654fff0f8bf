"""Evaluation metrics, bootstrap intervals, prior re-weighting, plots and the evaluate command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from fracturekit.calibration import default_positive
from fracturekit.evaluate import (
    METRIC_KEYS,
    compute_metrics,
    evaluate_checkpoint,
    evaluate_predictions,
    precision_at_prior,
)
from fracturekit.metrics import _auc_stack, _confusion_stack

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _binary(p_pos: list[float] | np.ndarray) -> np.ndarray:
    p_pos = np.asarray(p_pos, dtype=float)
    return np.stack([1 - p_pos, p_pos], axis=1)


def _random_proba(rng: np.random.Generator, y: np.ndarray, c: int, signal: float) -> np.ndarray:
    logits = rng.normal(size=(y.size, c))
    logits[np.arange(y.size), y] += signal
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p = np.round(p, 2)  # ties, as real saturated probabilities have
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# positive class
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "classes, positive",
    [
        (["crack", "no_crack"], "crack"),
        (["no_crack", "crack"], "crack"),
        (["fractured", "not fractured"], "fractured"),
        (["not-fractured", "fractured"], "fractured"),
        (["anomaly", "normal"], "anomaly"),
        (["negative", "positive"], "positive"),
        (["Positive", "Negative"], "Positive"),
        (["NoCrack", "Crack"], "Crack"),
        (["Non-Defective", "Defective"], "Defective"),
        (["defect", "intact"], "defect"),
        (["0", "1"], "1"),
        (["nodule", "tumour"], "tumour"),  # neither looks negative: the second class
    ],
)
def test_default_positive(classes: list[str], positive: str) -> None:
    assert default_positive(classes) == positive


def test_default_positive_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="binary tasks only; got 3 classes"):
        default_positive(["a", "b", "c"])


# ---------------------------------------------------------------------------------------------
# compute_metrics
# ---------------------------------------------------------------------------------------------

# Ten images: four cracks, six without. At threshold 0.5: TP 3, FN 1, FP 1, TN 5.
Y_SMALL = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P_SMALL = [0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05, 0.35]


def test_binary_metrics_by_hand() -> None:
    m = compute_metrics(Y_SMALL, _binary(P_SMALL), ["no_crack", "crack"], n_boot=0)
    assert list(m)[: len(METRIC_KEYS)] == list(METRIC_KEYS)
    assert m["n"] == 10 and m["positive"] == "crack" and m["threshold"] == 0.5
    assert m["confusion_matrix"] == [[5, 1], [1, 3]]  # rows true, columns predicted
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m["macro_f1"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m["weighted_f1"] == pytest.approx((4 * 3 / 4 + 6 * 5 / 6) / 10)
    # Pairs (crack, no crack) ranked correctly: 6 + 6 + 5 + 3 of 24.
    assert m["roc_auc"] == pytest.approx(20 / 24)
    # Positives at ranks 1, 2, 4, 7: AP = (1 + 1 + 3/4 + 4/7) / 4.
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 7) / 4)
    # p_o = 0.8, p_e = (6*6 + 4*4) / 100 = 0.52.
    assert m["cohen_kappa"] == pytest.approx((0.8 - 0.52) / (1 - 0.52))
    assert m["per_class"]["no_crack"] == pytest.approx(
        {"precision": 5 / 6, "recall": 5 / 6, "f1": 5 / 6, "support": 6}
    )
    assert m["per_class"]["crack"]["support"] == 4
    assert m["ci95"] == {"f1": None, "roc_auc": None}
    json.dumps(m, allow_nan=False)


def test_threshold_moves_the_decisions() -> None:
    m = compute_metrics(Y_SMALL, _binary(P_SMALL), ["no_crack", "crack"], threshold=0.25, n_boot=0)
    # Positive when p >= 0.25: all four cracks, and 0.7, 0.4, 0.35 among the others.
    assert m["confusion_matrix"] == [[3, 3], [0, 4]]
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(4 / 7)
    assert m["roc_auc"] == pytest.approx(20 / 24)  # ranking metrics ignore the threshold


def test_labels_as_names_and_explicit_positive() -> None:
    names = np.where(Y_SMALL == 1, "crack", "no_crack")
    a = compute_metrics(names, _binary(P_SMALL), ["no_crack", "crack"], n_boot=0)
    b = compute_metrics(Y_SMALL, _binary(P_SMALL), ["no_crack", "crack"], n_boot=0)
    assert a == b
    # Choosing the other class as positive reports its figures (probability 1 - p).
    c = compute_metrics(
        Y_SMALL, _binary(P_SMALL), ["no_crack", "crack"], positive="no_crack", n_boot=0
    )
    assert c["positive"] == "no_crack" and c["f1"] == pytest.approx(5 / 6)
    assert c["roc_auc"] == pytest.approx(20 / 24)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_binary_metrics_match_scikit_learn(threshold: float) -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    p = _random_proba(rng, y, 2, 1.2)
    m = compute_metrics(y, p, ["intact", "cracked"], threshold=threshold, n_boot=0)
    pred = (p[:, 1] >= threshold).astype(int)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p[:, 1]))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()


def test_multiclass_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    classes = ["transverse", "oblique", "spiral", "comminuted"]
    y = rng.integers(0, 4, 600)
    p = _random_proba(rng, y, 4, 1.5)
    m = compute_metrics(y, p, classes, n_boot=0)
    pred = p.argmax(axis=1)
    assert m["positive"] is None and m["threshold"] is None
    assert any("arg-max" in note for note in m["notes"])
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["macro_f1"] == m["f1"]
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    onehot = np.eye(4)[y]
    assert m["average_precision"] == pytest.approx(
        skm.average_precision_score(onehot, p, average="macro")
    )
    f1s = skm.f1_score(y, pred, average=None)
    for k, name in enumerate(classes):
        assert m["per_class"][name]["f1"] == pytest.approx(f1s[k])
        assert m["per_class"][name]["support"] == int((y == k).sum())


def test_absent_class_gives_none_with_a_reason() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 50)  # class 2 never occurs
    p = _random_proba(rng, y, 3, 1.0)
    m = compute_metrics(y, p, ["a", "b", "c"], n_boot=50)
    assert set(METRIC_KEYS) <= set(m)
    assert m["roc_auc"] is None and m["average_precision"] is None
    assert m["ci95"]["roc_auc"] is None and m["ci95"]["f1"] is not None
    assert any("roc_auc" in n and "'c'" in n for n in m["notes"])
    assert m["per_class"]["c"]["support"] == 0
    json.dumps(m, allow_nan=False)


def test_bad_inputs_are_named() -> None:
    p = _binary(P_SMALL)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        compute_metrics(Y_SMALL, p[:, :1], ["no_crack", "crack"])
    with pytest.raises(ValueError, match="not logits"):
        compute_metrics(Y_SMALL, p * 3 - 1, ["no_crack", "crack"])
    with pytest.raises(ValueError, match="sum to 1"):
        compute_metrics(Y_SMALL, np.full((10, 2), 0.2), ["no_crack", "crack"])
    with pytest.raises(ValueError, match="not among classes"):
        compute_metrics(["crack"] * 9 + ["hole"], p, ["no_crack", "crack"])
    with pytest.raises(ValueError, match="'fracture' is not one of"):
        compute_metrics(Y_SMALL, p, ["no_crack", "crack"], positive="fracture")
    with pytest.raises(ValueError, match="prior"):
        compute_metrics(Y_SMALL, p, ["no_crack", "crack"], prior=1.2)
    with pytest.raises(ValueError, match="binary tasks only"):
        compute_metrics([0, 1, 2], np.eye(3), ["a", "b", "c"], prior=0.1)
    with pytest.raises(ValueError, match="10 labels"):
        compute_metrics(Y_SMALL[:5], p, ["no_crack", "crack"])


# ---------------------------------------------------------------------------------------------
# positive-class prior
# ---------------------------------------------------------------------------------------------


def _from_counts(tp: int, fn: int, tn: int, fp: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1 = crack) and probabilities realising the given confusion counts at 0.5."""
    y = np.array([1] * (tp + fn) + [0] * (tn + fp))
    p = np.array([0.9] * tp + [0.1] * fn + [0.1] * tn + [0.9] * fp)
    return y, _binary(p)


def test_prior_reproduces_the_balanced_to_rare_drop() -> None:
    # A balanced set of 1000 + 1000 with recall 0.95 and specificity 0.993: F1 = 1900/1957
    # = 0.971. At 3% prevalence the same operating point gives TP' = 0.03 * 0.95 = 0.0285,
    # FP' = 0.97 * 0.007 = 0.00679, FN' = 0.03 * 0.05 = 0.0015 per image:
    # precision = 0.0285 / 0.03529 = 0.8076, F1 = 0.057 / 0.06529 = 0.8730 (seed 5: 0.972 -> 0.875).
    y, p = _from_counts(tp=950, fn=50, tn=993, fp=7)
    m = compute_metrics(y, p, ["no_crack", "crack"], prior=0.03, n_boot=0)
    assert m["f1"] == pytest.approx(1900 / 1957)
    at = m["at_prior"]
    assert at["prior"] == 0.03 and at["recall"] == pytest.approx(0.95)
    assert at["specificity"] == pytest.approx(0.993)
    assert at["precision"] == pytest.approx(0.0285 / 0.03529)
    assert at["f1"] == pytest.approx(0.057 / 0.06529)
    assert round(at["f1"], 3) == 0.873
    assert at["evaluated_prevalence"] == pytest.approx(0.5)
    # Specificity 0.995 (also F1 0.972 on the balanced set) would keep F1 at 0.900 at 3%.
    p995 = precision_at_prior(0.95, 0.995, 0.03)
    assert 2 * p995 * 0.95 / (p995 + 0.95) == pytest.approx(0.0570 / 0.06335)


def test_prior_equals_counting_on_a_resampled_set() -> None:
    # Balanced 100/100; repeating every negative four times gives prevalence 0.2 exactly, so
    # the precision there equals at_prior's precision at prior 0.2.
    rng = np.random.default_rng(7)
    y = np.array([1] * 100 + [0] * 100)
    p = _random_proba(rng, y, 2, 1.0)
    at = compute_metrics(y, p, ["normal", "fracture"], prior=0.2, n_boot=0)["at_prior"]
    y_rare = np.concatenate([y[:100], np.tile(y[100:], 4)])
    p_rare = np.concatenate([p[:100], np.tile(p[100:], (4, 1))])
    rare = compute_metrics(y_rare, p_rare, ["normal", "fracture"], n_boot=0)
    assert at["precision"] == pytest.approx(rare["precision"])
    assert at["f1"] == pytest.approx(rare["f1"])
    # At the evaluated prevalence the re-weighting changes nothing.
    same = compute_metrics(y, p, ["normal", "fracture"], prior=0.5, n_boot=0)
    assert same["at_prior"]["precision"] == pytest.approx(same["precision"])


# ---------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------


def test_weighted_kernels_equal_scikit_learn_on_repeated_samples() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 80)
    p = _random_proba(rng, y, 3, 1.0)
    pred = p.argmax(axis=1)
    weights = rng.integers(0, 4, size=(5, 80)).astype(float)
    cms = _confusion_stack(weights, y, pred, 3)
    aucs = _auc_stack(weights, y == 1, p[:, 1])
    for b in range(5):
        idx = np.repeat(np.arange(80), weights[b].astype(int))
        assert cms[b].tolist() == skm.confusion_matrix(y[idx], pred[idx], labels=[0, 1, 2]).tolist()
        assert aucs[b] == pytest.approx(skm.roc_auc_score(y[idx] == 1, p[idx, 1]))


def test_ci_equals_a_plain_stratified_bootstrap() -> None:
    # The same draws, resampled index by index and scored with scikit-learn.
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 120)
    p = _random_proba(rng, y, 2, 1.0)
    n_boot, seed = 200, 11
    m = compute_metrics(y, p, ["no_crack", "crack"], n_boot=n_boot, seed=seed)
    draws = np.random.default_rng(seed)
    members = [np.flatnonzero(y == k) for k in (0, 1)]
    picks = [idx[draws.integers(0, idx.size, size=(n_boot, idx.size))] for idx in members]
    f1s, aucs = [], []
    for b in range(n_boot):
        idx = np.concatenate([pk[b] for pk in picks])
        f1s.append(skm.f1_score(y[idx], (p[idx, 1] >= 0.5).astype(int)))
        aucs.append(skm.roc_auc_score(y[idx], p[idx, 1]))
    assert m["ci95"]["f1"] == pytest.approx(list(np.percentile(f1s, [2.5, 97.5])))
    assert m["ci95"]["roc_auc"] == pytest.approx(list(np.percentile(aucs, [2.5, 97.5])))
    assert m["bootstrap"] == {
        "n_boot": 200,
        "seed": 11,
        "method": "stratified percentile",
        "level": 0.95,
    }
    lo, hi = m["ci95"]["f1"]
    assert lo < m["f1"] < hi


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(10)
    y = rng.integers(0, 3, 90)
    p = _random_proba(rng, y, 3, 1.0)
    a = compute_metrics(y, p, ["a", "b", "c"], n_boot=100, seed=1)
    b = compute_metrics(y, p, ["a", "b", "c"], n_boot=100, seed=1)
    c = compute_metrics(y, p, ["a", "b", "c"], n_boot=100, seed=2)
    assert a["ci95"] == b["ci95"] and a["ci95"] != c["ci95"]


def test_bootstrap_of_5000_images_is_fast() -> None:
    rng = np.random.default_rng(12)
    y = rng.integers(0, 2, 5000)
    p = _random_proba(rng, y, 2, 1.0)
    compute_metrics(y[:50], p[:50], ["no_crack", "crack"], n_boot=10)  # imports out of the timing
    start = time.perf_counter()
    m = compute_metrics(y, p, ["no_crack", "crack"], n_boot=1000)
    assert time.perf_counter() - start < 4.0
    assert m["ci95"]["roc_auc"][0] < m["roc_auc"] < m["ci95"]["roc_auc"][1]


# ---------------------------------------------------------------------------------------------
# evaluate_predictions: files
# ---------------------------------------------------------------------------------------------


def _images(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_evaluate_predictions_writes_everything(tmp_path: Path) -> None:
    paths = _images(tmp_path / "images", 10)
    out = tmp_path / "eval"
    m = evaluate_predictions(
        Y_SMALL,
        _binary(P_SMALL),
        ["no_crack", "crack"],
        out,
        paths=paths,
        prior=0.03,
        n_boot=50,
        extra={"localisation": {"pointing_game": 0.5}},
    )
    saved = json.loads((out / "metrics.json").read_text())
    assert list(saved)[: len(METRIC_KEYS)] == list(METRIC_KEYS)
    assert saved == m and saved["localisation"] == {"pointing_game": 0.5}
    for name in ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png", "mistakes.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    report = (out / "classification_report.txt").read_text()
    assert "precision" in report and "no_crack" in report and "at prior" in report
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,true,pred,correct,p_no_crack,p_crack" and len(rows) == 11
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp file


def test_undefined_curves_and_no_mistakes_write_no_plot(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "roc.png").write_bytes(b"stale")  # from an earlier evaluation
    y = np.array([1, 1, 1])
    m = evaluate_predictions(
        y,
        _binary([0.9, 0.8, 0.7]),
        ["no_crack", "crack"],
        out,
        paths=_images(tmp_path / "im", 3),
        n_boot=0,
    )
    assert m["roc_auc"] is None and m["accuracy"] == 1.0
    assert not (out / "roc.png").exists() and not (out / "pr.png").exists()
    assert not (out / "mistakes.png").exists()
    assert (out / "confusion_matrix.png").exists() and (out / "reliability.png").exists()


def test_extra_may_not_replace_metrics(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="f1"):
        evaluate_predictions(
            Y_SMALL, _binary(P_SMALL), ["no_crack", "crack"], tmp_path, n_boot=0, extra={"f1": 1.0}
        )


# ---------------------------------------------------------------------------------------------
# evaluate_checkpoint and the CLI, with a real tiny checkpoint, Predictor and load_dataset
# ---------------------------------------------------------------------------------------------


def _shaded_images(folder: Path, n: int, seed: int) -> list[Path]:
    """Noise images of different mean brightness, so an untrained network scores them apart."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        level = rng.uniform(20, 235)
        pixels = np.clip(rng.normal(level, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _checkpoint(path: Path, **meta: object) -> Path:
    import torch

    from fracturekit.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("simple_cnn", 2, pretrained=False)
    base = {"classes": ["no_crack", "crack"], "positive": "crack", "threshold": 0.5}
    return save_checkpoint(path, model, {**base, "img_size": 32, **meta})


def _scores(ckpt: Path, paths: list[Path]) -> np.ndarray:
    from fracturekit.predict import Predictor

    predictor = Predictor.from_checkpoint(ckpt)
    return np.array([p.probabilities["crack"] for p in predictor.predict_paths(paths)])


@pytest.fixture
def real_pipeline(tmp_path: Path):
    """Six cracks and six without in a folder, and a checkpoint whose stored threshold splits
    its own scores of them in half."""
    data = tmp_path / "data"
    paths = _shaded_images(data / "crack", 6, 1) + _shaded_images(data / "no_crack", 6, 2)
    y = np.array([1] * 6 + [0] * 6)
    first = _checkpoint(tmp_path / "probe" / "model.pt")
    scores = _scores(first, paths)
    threshold = float(np.median(scores))
    ckpt = _checkpoint(tmp_path / "run" / "model.pt", threshold=threshold)
    return ckpt, data, paths, y, scores, threshold


def _confusion(y: np.ndarray, scores: np.ndarray, threshold: float) -> list[list[int]]:
    pred = (scores >= threshold).astype(int)
    return skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()


def test_evaluate_checkpoint_uses_the_stored_threshold(tmp_path: Path, real_pipeline) -> None:
    ckpt, data, paths, y, scores, threshold = real_pipeline
    (data / "crack" / "broken.png").write_bytes(b"not a png")
    m = evaluate_checkpoint(ckpt, data, tmp_path / "eval", n_boot=20, layout="folders", cams=0)
    assert m["threshold"] == threshold and m["positive"] == "crack" and m["prior"] is None
    assert m["source"]["threshold_from"] == "checkpoint"
    order = np.argsort([str(p) for p in paths])  # the loader sorts files; the matrix does not care
    assert m["n"] == 12 and m["confusion_matrix"] == _confusion(y[order], scores[order], threshold)
    assert m["source"]["split"] == "all" and m["source"]["images"] == 12
    assert [Path(d["path"]).name for d in m["source"]["dropped"]] == ["broken.png"]
    assert any("left out by the data loader" in n for n in m["notes"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == m


def test_evaluate_checkpoint_rejects_unknown_classes(tmp_path: Path, real_pipeline) -> None:
    ckpt, data, *_ = real_pipeline
    with pytest.raises(ValueError, match="no val split"):
        evaluate_checkpoint(ckpt, data, tmp_path / "eval", n_boot=0, split="val", val_fraction=0)
    _shaded_images(data / "spall", 2, 3)
    with pytest.raises(ValueError, match=r"\['spall'\] are not among the checkpoint's classes"):
        evaluate_checkpoint(ckpt, data, tmp_path / "eval", n_boot=0, cams=0)


def test_cli_evaluate(tmp_path: Path, real_pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    from fracturekit.cli import main

    ckpt, data, _, y, scores, _ = real_pipeline
    out = tmp_path / "eval"
    args = ["evaluate", str(ckpt), str(data), "--out", str(out), "--n-boot", "20"]
    code = main([*args, "--prior", "0.03", "--threshold", "0.5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed.replace("\n", "")
    words = " ".join(printed.split())  # the console wraps long lines
    assert "f1" in words and "prior 0.03" in words and "(threshold given;" in words
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["prior"] == 0.03 and saved["threshold"] == 0.5
    assert sum(map(sum, saved["confusion_matrix"])) == 12
    assert (out / "report.html").exists()
    assert main(["evaluate", str(tmp_path / "none.pt"), str(data), "--out", str(out)]) == 2
    assert "none.pt" in capsys.readouterr().err
    # A prior without a threshold needs the checkpoint's validation scores: a clear refusal.
    assert main([*args, "--prior", "0.03"]) == 2
    assert "stores no validation scores" in capsys.readouterr().err


def _validation_meta(n: int = 400, seed: int = 0) -> dict[str, object]:
    """Balanced validation scores: positives ~ Beta(4, 2), negatives ~ Beta(2, 4)."""
    rng = np.random.default_rng(seed)
    s = np.r_[rng.beta(4, 2, n // 2), rng.beta(2, 4, n // 2)]
    labels = [1] * (n // 2) + [0] * (n // 2)
    return {"labels": labels, "probabilities": np.stack([1 - s, s], 1).tolist()}


def test_evaluate_checkpoint_decides_at_the_prior(tmp_path: Path, real_pipeline) -> None:
    from fracturekit.calibration import threshold_at_prior
    from fracturekit.report import write_report

    _, data, *_ = real_pipeline
    validation = _validation_meta()
    ckpt = _checkpoint(tmp_path / "prior" / "model.pt", validation=validation)
    expected = threshold_at_prior(
        validation["labels"], np.array(validation["probabilities"]), 1, 0.03
    )
    out = tmp_path / "eval"
    m = evaluate_checkpoint(ckpt, data, out, prior=0.03, n_boot=0, cams=0)
    assert m["prior"] == 0.03 and m["threshold"] == pytest.approx(expected) and expected > 0.6
    assert m["source"]["threshold_from"] == "prior" and m["at_prior"]["prior"] == 0.03
    page = write_report(out).read_text()
    assert "decided for 3% positives" in page
    support = m["prior_support"]
    assert support["validation_negatives"] + support["validation_positives"] == len(
        validation["labels"]
    )
    assert (
        f"{support['negatives_at_or_above']} of {support['validation_negatives']} negatives" in page
    )
    # train --prior stores the prior as the checkpoint's default: the same decisions.
    default = _checkpoint(
        tmp_path / "default" / "model.pt", validation=validation, config={"prior": 0.03}
    )
    m2 = evaluate_checkpoint(default, data, tmp_path / "eval2", n_boot=0, cams=0)
    assert m2["threshold"] == m["threshold"] and m2["prior"] == 0.03
    # A given threshold is not the prior's: no support entry.
    given = evaluate_checkpoint(
        ckpt, data, tmp_path / "eval3", prior=0.03, threshold=0.5, n_boot=0, cams=0
    )
    assert "prior_support" not in given


@pytest.mark.slow
def test_evaluate_checkpoint_end_to_end(tmp_path: Path) -> None:
    """A real (untrained) checkpoint through Predictor and load_dataset, with one broken file."""
    from fracturekit.models import build_model, save_checkpoint

    data = tmp_path / "data"
    for name in ("crack", "no_crack"):
        _images(data / name, 4)
    (data / "crack" / "broken.png").write_bytes(b"not a png")
    model = build_model("simple_cnn", 2, pretrained=False)
    ckpt = save_checkpoint(
        tmp_path / "run" / "model.pt",
        model,
        {"classes": ["crack", "no_crack"], "positive": "crack", "threshold": 0.5, "img_size": 32},
    )
    out = tmp_path / "eval"
    m = evaluate_checkpoint(ckpt, data, out, batch_size=3, n_boot=20)
    assert m["n"] == 8 and m["classes"] == ["crack", "no_crack"] and m["positive"] == "crack"
    assert m["source"]["split"] == "all"  # a plain folder defines no test split
    assert [Path(d["path"]).name for d in m["source"]["dropped"]] == ["broken.png"]
    assert sum(map(sum, m["confusion_matrix"])) == 8
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == 8 and all(
        abs(float(r.split(",")[4]) + float(r.split(",")[5]) - 1) < 1e-5 for r in rows
    )


def test_evaluate_checkpoint_carves_the_training_split_of_its_training_data(
    tmp_path: Path, real_pipeline
) -> None:
    from fracturekit.data import load_dataset

    _, data, *_ = real_pipeline
    config = {"data": str(data), "seed": 3, "test_fraction": 0.25, "layout": "folders", "val": None}
    ckpt = _checkpoint(tmp_path / "trained" / "model.pt", config=config)
    m = evaluate_checkpoint(ckpt, data, tmp_path / "eval", n_boot=0, cams=0)
    carved = load_dataset(data, layout="folders", seed=3, test_fraction=0.25)
    assert m["source"]["split"] == "test" and m["source"]["images"] == len(carved.test) < 12
    # An explicit option still wins over the stored one.
    m = evaluate_checkpoint(ckpt, data, tmp_path / "eval2", n_boot=0, cams=0, test_fraction=0.5)
    assert m["source"]["images"] == len(load_dataset(data, seed=3, test_fraction=0.5).test)
    # Other data (a separate test folder) is not split by the training settings.
    other = tmp_path / "elsewhere"
    _shaded_images(other / "crack", 2, 4)
    _shaded_images(other / "no_crack", 2, 5)
    m = evaluate_checkpoint(ckpt, other, tmp_path / "eval3", n_boot=0, cams=0)
    assert m["source"]["split"] == "all" and m["source"]["images"] == 4


def test_prior_is_recorded(tmp_path: Path) -> None:
    m = compute_metrics(Y_SMALL, _binary(P_SMALL), ["no_crack", "crack"], prior=0.03, n_boot=0)
    assert m["prior"] == 0.03 and list(m)[4] == "prior"
    assert (
        compute_metrics(Y_SMALL, _binary(P_SMALL), ["no_crack", "crack"], n_boot=0)["prior"] is None
    )
    y = np.array([0, 1, 2, 0, 1, 2])
    priors = {"a": 0.8, "b": 0.1, "c": 0.1}
    out = tmp_path / "multi"
    m = evaluate_predictions(
        y, np.eye(3)[y] * 0.7 + 0.1, ["a", "b", "c"], out, prior=priors, n_boot=0
    )
    assert m["prior"] == priors and "at_prior" not in m
    assert "class priors = a 0.8, b 0.1, c 0.1" in (out / "classification_report.txt").read_text()
    with pytest.raises(ValueError, match="multi-class"):
        compute_metrics(Y_SMALL, _binary(P_SMALL), ["no_crack", "crack"], prior={"crack": 0.1})
    with pytest.raises(ValueError, match=r"\['d'\]"):
        compute_metrics(y, np.eye(3)[y], ["a", "b", "c"], prior={"d": 0.1})
