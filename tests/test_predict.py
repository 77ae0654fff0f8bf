"""Predictor (the one inference path), batch prediction and `fracturekit predict`."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fixture_images import noise_image, write_truncated_jpeg
from fracturekit.cli import main
from fracturekit.models import build_model, logits_to_proba, save_checkpoint
from fracturekit.predict import (
    Prediction,
    Predictor,
    decide,
    expand_inputs,
    predict_batch,
    prediction_columns,
)

CLASSES = ["crack", "no_crack"]


def make_checkpoint(path: Path, *, num_classes: int = 2, in_chans: int = 3, **meta) -> Path:
    """A tiny untrained simple_cnn checkpoint at 32 px."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("simple_cnn", num_classes, in_chans=in_chans, pretrained=False)
    defaults = {
        "classes": CLASSES if num_classes <= 2 else [f"type{i}" for i in range(num_classes)],
        "img_size": 32,
        "positive": "crack" if num_classes <= 2 else None,
        "threshold": 0.4,
        "temperature": 1.5,
        "metrics": {"f1": 0.9, "roc_auc": 0.95, "accuracy": float("nan")},
    }
    return save_checkpoint(path, model, {**defaults, **meta})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def predictor(ckpt: Path) -> Predictor:
    return Predictor.from_checkpoint(ckpt)


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """Four readable images (two in a sub-folder), one corrupt file, a mask folder, a hidden
    file and a text file."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / ".hidden").mkdir()
    noise_image(1).save(root / "a.png")
    noise_image(2).save(root / "b.jpg")
    noise_image(3, mode="L").save(root / "sub" / "c.png")
    noise_image(4).save(root / "sub" / "d.tif")
    (root / "sub" / "broken.png").write_bytes(b"not an image at all")
    noise_image(5, mode="L").save(root / "masks" / "a.png")
    noise_image(6).save(root / ".hidden" / "x.png")
    (root / "notes.txt").write_text("hello")
    return root


# --------------------------------------------------------------------------------------------
# Predictor


def test_from_checkpoint_describes_the_model(predictor: Predictor) -> None:
    assert predictor.classes == CLASSES
    assert predictor.positive == "crack"
    assert predictor.threshold == pytest.approx(0.4)
    assert predictor.temperature == pytest.approx(1.5)
    info = predictor.describe()
    assert info["backbone"] == "simple_cnn"
    assert info["img_size"] == 32 and info["backend"] == "torch"
    # NaN metrics are left out: the description must be valid JSON.
    assert info["metrics"] == {"f1": 0.9, "roc_auc": 0.95}
    json.dumps(info, allow_nan=False)


def test_predict_images_applies_temperature_and_threshold(predictor: Predictor) -> None:
    images = [noise_image(i) for i in range(4)]
    preds = predictor.predict_images(images, paths=[f"im{i}" for i in range(4)])
    batch = torch.stack([predictor.preprocess(im) for im in images])
    with torch.inference_mode():
        logits = predictor.model(batch)
    expected = logits_to_proba(logits, 1.5).numpy()
    for pred, row in zip(preds, expected, strict=True):
        assert pred.error is None
        assert list(pred.probabilities) == CLASSES
        assert [pred.probabilities[c] for c in CLASSES] == pytest.approx(row.tolist(), abs=1e-6)
        want = "crack" if row[0] >= 0.4 else "no_crack"
        assert pred.label == want
        assert pred.confidence == pytest.approx(pred.probabilities[want])
        assert pred.threshold == pytest.approx(0.4)
    assert [p.path for p in preds] == ["im0", "im1", "im2", "im3"]
    assert predictor.predict_images([]) == []


def test_decide_threshold_and_argmax() -> None:
    proba = np.array([[0.35, 0.65], [0.45, 0.55], [0.9, 0.1]])
    idx, conf = decide(proba, CLASSES, "crack", 0.4)
    # The threshold on the positive class decides, not the larger probability.
    assert idx.tolist() == [1, 0, 0]
    assert conf.tolist() == pytest.approx([0.65, 0.45, 0.9])
    idx, _ = decide(proba, CLASSES, None, 0.4)
    assert idx.tolist() == [1, 1, 0]
    three = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    idx, conf = decide(three, ["a", "b", "c"], None, 0.5)
    assert idx.tolist() == [1, 0] and conf.tolist() == pytest.approx([0.5, 0.6])


def test_predict_paths_streams_in_order_with_error_rows(predictor: Predictor, images: Path) -> None:
    paths = [images / "a.png", images / "sub" / "broken.png", images / "b.jpg", images / "nope.png"]
    one = list(predictor.predict_paths(paths, batch_size=1))
    three = list(predictor.predict_paths(paths, batch_size=3))
    assert [p.path for p in one] == [str(p) for p in paths]
    assert [p.error is None for p in one] == [True, False, True, False]
    assert "broken.png" in one[1].error and one[1].label is None and one[1].probabilities == {}
    assert "nope.png" in one[3].error
    for a, b in zip(one, three, strict=True):
        assert a.label == b.label
        for c in a.probabilities:
            assert a.probabilities[c] == pytest.approx(b.probabilities[c], abs=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        list(predictor.predict_paths(paths, batch_size=0))


def test_truncated_image_is_loaded_unless_strict(predictor: Predictor, tmp_path: Path) -> None:
    path = write_truncated_jpeg(tmp_path / "cut.jpg")
    assert next(predictor.predict_paths([path])).error is None
    strict = next(predictor.predict_paths([path], strict=True))
    assert strict.error is not None and "truncated" in strict.error


def test_grayscale_model_and_single_logit_head(tmp_path: Path, images: Path) -> None:
    gray = Predictor.from_checkpoint(make_checkpoint(tmp_path / "g.pt", in_chans=1))
    assert gray.preprocess(noise_image(1)).shape == (1, 32, 32)
    pred = next(gray.predict_paths([images / "a.png"]))
    assert pred.error is None and sum(pred.probabilities.values()) == pytest.approx(1.0)

    single = Predictor.from_checkpoint(make_checkpoint(tmp_path / "s.pt", num_classes=1))
    pred = single.predict_images([noise_image(2)])[0]
    assert list(pred.probabilities) == CLASSES
    assert sum(pred.probabilities.values()) == pytest.approx(1.0)


def test_multiclass_uses_argmax(tmp_path: Path) -> None:
    p = Predictor.from_checkpoint(make_checkpoint(tmp_path / "m.pt", num_classes=3))
    pred = p.predict_images([noise_image(3)])[0]
    best = max(pred.probabilities, key=pred.probabilities.get)
    assert pred.label == best and len(pred.probabilities) == 3


def test_from_checkpoint_errors(tmp_path: Path, ckpt: Path) -> None:
    with pytest.raises(ValueError, match="backend"):
        Predictor.from_checkpoint(ckpt, backend="tensorrt")
    with pytest.raises(FileNotFoundError, match="fracturekit export"):
        Predictor.from_checkpoint(ckpt, backend="onnx")
    with pytest.raises(FileNotFoundError):
        Predictor.from_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        Predictor.from_checkpoint(bad)


# --------------------------------------------------------------------------------------------
# inputs and batch files


def test_expand_inputs_folders_files_and_manifests(images: Path, tmp_path: Path) -> None:
    found = expand_inputs([images])
    names = [Path(p).relative_to(images).as_posix() for p in found]
    # Sorted, recursive, images only; masks/ and hidden folders left out.
    assert names == ["a.png", "b.jpg", "sub/broken.png", "sub/c.png", "sub/d.tif"]

    manifest = tmp_path / "list.csv"
    manifest.write_text("label,Path\ncrack,imgs/a.png\nx,/abs/elsewhere.png\n", encoding="utf-8")
    got = expand_inputs([manifest, images / "b.jpg", tmp_path / "missing.png"])
    assert got == [
        str(tmp_path / "imgs" / "a.png"),
        "/abs/elsewhere.png",
        str(images / "b.jpg"),
        str(tmp_path / "missing.png"),  # kept: becomes a row with its error
    ]


def test_expand_inputs_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        expand_inputs([tmp_path / "empty"])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.png,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no 'path' column.*file, label"):
        expand_inputs([bad])
    hole = tmp_path / "hole.csv"
    hole.write_text("path\na.png\n\n ,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3 has an empty 'path'"):
        expand_inputs([hole])


def test_predict_batch_csv(ckpt: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "res" / "out.csv"
    seen: list[tuple[int, int]] = []
    result = predict_batch(
        ckpt, [images], out=out, batch_size=2, progress=lambda d, t: seen.append((d, t))
    )
    assert (result.n, result.failed, result.out) == (5, 1, out)
    assert seen[0] == (0, 5) and seen[-1] == (5, 5) and len(seen) == 6
    with open(out, newline="", encoding="utf-8") as fp:
        rows = list(csv.DictReader(fp))
        header = list(rows[0])
    assert header == ["path", "label", "p_crack", "p_no_crack", "threshold", "error"]
    assert header == prediction_columns(CLASSES)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "broken.png" in by_name["broken.png"]["error"]
    assert by_name["broken.png"]["label"] == "" and by_name["broken.png"]["p_crack"] == ""
    good = by_name["a.png"]
    assert good["error"] == "" and good["label"] in CLASSES
    assert float(good["p_crack"]) + float(good["p_no_crack"]) == pytest.approx(1.0, abs=2e-6)
    assert float(good["threshold"]) == pytest.approx(0.4)
    assert not list(out.parent.glob(".*.tmp"))  # the temporary file was renamed away


def test_predict_batch_json_and_overwrite(ckpt: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    predict_batch(ckpt, [images / "a.png", images / "sub" / "broken.png"], out=out)
    records = json.loads(out.read_text(encoding="utf-8"))
    assert [Path(r["path"]).name for r in records] == ["a.png", "broken.png"]
    assert set(records[0]) == set(Prediction("", None, None).to_dict())
    assert records[1]["error"] and records[1]["label"] is None
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_batch(ckpt, [images / "b.jpg"], out=out)
    assert out.read_bytes() == before
    predict_batch(ckpt, [images / "b.jpg"], out=out, overwrite=True)
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 1
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        predict_batch(ckpt, [images], out=tmp_path / "out.xlsx")


def test_predict_batch_without_out_keeps_records(predictor: Predictor, images: Path) -> None:
    result = predict_batch(predictor, [images / "a.png", images / "b.jpg"])
    assert result.out is None and result.failed == 0
    assert [Path(p.path).name for p in result.predictions] == ["a.png", "b.jpg"]


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_predict_exit_codes(ckpt: Path, images: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.csv"
    assert main(["predict", str(ckpt), str(images), "--out", str(out), "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert "1 of 5 image(s) could not be read" in err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 6

    # Refuses to overwrite; the message names the file and the flag.
    assert main(["predict", str(ckpt), str(images / "a.png"), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err

    ok = tmp_path / "ok.csv"
    assert main(["predict", str(ckpt), str(images / "a.png"), "--out", str(ok)]) == 0


def test_cli_predict_prints_a_table(ckpt: Path, images: Path, capsys) -> None:
    assert main(["predict", str(ckpt), str(images / "a.png"), str(images / "b.jpg")]) == 0
    out = capsys.readouterr().out
    assert "p_crack" in out and "a.png" in out and "b.jpg" in out
    assert "crack" in out


def test_cli_predict_usage_errors(ckpt: Path, images: Path, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path / "none.pt"), str(images)]) == 2
    err = capsys.readouterr().err
    assert "none.pt" in err and "predicting" not in err  # an error, no progress bar
    (tmp_path / "e").mkdir()
    assert main(["predict", str(ckpt), str(tmp_path / "e")]) == 2
    assert "holds no image files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse's own usage error, exit code 2
        main(["predict", str(ckpt), str(tmp_path), "--batch-size", "0"])
    assert usage.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_tta_averages_the_logits_of_flipped_views(tmp_path: Path) -> None:
    from fracturekit.models import VIEW_OPS, view_logits

    two = Predictor.from_checkpoint(make_checkpoint(tmp_path / "tta2.pt", tta=2))
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        plain = two.model(x)
        mirrored = two.model(x.flip(-1))
    assert two.tta == 2
    torch.testing.assert_close(two.logits(x), (plain + mirrored) / 2, atol=1e-5, rtol=1e-5)
    proba = two.predict_proba(x)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    # Eight views of an image that is symmetric under all of them give that image's logits.
    sym = torch.rand(1, 3, 32, 32)
    sym = sum(op(sym) for op in VIEW_OPS) / 8
    f = lambda t: t.flatten(1)[:, :5]  # noqa: E731 - any function of the pixels
    torch.testing.assert_close(view_logits(f, sym, 8), f(sym))
    with pytest.raises(ValueError, match="one of 1, 2, 4, 8"):
        view_logits(f, x, 3)
    with pytest.raises(ValueError, match="square"):
        view_logits(f, torch.randn(1, 3, 32, 40), 8)
    # An old checkpoint without the key means one view.
    assert Predictor.from_checkpoint(make_checkpoint(tmp_path / "plain.pt")).tta == 1


# --------------------------------------------------------------------------------------------
# deciding at a prior (`--prior`), from the validation scores a checkpoint stores


def _validation(n: int = 300, classes: int = 2, seed: int = 0) -> dict[str, list]:
    """Validation labels and probabilities as training stores them; class 0 scores high on
    column 0 (``crack``, the positive class of CLASSES)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"labels": labels.tolist(), "probabilities": proba.tolist()}


def test_prior_sets_the_threshold_from_stored_validation(tmp_path: Path) -> None:
    from fracturekit.calibration import threshold_at_prior
    from fracturekit.models import load_checkpoint

    val = _validation()
    ckpt = make_checkpoint(tmp_path / "v.pt", validation=val, config={"threshold_metric": "f1"})
    # The stored validation scores survive the checkpoint round trip.
    assert load_checkpoint(ckpt)[1]["validation"] == val
    expected = threshold_at_prior(val["labels"], np.array(val["probabilities"]), 0, 0.03)
    rare = Predictor.from_checkpoint(ckpt, prior=0.03)
    assert rare.threshold == pytest.approx(expected) and rare.threshold > 0.5 > 0.4
    assert rare.prior == 0.03 and rare.describe()["prior"] == 0.03
    # How firmly the stored validation scores set that threshold.
    support = rare.prior_support
    assert support is not None and support["validation_negatives"] + support[
        "validation_positives"
    ] == len(val["labels"])
    assert support["negatives_at_or_above"] == sum(
        1
        for y, p in zip(val["labels"], val["probabilities"], strict=True)
        if y == 1 and p[0] >= expected
    )
    preds = rare.predict_images([noise_image(i) for i in range(4)])
    for pred in preds:
        assert pred.threshold == pytest.approx(expected)
        assert pred.label == ("crack" if pred.probabilities["crack"] >= expected else "no_crack")
    # CLASS=P means the same for a binary task; None restores the stored threshold.
    assert Predictor.from_checkpoint(ckpt, prior={"crack": 0.03}).threshold == rare.threshold
    assert rare.with_prior(None).threshold == pytest.approx(0.4) and rare.prior is None
    assert rare.prior_support is None
    # A target recall does not depend on prevalence.
    screen = make_checkpoint(tmp_path / "s.pt", validation=val, config={"target_recall": 0.9})
    ts = {Predictor.from_checkpoint(screen, prior=p).threshold for p in (0.03, 0.5)}
    assert len(ts) == 1


def test_prior_needs_stored_validation(ckpt: Path, images: Path, capsys) -> None:
    with pytest.raises(ValueError, match=r"model.pt: stores no validation scores.*retrain"):
        Predictor.from_checkpoint(ckpt, prior=0.03)
    assert main(["predict", str(ckpt), str(images), "--prior", "0.03"]) == 2
    assert "pass no prior" in capsys.readouterr().err


def test_checkpoint_default_prior_and_cli(tmp_path: Path, images: Path, capsys) -> None:
    val = _validation()
    stored = make_checkpoint(tmp_path / "d.pt", validation=val, config={"prior": 0.1})
    explicit = Predictor.from_checkpoint(make_checkpoint(tmp_path / "e.pt", validation=val))
    default = Predictor.from_checkpoint(stored)
    assert default.prior == 0.1
    assert default.threshold == pytest.approx(explicit.with_prior(0.1).threshold)
    out = tmp_path / "rare.csv"
    assert main(["predict", str(stored), str(images), "--prior", "0.03", "--out", str(out)]) == 1
    rows = [r for r in csv.DictReader(out.open()) if not r["error"]]
    want = explicit.with_prior(0.03).threshold
    assert rows and all(float(r["threshold"]) == pytest.approx(want, abs=1e-6) for r in rows)
    # The run says the threshold and how many validation cases set it.
    support = explicit.prior_support
    err = " ".join(capsys.readouterr().err.split())
    assert f"decided when its probability is at least {want:.4f}: decided for 3% positives" in err
    assert (
        f"{support['negatives_at_or_above']} of {support['validation_negatives']} negatives" in err
    )


def test_multiclass_prior_moves_the_probabilities(tmp_path: Path) -> None:
    from fracturekit.calibration import adjust_to_priors, class_frequencies

    val = _validation(classes=3)
    ckpt = make_checkpoint(tmp_path / "m.pt", num_classes=3, validation=val)
    plain = Predictor.from_checkpoint(ckpt)
    shifted = Predictor.from_checkpoint(ckpt, prior={"type0": 0.9})
    base = class_frequencies(val["labels"], 3)
    new = np.r_[0.9, 0.1 * base[1:] / base[1:].sum()]
    x = torch.stack([plain.preprocess(noise_image(i)) for i in range(3)])
    np.testing.assert_allclose(
        shifted.predict_proba(x), adjust_to_priors(plain.predict_proba(x), base, new), atol=1e-6
    )
    assert shifted.prior == pytest.approx(dict(zip(shifted.classes, new, strict=True)))
    with pytest.raises(ValueError, match="CLASS=P"):
        Predictor.from_checkpoint(ckpt, prior=0.2)


def test_onnx_metadata_carries_the_validation_scores(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from fracturekit.export import export_onnx
    from fracturekit.predict import ONNX_META_KEY

    val = _validation(60)
    ckpt = make_checkpoint(tmp_path / "model.pt", validation=val)
    export_onnx(ckpt, tmp_path / "model.onnx")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(props[ONNX_META_KEY])["validation"] == val
    onnx_prior = Predictor.from_checkpoint(tmp_path / "model.onnx", prior=0.03)
    assert onnx_prior.backend == "onnx"
    assert onnx_prior.threshold == Predictor.from_checkpoint(ckpt, prior=0.03).threshold
    assert onnx_prior.prior_support == Predictor.from_checkpoint(ckpt, prior=0.03).prior_support


def test_serve_decides_at_the_prior(tmp_path: Path, ckpt: Path, monkeypatch, capsys) -> None:
    from fastapi.testclient import TestClient

    from fracturekit.serve.app import ENV_CHECKPOINT, ENV_PRIOR, create_app_from_env

    val = _validation()
    with_val = make_checkpoint(tmp_path / "v.pt", validation=val)
    want = Predictor.from_checkpoint(with_val, prior=0.03).threshold
    monkeypatch.setenv(ENV_CHECKPOINT, str(with_val))
    monkeypatch.setenv(ENV_PRIOR, "0.03")
    with TestClient(create_app_from_env(), base_url="http://127.0.0.1") as client:
        model = client.get("/model").json()
    assert model["prior"] == 0.03 and model["threshold"] == pytest.approx(want)
    support = Predictor.from_checkpoint(with_val, prior=0.03).prior_support
    assert model["prior_support"]["negatives_at_or_above"] == support["negatives_at_or_above"]
    assert model["prior_support"]["precision_range"] == pytest.approx(support["precision_range"])
    # fracturekit serve refuses a prior the checkpoint cannot decide at, before starting.
    assert main(["serve", str(ckpt), "--prior", "0.03"]) == 2
    assert "stores no validation scores" in capsys.readouterr().err


def test_view_maps_turns_each_view_back() -> None:
    from fracturekit.config import INVERSE_VIEWS
    from fracturekit.models import VIEW_OPS, view_maps

    x = torch.randn(2, 3, 16, 16)
    # Each inverse undoes its view.
    for op, k in zip(VIEW_OPS, INVERSE_VIEWS, strict=True):
        torch.testing.assert_close(VIEW_OPS[k](op(x)), x)
    # A pixel-wise map (equivariant under every view) comes back unchanged at 8 views.
    pixelwise = lambda t: t[:, :1] * 2 - t[:, 1:2]  # noqa: E731
    torch.testing.assert_close(view_maps(pixelwise, x, 8), pixelwise(x))
    # A map that is not equivariant (a fixed ramp added) is averaged over the turned-back views.
    ramp = torch.arange(16.0).view(1, 1, 1, 16)
    shifted = lambda t: pixelwise(t) + ramp  # noqa: E731
    expect = (
        sum(
            VIEW_OPS[k](shifted(op(x)))
            for op, k in zip(VIEW_OPS[:4], INVERSE_VIEWS[:4], strict=True)
        )
        / 4
    )
    torch.testing.assert_close(view_maps(shifted, x, 4), expect)
    assert not torch.allclose(view_maps(shifted, x, 4), shifted(x))
    with pytest.raises(ValueError, match="square"):
        view_maps(pixelwise, torch.randn(1, 3, 16, 32), 8)
