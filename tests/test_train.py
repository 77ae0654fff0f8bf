"""Training: every option on tiny generated data (32-48 px images, tiny from-scratch models)."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from torch import nn

from fracturekit.cli import build_parser, main
from fracturekit.config import (
    HELP,
    ConfigError,
    TrainConfig,
    packaged_configs,
    resolve_config,
)
from fracturekit.models import VIEW_OPS, load_checkpoint, read_checkpoint
from fracturekit.train import HISTORY_COLUMNS, TrainError, build_cache, train
from fracturekit.train._ema import averaged_weights, build_ema, set_horizon

SRC = Path(__file__).resolve().parents[1] / "src"


# --------------------------------------------------------------------------------------------
# Tiny data


def _image(rng: np.random.Generator, size: int, crack: bool) -> Image.Image:
    arr = rng.normal(150, 20, (size, size, 3)).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    if crack:
        draw = ImageDraw.Draw(im)
        x0, x1 = (int(v) for v in rng.integers(0, size, 2))
        draw.line([(x0, 0), (x1, size - 1)], fill=(30, 30, 30), width=max(2, size // 16))
    return im


def make_data(
    root: Path,
    n: int = 16,
    size: int = 32,
    classes: tuple[str, ...] = ("crack", "no_crack"),
    counts: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """``root/<class>/*.png``; class ``crack`` (and any class but ``no_*``) gets dark lines."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range((counts or {}).get(name, n)):
            im = _image(rng, size, crack=not name.startswith("no"))
            if len(classes) > 2:  # multi-class: a class-specific tint
                arr = np.asarray(im).copy()
                arr[..., k % 3] = np.clip(arr[..., k % 3].astype(int) + 60, 0, 255)
                im = Image.fromarray(arr)
            im.save(folder / f"{name}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data") / "tiny", n=16)


def cfg_for(data: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        backbone="simple_cnn",
        pretrained=False,
        img_size=32,
        epochs=2,
        batch_size=8,
        augment="none",
        freeze="none",
        early_stop=None,
        val_fraction=0.25,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def read_history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------------
# Configs and flags


def test_every_packaged_config_validates() -> None:
    configs = packaged_configs()
    assert {
        "default",
        "seed1_vgg19",
        "seed2_bone_xray",
        "seed3_fracture_types",
        "seed4_mura_densenet",
        "seed5_concrete_lenet",
        "fracatlas",
        "default_segment",
        "fracatlas_segment",
        "survey_segment",
    } <= set(configs)
    for name, path in configs.items():
        cfg = resolve_config({}, name)  # by name, as --config NAME finds it
        assert cfg == resolve_config({}, path)
        from fracturekit.models import get_spec

        get_spec(cfg.backbone)
    seed5 = resolve_config({}, "seed5_concrete_lenet")
    assert (seed5.backbone, seed5.img_size, seed5.balance) == ("lenet", 227, "undersample:3")
    # The survey set-up is the default segmenter, averaged over three trainings.
    survey = resolve_config({}, "survey_segment")
    assert survey.members == 3
    assert dataclasses.replace(survey, members=1) == resolve_config({}, "default_segment")
    fracture = resolve_config({}, "fracatlas_segment")
    assert (fracture.task, fracture.tile, fracture.balance) == ("segment", 224, "sampler")
    assert 0 < fracture.tile_focus <= 1
    seed1 = resolve_config({}, "seed1_vgg19")
    assert (seed1.optimizer, seed1.lr, seed1.momentum, seed1.epochs) == ("sgd", 1e-4, 0.9, 20)
    assert "GPU" in (configs["seed1_vgg19"]).read_text()
    assert resolve_config({}, "seed2_bone_xray").channels == 1
    assert len(resolve_config({}, "seed4_mura_densenet").hidden) == 3
    # The X-ray set-up is benchmarks/fracatlas.py's (it has no settings of its own on top).
    atlas = resolve_config({}, "fracatlas")
    assert (atlas.img_size, atlas.cache_views, atlas.early_stop) == (448, 2, 4)


def test_unknown_config_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="packaged"):
        resolve_config({}, "no_such_config")


def test_every_field_is_a_flag_with_help() -> None:
    assert set(HELP) == {f.name for f in dataclasses.fields(TrainConfig)}
    parser = build_parser()
    text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for f in dataclasses.fields(TrainConfig):
        if f.name != "data":
            assert "--" + f.name.replace("_", "-") in text, f.name


def _args(argv: list[str]):
    from fracturekit.cli.train import config_from_args

    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_precedence_defaults_config_file_flags(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("epochs: 7\nlr: 1e-4\nbatch_size: 4\nhidden: [8, 4]\n")
    cfg, out = _args(["DATA", "--out", str(tmp_path / "r"), "--config", str(conf), "--epochs", "3"])
    assert out == tmp_path / "r"
    assert cfg.epochs == 3  # flag beats file
    assert cfg.lr == 1e-4 and cfg.batch_size == 4 and cfg.hidden == [8, 4]  # file beats default
    assert cfg.optimizer == TrainConfig().optimizer  # default
    cfg, _ = _args(
        ["D", "--out", "r", "--balance", "undersample:3", "--hidden", "16,8", "--no-calibrate",
         "--freeze", "train-last", "--train-last", "2", "--early-stop", "none"]
    )  # fmt: skip
    assert cfg.balance == "undersample:3" and cfg.hidden == [16, 8] and cfg.calibrate is False
    assert cfg.train_last == 2 and cfg.early_stop is None
    cfg, _ = _args(["D", "--out", "r", "--config", "seed5_concrete_lenet", "--img-size", "64"])
    assert cfg.backbone == "lenet" and cfg.img_size == 64


def test_bad_option_values_are_refused(tmp_path: Path, capsys) -> None:
    assert main(["train", "D", "--out", str(tmp_path), "--balance", "oversample"]) == 2
    assert "balance" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "D", "--out", str(tmp_path), "--optimizer", "lion"])
    argv = ["train", "D", "--out", str(tmp_path), "--freeze", "train-last", "--train-last", "none"]
    assert main(argv) == 2
    assert "train_last" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The run folder, checkpoints, calibration


def test_cached_run_writes_everything(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = cfg_for(data, freeze="train-last", train_last=1, epochs=3)
    result = train(cfg, run, progress=False)
    assert result.mode == "cached"
    for name in ("model.pt", "last.pt", "config.yaml", "history.csv", "curves.png", "splits.csv"):
        assert (run / name).is_file(), name
    rows = read_history(run)
    assert list(rows[0]) == list(HISTORY_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert result.history[-1]["epoch"] == 3
    # plain tensors and Python values only
    for name in ("model.pt", "last.pt"):
        torch.load(run / name, weights_only=True)
    model, meta = load_checkpoint(run / "model.pt")
    assert meta["classes"] == ["crack", "no_crack"]
    assert meta["positive"] == "crack"
    assert 0.0 <= meta["threshold"] <= 1.0
    assert meta["temperature"] > 0
    assert meta["temperature"] == result.metrics["temperature"]
    for key in ("val_loss", "accuracy", "f1", "roc_auc", "threshold", "temperature"):
        assert key in meta["metrics"], key
    assert meta["config"]["freeze"] == "train-last"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 3 and saved["data"] == str(data.resolve())
    load_checkpoint(run / "last.pt")  # last.pt is a usable checkpoint too
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 2)


def test_cached_equals_end_to_end_features(data: Path) -> None:
    """The cache holds exactly what the frozen prefix gives, per view (flip of the input)."""
    from torch.utils.data import DataLoader

    from fracturekit.data import ImageDataset, build_transforms, load_dataset
    from fracturekit.models import apply_freeze, build_model

    splits = load_dataset(data, val_fraction=0.0)
    model = build_model("simple_cnn", 2, pretrained=False).eval()
    apply_freeze(model, "train-last", 1)
    tf = build_transforms(32, [0.5] * 3, [0.5] * 3)
    ds = ImageDataset(splits.train[:6], tf)
    cache = build_cache(model, DataLoader(ds, batch_size=4), 6, start=3, pooled=False, views=4)
    x = torch.stack([ds[i][0] for i in range(6)])
    with torch.no_grad():
        for v in range(4):
            expect = model.forward_until(VIEW_OPS[v](x), 3)
            assert torch.allclose(cache.data[v], expect, atol=1e-5)
        pooled = build_cache(model, DataLoader(ds, batch_size=4), 6, start=4, pooled=True)
        assert torch.allclose(pooled.data[0], model.features(x), atol=1e-5)
    flipped = tf(Image.open(splits.train[0].path).transpose(Image.Transpose.FLIP_LEFT_RIGHT))[0]
    assert torch.allclose(VIEW_OPS[1](x[:1])[0], flipped, atol=1e-5)


@pytest.mark.parametrize(
    "freeze, train_last, augment, mode",
    [
        ("all-but-head", None, "none", "cached"),
        ("train-last", 2, "none", "cached"),
        ("train-last", 1, "default", "end-to-end"),
        ("none", None, "none", "end-to-end"),
    ],
)
@pytest.mark.slow
def test_freeze_policies_train_only_what_they_should(
    data: Path, tmp_path: Path, freeze: str, train_last: int | None, augment: str, mode: str
) -> None:
    from fracturekit.models import build_model

    cfg = cfg_for(data, freeze=freeze, train_last=train_last, augment=augment, lr=0.05)
    torch.manual_seed(cfg.seed)
    before = build_model("simple_cnn", 2, pretrained=False, dropout=cfg.dropout).state_dict()
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.mode == mode
    after = read_checkpoint(result.last_checkpoint)["state_dict"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    blocks = {"none": 0, "all-but-head": 4, "train-last": 4 - (train_last or 0)}[freeze]
    assert any(k.startswith("head.") for k in changed)
    for i in range(4):
        stage = {k for k in before if k.startswith(f"backbone.stages.{i}.")}
        if i < blocks:  # frozen: weights and BatchNorm running statistics untouched
            assert not (stage & changed), (i, sorted(stage & changed))
        else:
            assert stage & changed, i


@pytest.mark.parametrize("balance", ["weights", "sampler", "undersample:1"])
@pytest.mark.slow
def test_balance_modes(tmp_path: Path, balance: str) -> None:
    root = make_data(tmp_path / "imb", counts={"crack": 6, "no_crack": 18})
    for mode_kw in ({"freeze": "train-last", "train_last": 1}, {"augment": "default"}):
        run = tmp_path / f"run-{mode_kw.get('augment', 'cached')}"
        cfg = cfg_for(root, balance=balance, **mode_kw)
        result = train(cfg, run, progress=False)
        assert len(result.history) == 2
        with (run / "splits.csv").open() as fh:
            train_rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
        counts = {c: sum(r["label"] == c for r in train_rows) for c in ("crack", "no_crack")}
        if balance == "undersample:1":
            assert counts["crack"] == counts["no_crack"]
        else:
            assert counts["no_crack"] > counts["crack"]


def test_balance_weights_and_sampler_change_the_objective(tmp_path: Path) -> None:
    """Class weights give the minority class weight > 1; the sampler draws it as often."""
    from fracturekit.train._sampling import epoch_order

    weights = torch.tensor([1.0 / 6] * 6 + [1.0 / 18] * 18, dtype=torch.double)
    order = torch.cat([epoch_order(24, seed=0, epoch=e, weights=weights) for e in range(50)])
    minority = (order < 6).float().mean().item()
    assert 0.4 < minority < 0.6


@pytest.mark.parametrize(
    "optimizer, schedule", [("sgd", "step"), ("adamw", "cosine"), ("adam", "none")]
)
@pytest.mark.slow
def test_optimizers_and_schedules(data: Path, tmp_path: Path, optimizer: str, schedule: str):
    cfg = cfg_for(data, optimizer=optimizer, schedule=schedule, epochs=4, lr=0.01)
    cfg = dataclasses.replace(cfg, freeze="train-last", train_last=1)
    result = train(cfg, tmp_path / "run", progress=False)
    lrs = [r["lr"] for r in result.history]
    if schedule == "none":
        assert lrs == [0.01] * 4
    elif schedule == "step":  # x0.1 every epochs // 3 = 1 epoch
        assert lrs == pytest.approx([0.01, 0.001, 0.0001, 0.00001])
    else:
        assert lrs[0] == 0.01 and lrs[0] > lrs[1] > lrs[2] > lrs[3] > 0
    state = torch.load(result.last_checkpoint, weights_only=True)["train_state"]
    kind = {"sgd": "momentum_buffer", "adamw": "exp_avg", "adam": "exp_avg"}[optimizer]
    assert any(kind in s for s in state["optimizer"]["state"].values())


@pytest.mark.slow
def test_early_stopping_triggers(data: Path, tmp_path: Path) -> None:
    # A learning rate so small that the validation loss cannot improve: stop after patience.
    cfg = cfg_for(data, epochs=10, early_stop=2, lr=1e-12, optimizer="sgd", schedule="none")
    result = train(cfg, tmp_path / "run", progress=False)
    assert len(result.history) == 3
    assert result.metrics["stop_reason"] == "early_stop"
    assert result.metrics["best_epoch"] == 1
    assert read_checkpoint(result.checkpoint)["meta"]["epoch"] == 1


@pytest.mark.slow
def test_threshold_target_recall_and_temperature(data: Path, tmp_path: Path) -> None:
    cfg = cfg_for(data, target_recall=1.0, freeze="train-last", train_last=1, epochs=3)
    result = train(cfg, tmp_path / "run", progress=False)
    meta = read_checkpoint(result.checkpoint)["meta"]
    assert meta["metrics"]["recall"] == 1.0
    assert meta["threshold"] == result.metrics["threshold"]
    uncal = train(
        dataclasses.replace(cfg, calibrate=False, target_recall=None),
        tmp_path / "run2",
        progress=False,
    )
    assert read_checkpoint(uncal.checkpoint)["meta"]["temperature"] == 1.0


@pytest.mark.slow
def test_multiclass_and_label_smoothing(tmp_path: Path) -> None:
    root = make_data(tmp_path / "mc", n=10, classes=("a", "b", "c"))
    cfg = cfg_for(root, label_smoothing=0.1, freeze="train-last", train_last=2, epochs=3, lr=0.01)
    result = train(cfg, tmp_path / "run", progress=False)
    model, meta = load_checkpoint(result.checkpoint)
    assert meta["classes"] == ["a", "b", "c"] and meta["num_classes"] == 3
    assert meta["positive"] is None
    assert {"accuracy", "f1", "roc_auc"} <= set(meta["metrics"])


def test_no_validation_data(data: Path, tmp_path: Path) -> None:
    result = train(cfg_for(data, val_fraction=0.0), tmp_path / "run", progress=False)
    assert result.history[-1]["val_loss"] is None
    assert read_checkpoint(result.checkpoint)["meta"]["threshold"] == 0.5
    assert any("no validation" in n for n in result.notes)


def test_grayscale_and_hidden_layers(data: Path, tmp_path: Path) -> None:
    cfg = cfg_for(data, channels=1, hidden=[16, 8], dropout=0.1, augment="default")
    _, meta = load_checkpoint(train(cfg, tmp_path / "run", progress=False).checkpoint)
    assert meta["in_chans"] == 1 and meta["hidden"] == [16, 8] and len(meta["mean"]) == 1


@pytest.mark.slow
def test_cache_views_and_precision(data: Path, tmp_path: Path) -> None:
    cfg = cfg_for(data, freeze="all-but-head", cache_views=8)
    assert train(cfg, tmp_path / "v8", progress=False).mode == "cached"
    with pytest.raises(TrainError, match="fp16"):
        train(cfg_for(data, precision="fp16"), tmp_path / "fp16", progress=False)
    result = train(cfg_for(data, precision="bf16"), tmp_path / "bf16", progress=False)
    assert any("bf16" in n for n in result.notes)


def test_refuses_to_overwrite_a_run(data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    cfg = cfg_for(data, epochs=1)
    train(cfg, run, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, run, progress=False)
    argv = ["train", str(data), "--out", str(run), "--backbone", "simple_cnn", "--img-size",
            "32", "--no-pretrained", "--epochs", "1", "--augment", "none", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert (run / "report.html").is_file()


def test_cli_evaluates_the_test_split(tmp_path: Path, capsys) -> None:
    root = tmp_path / "split"
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        make_data(root / split, n=n, seed=len(split))
    run = tmp_path / "run"
    argv = ["train", str(root), "--out", str(run), "--backbone", "simple_cnn", "--img-size",
            "32", "--no-pretrained", "--epochs", "2", "--augment", "none", "--freeze",
            "train-last", "--train-last", "1", "--device", "cpu", "--prior", "0.2"]  # fmt: skip
    assert main(argv) == 0
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["source"]["split"] == "all"
    # train --prior: the test split is decided for that prevalence, and the run says so.
    assert metrics["prior"] == 0.2 and metrics["source"]["threshold_from"] == "prior"
    out = capsys.readouterr().out
    assert "test (12 images): accuracy" in out and "decided for 20% positives" in out
    support = metrics["prior_support"]
    assert support["validation_negatives"] + support["validation_positives"] == 12
    assert (
        f"{support['negatives_at_or_above']} of {support['validation_negatives']} negatives" in out
    )
    assert (run / "test.csv").is_file() and (run / "report.html").is_file()


# --------------------------------------------------------------------------------------------
# Resume after a real interruption, DDP


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path: Path) -> None:
    root = make_data(tmp_path / "d", n=24, size=48)
    run = tmp_path / "run"
    epochs = 8
    argv = [sys.executable, "-m", "fracturekit", "train", str(root), "--out", str(run),
            "--backbone", "simple_cnn", "--img-size", "48", "--no-pretrained", "--epochs",
            str(epochs), "--augment", "default", "--freeze", "none", "--batch-size", "4",
            "--early-stop", "none", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (run / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(run / "last.pt", weights_only=True)["train_state"]["epoch"]
    assert 1 <= done < epochs, "the run finished before it could be interrupted"
    # the folder holds a model now: a plain re-run is refused, --resume continues
    again = subprocess.run(argv, env=_env(), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "fracturekit", "train", "--resume", str(run)],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} after epoch {done}" in resumed.stdout.replace("\n", " ")
    epochs_seen = [int(r["epoch"]) for r in read_history(run)]
    assert epochs_seen == list(range(1, epochs + 1))  # continued, nothing duplicated
    state = torch.load(run / "last.pt", weights_only=True)["train_state"]
    assert state["epoch"] == epochs and state["finished"]
    meta = read_checkpoint(run / "model.pt")["meta"]
    assert meta["metrics"]["epochs_run"] == epochs and "threshold" in meta["metrics"]


@pytest.mark.slow
def test_resume_in_process_continues_and_extends(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = cfg_for(data, epochs=2, freeze="train-last", train_last=1)
    train(cfg, run, progress=False)
    more = dataclasses.replace(cfg, epochs=4, resume=str(run))
    result = train(more, run, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    with pytest.raises(TrainError, match="nothing to resume"):
        train(dataclasses.replace(cfg, resume=str(tmp_path / "nope")), tmp_path / "x")


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    root = make_data(tmp_path / "d", n=12)
    run = tmp_path / "run"
    for mode in (["--augment", "none", "--freeze", "train-last", "--train-last", "1"],
                 ["--augment", "default", "--freeze", "none"]):  # fmt: skip
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--standalone", "-m", "fracturekit", "train", str(root), "--out",
                str(run), "--overwrite", "--backbone", "simple_cnn", "--img-size", "32",
                "--no-pretrained", "--epochs", "2", "--batch-size", "4", "--device", "cpu",
                *mode]  # fmt: skip
        proc = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "x 2 processes" in proc.stdout
        assert proc.stdout.count("epoch   1/2") == 1  # rank 0 alone prints
        assert [int(r["epoch"]) for r in read_history(run)] == [1, 2]  # written once
        model, meta = load_checkpoint(run / "model.pt")
        assert meta["metrics"]["world_size"] == 2
        with (run / "splits.csv").open() as fh:
            n_val = sum(r["split"] == "val" for r in csv.DictReader(fh))
        assert meta["metrics"]["n"] == n_val  # validation gathered from both ranks
        # ... and stored in the order of the validation samples
        labels = [meta["classes"].index(r["label"]) for r in _val_rows(run)]
        assert meta["validation"]["labels"] == labels and len(set(labels)) == 2
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_default_yaml_is_the_built_in_default() -> None:
    assert resolve_config({}, "default") == TrainConfig().validate()


def test_trunk_lr_scale_gives_the_backbone_a_lower_rate() -> None:
    from fracturekit.models import apply_freeze, build_model
    from fracturekit.train._optim import build_optimizer

    model = build_model("simple_cnn", 2, pretrained=False)
    apply_freeze(model, "train-last", train_last=1)
    cfg = TrainConfig(data="x", lr=1e-3, trunk_lr_scale=0.1, weight_decay=0.01)
    opt = build_optimizer(cfg, model)
    head = {id(p) for p in model.head.parameters()}
    trunk = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert trunk and head
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= head or ids <= trunk  # never mixed
        expected = 1e-3 if ids <= head else 1e-4
        assert group["lr"] == pytest.approx(expected)
        assert group["weight_decay"] == (0.01 if group["params"][0].ndim > 1 else 0.0)
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == head | trunk  # every trainable parameter, nothing frozen
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # the head first: history logs it
    with pytest.raises(ConfigError, match="trunk_lr_scale"):
        TrainConfig(data="x", trunk_lr_scale=0).validate()


def test_tta_views_are_fitted_on_validation_and_used_by_the_predictor(
    data: Path, tmp_path: Path
) -> None:
    """With tta=4 the stored validation loss (and so the threshold and temperature) comes from
    the mean logits of four flipped views, exactly what the Predictor then computes."""
    import torch.nn.functional as F

    from fracturekit.io import read_image
    from fracturekit.predict import Predictor

    run = tmp_path / "tta"
    train(cfg_for(data, tta=4, epochs=2), run, progress=False)
    meta = read_checkpoint(run / "model.pt")["meta"]
    assert meta["tta"] == 4 and meta["config"]["tta"] == 4
    predictor = Predictor.from_checkpoint(run / "model.pt")
    assert predictor.tta == 4 and predictor.describe()["tta"] == 4
    with (run / "splits.csv").open(newline="") as fh:
        val = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    batch = torch.stack([predictor.preprocess(read_image(r["path"])) for r in val])
    labels = torch.tensor([predictor.classes.index(r["label"]) for r in val])
    logits = predictor.logits(batch)
    assert F.cross_entropy(logits, labels).item() == pytest.approx(
        meta["metrics"]["val_loss"], rel=1e-4
    )
    predictor.meta["tta"] = 1  # one view gives other logits: the averaging is real
    assert not torch.allclose(predictor.logits(batch), logits, atol=1e-4)
    with pytest.raises(ConfigError, match="tta"):
        TrainConfig(data="x", tta=3).validate()


# --------------------------------------------------------------------------------------------
# The run's result, the validation outputs in model.pt, resume checks


def test_result_names_the_best_and_the_last_checkpoint(data: Path, tmp_path: Path) -> None:
    import fracturekit.train

    result = train(cfg_for(data, epochs=1), tmp_path / "run", progress=False)
    assert result.checkpoint == tmp_path / "run" / "model.pt"
    assert result.last_checkpoint == tmp_path / "run" / "last.pt"
    assert "train_state" not in torch.load(result.checkpoint, weights_only=True)
    assert "train_state" in torch.load(result.last_checkpoint, weights_only=True)
    assert "best_checkpoint" not in {f.name for f in dataclasses.fields(result)}
    with pytest.warns(DeprecationWarning, match="checkpoint"):
        assert result.best_checkpoint == result.checkpoint
    # VIEW_OPS lives in fracturekit.models only
    assert not hasattr(fracturekit.train, "VIEW_OPS")


def test_the_classify_task_is_a_row_the_loop_calls(data: Path, tmp_path: Path, monkeypatch):
    from fracturekit.train import TASKS, ClassifyTask, SegmentTask

    assert set(TASKS) == {"classify", "segment"} and isinstance(TASKS["classify"], ClassifyTask)
    assert isinstance(TASKS["segment"], SegmentTask)
    calls: list[str] = []
    task = TASKS["classify"]
    for name in ("to_device", "validate", "calibrate", "validation_record"):
        original = getattr(task, name)

        def spy(*args, _name=name, _original=original, **kw):
            calls.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(task, name, spy)
    train(cfg_for(data, epochs=1), tmp_path / "run", progress=False)
    assert {"to_device", "validate", "calibrate", "validation_record"} <= set(calls)


def _val_rows(run: Path) -> list[dict[str, str]]:
    with (run / "splits.csv").open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == "val"]


def test_model_pt_stores_the_validation_labels_and_probabilities(
    data: Path, tmp_path: Path
) -> None:
    import json

    import onnx

    from fracturekit.export import export_onnx
    from fracturekit.io import read_image
    from fracturekit.predict import ONNX_META_KEY, Predictor

    run = tmp_path / "run"
    train(cfg_for(data, tta=2, freeze="train-last", train_last=1, epochs=2), run, progress=False)
    _, meta = load_checkpoint(run / "model.pt")  # weights_only
    stored = meta["validation"]
    predictor = Predictor.from_checkpoint(run / "model.pt")
    assert predictor.temperature != 1.0 and predictor.tta == 2
    rows = _val_rows(run)
    assert stored["labels"] == [predictor.classes.index(r["label"]) for r in rows]
    batch = torch.stack([predictor.preprocess(read_image(r["path"])) for r in rows])
    expected = predictor.predict_proba(batch)
    got = np.array(stored["probabilities"])
    assert got.shape == expected.shape == (len(rows), 2)
    assert np.abs(got - expected).max() < 1e-5
    assert all(p == round(p, 6) for row in stored["probabilities"] for p in row)
    export_onnx(run / "model.pt", tmp_path / "model.onnx")
    props = {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}
    assert json.loads(props[ONNX_META_KEY])["validation"] == stored


def test_no_validation_stores_no_validation_outputs(data: Path, tmp_path: Path) -> None:
    result = train(cfg_for(data, val_fraction=0.0, epochs=1), tmp_path / "run", progress=False)
    assert "validation" not in read_checkpoint(result.checkpoint)["meta"]


@pytest.fixture(scope="module")
def finished_run(data: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(cfg_for(data, epochs=1), run, progress=False)
    return run


def _damaged_copy(finished_run: Path, tmp_path: Path, damage: str) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    last = run / "last.pt"
    if damage == "missing-key":
        obj = torch.load(last, weights_only=True)
        del obj["train_state"]["scheduler"]
        torch.save(obj, last)
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        last.write_bytes(b"this is not a checkpoint\n" * 10)
    return run


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing-key", "training state lacks scheduler"),
        ("empty", "empty file"),
        ("garbage", "not a readable PyTorch checkpoint"),
    ],
)
def test_resume_checks_last_pt_before_the_data(
    finished_run: Path, tmp_path: Path, monkeypatch, capsys, damage: str, message: str
) -> None:
    import fracturekit.data

    run = _damaged_copy(finished_run, tmp_path, damage)

    def no_data(*args, **kw):
        raise AssertionError("the data were loaded before last.pt was checked")

    monkeypatch.setattr(fracturekit.data, "load_dataset", no_data)
    cfg = TrainConfig(**{**yaml.safe_load((run / "config.yaml").read_text()), "resume": str(run)})
    with pytest.raises(TrainError, match=message) as info:
        train(cfg, run, progress=False)
    assert str(run / "last.pt") in str(info.value) and "\n" not in str(info.value)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(run / "last.pt") in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_evaluate_run_needs_a_finished_run(tmp_path: Path) -> None:
    from fracturekit.evaluate import evaluate_run

    with pytest.raises(FileNotFoundError, match="no model.pt"):
        evaluate_run(tmp_path)


@pytest.mark.slow
def test_torchrun_trains_members_in_one_process_group(tmp_path: Path) -> None:
    from fracturekit.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "d", 16, 64, 0, workers=1)
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--standalone", "-m", "fracturekit", "train", str(data), "--out", str(run),
            "--task", "segment", "--no-pretrained", "--img-size", "64", "--tile", "32",
            "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--members", "2"]  # fmt: skip
    proc = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("calibrating the mean of 2 members") == 1  # rank 0 alone
    meta = read_checkpoint(run / "model.pt")["meta"]
    with (run / "splits.csv").open() as fh:
        n_val = sum(r["split"] == "val" for r in csv.DictReader(fh))
    assert meta["members"] == 2 and len(meta["validation"]["labels"]) == n_val
    for i in range(2):
        member = read_checkpoint(run / "members" / str(i) / "model.pt")["meta"]
        assert member["metrics"]["world_size"] == 2 and member["config"]["seed"] == i


# --------------------------------------------------------------------------------------------
# The moving average of the weights (ema_epochs)


@pytest.mark.parametrize("value", [-0.5, 3.5])
def test_ema_epochs_outside_zero_to_epochs_is_refused(value: float) -> None:
    with pytest.raises(ConfigError, match="ema_epochs"):
        TrainConfig(data="x", epochs=3, ema_epochs=value).validate()
    TrainConfig(data="x", epochs=3, ema_epochs=3).validate()  # the bounds themselves pass


def test_no_average_without_ema_epochs() -> None:
    assert build_ema(0.0, nn.Linear(2, 1)) is None


def test_running_mean_first_then_exponential_at_the_horizon() -> None:
    model = nn.Linear(3, 1, bias=False)
    ema = build_ema(1.0, model)
    set_horizon(ema, 1.0, 4)  # one epoch of 4 steps: decay 0.75
    assert ema.decay == pytest.approx(0.75)
    seen = []
    for step in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(float(step * step))
        seen.append(float(step * step))
        ema.update(model, step=step)
        if step == 4:  # (k - 1) / k <= 0.75 up to here: every step so far weighs alike
            mean = torch.full((1, 3), sum(seen) / 4)
            assert torch.allclose(ema.module.weight, mean)
    expected = 0.75 * (sum(seen[:4]) / 4) + 0.25 * seen[4]  # step 5: the horizon's decay
    assert torch.allclose(ema.module.weight, torch.full((1, 3), expected))


def test_averaged_weights_swap_in_and_come_back() -> None:
    model = nn.Linear(2, 2)
    ema = build_ema(1.0, model)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.fill_(7.0)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with averaged_weights(ema, model):
        assert all(torch.all(v == 7.0) for v in model.state_dict().values())
    assert all(torch.equal(own[k], v) for k, v in model.state_dict().items())
    with averaged_weights(None, model):  # no average: nothing moves
        assert all(torch.equal(own[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("augment", ["none", "default"])  # cached and end-to-end training
def test_model_pt_holds_the_average_and_last_pt_both(
    data: Path, tmp_path: Path, augment: str
) -> None:
    cfg = cfg_for(data, ema_epochs=1.0, val_fraction=0.0, augment=augment)
    cfg = dataclasses.replace(cfg, freeze="train-last", train_last=1)
    train(cfg, tmp_path / "run", progress=False)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    state = last["train_state"]["ema"]
    steps = 2 * 4  # 2 epochs of 32 training images in batches of 8
    assert state["step"] == steps and state["decay"] == pytest.approx(1 - 1 / 4)
    saved = read_checkpoint(tmp_path / "run" / "model.pt")["state_dict"]
    trained = [k for k, v in saved.items() if v.is_floating_point()]
    # Without validation every epoch is the best: model.pt is the last epoch's average.
    assert all(torch.equal(saved[k], state["state_dict"][k]) for k in trained)
    assert any(not torch.equal(saved[k], last["state_dict"][k]) for k in trained)


def test_resume_continues_the_average_and_refuses_a_run_without_one(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    cfg = cfg_for(data, ema_epochs=1.0)
    train(cfg, run, progress=False)
    first = torch.load(run / "last.pt", weights_only=True)["train_state"]["ema"]["step"]
    train(dataclasses.replace(cfg, epochs=3, resume=str(run)), run, progress=False)
    again = torch.load(run / "last.pt", weights_only=True)["train_state"]["ema"]["step"]
    assert again == first * 3 // 2  # one more epoch of the same number of steps
    plain = tmp_path / "plain"
    train(cfg_for(data), plain, progress=False)
    with pytest.raises(TrainError, match="no weight average"):
        train(dataclasses.replace(cfg, epochs=3, resume=str(plain)), plain, progress=False)
