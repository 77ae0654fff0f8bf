"""The fast service: micro-batching of /predict, and its ONNX twin of the checkpoint (found
beside it, exported once into the cache, or PyTorch when neither can be had)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fixture_images import noise_image
from fracturekit.cli import main
from fracturekit.export import export_onnx, serving_onnx
from fracturekit.models import build_model, save_checkpoint
from fracturekit.predict import Predictor, graph_runtime
from fracturekit.serve import create_app
from fracturekit.serve._batch import MicroBatcher
from fracturekit.serve._engine import load_predictors

CLASSES = ["crack", "no_crack"]


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("simple_cnn", 2, pretrained=False)
    meta = {"classes": CLASSES, "img_size": 32, "positive": "crack", "threshold": 0.4}
    return save_checkpoint(path, model, meta)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("fast") / "model.pt")


def png(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    noise_image(seed, (40, 36)).save(buf, format="PNG")
    return buf.getvalue()


def upload(data: bytes, name: str = "x.png") -> dict:
    return {"file": (name, data, "image/png")}


# --------------------------------------------------------------------------------------------
# MicroBatcher


def test_requests_waiting_together_run_as_one_batch() -> None:
    gate = threading.Event()
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        gate.wait(10)  # the first batch holds the worker while the others queue up
        return [x * 10 for x in items]

    batcher = MicroBatcher(run, max_batch=4, max_wait_s=0.0).start()
    try:
        first = batcher.submit_future(0)
        while not sizes:
            time.sleep(0.001)
        rest = [batcher.submit_future(i) for i in range(1, 7)]
        gate.set()
        assert [f.result(10) for f in [first, *rest]] == [0, 10, 20, 30, 40, 50, 60]
    finally:
        batcher.close()
    assert sizes == [1, 4, 2]  # bounded by max_batch, in arrival order
    assert batcher.batches == 3 and batcher.mean_batch == pytest.approx(7 / 3)
    assert batcher.pending == 0


def test_a_failed_batch_fails_its_requests_only() -> None:
    def run(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky batch")
        return items

    batcher = MicroBatcher(run, max_batch=1).start()
    try:
        bad, good = batcher.submit_future(13), batcher.submit_future(2)
        with pytest.raises(ValueError, match="unlucky"):
            bad.result(10)
        assert good.result(10) == 2
        assert asyncio.run(batcher.submit(5)) == 5  # the awaitable form
    finally:
        batcher.close()


def test_a_batch_waits_for_company_at_most_max_wait() -> None:
    batcher = MicroBatcher(lambda items: [len(items)] * len(items), max_wait_s=0.2).start()
    try:
        started = time.perf_counter()
        first = batcher.submit_future("a")
        second = batcher.submit_future("b")  # arrives within the first one's wait
        assert first.result(10) == 2 and second.result(10) == 2
        assert time.perf_counter() - started < 5
    finally:
        batcher.close()
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda items: items, max_batch=0)
    with pytest.raises(RuntimeError, match="not started"):
        MicroBatcher(lambda items: items).submit_future(1)


# --------------------------------------------------------------------------------------------
# The ONNX twin


def test_serving_onnx_exports_once_into_the_cache(ckpt: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    made = serving_onnx(ckpt, cache)
    assert made.origin == "exported" and made.path.parent == cache and made.report.passed
    again = serving_onnx(ckpt, cache)
    assert again.origin == "cache" and again.path == made.path
    other = serving_onnx(make_checkpoint(tmp_path / "other.pt", seed=1), cache)
    assert other.path != made.path  # keyed by the checkpoint's contents


def test_serving_onnx_uses_the_exported_file_beside_only_when_it_fits(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "model.pt")
    export_onnx(ckpt, tmp_path / "model.onnx")
    assert serving_onnx(ckpt, tmp_path / "cache").origin == "beside"
    # A model.onnx from another checkpoint (retrained since): left alone, the cache is used.
    make_checkpoint(tmp_path / "model.pt", seed=3)
    twin = serving_onnx(ckpt, tmp_path / "cache")
    assert twin.origin == "exported" and (tmp_path / "model.onnx").exists()


def test_load_predictors_falls_back_to_pytorch_with_the_reason(
    ckpt: Path, monkeypatch, caplog
) -> None:
    import fracturekit.export as export

    predictor, fast = load_predictors(ckpt)
    assert predictor.backend == "torch" and fast.backend == graph_runtime()

    def broken(path, cache=None):
        raise export.ExportError("parity check failed")

    monkeypatch.setattr(export, "serving_onnx", broken)
    with caplog.at_level("WARNING", logger="fracturekit.serve"):
        predictor, fast = load_predictors(ckpt)
    assert predictor.backend == "torch" and fast is None
    assert "parity check failed" in caplog.text
    one, none = load_predictors(ckpt, "torch")
    assert one.backend == "torch" and none is None
    monkeypatch.undo()
    one, none = load_predictors(ckpt, "onnx")  # model.pt: its twin from the cache
    assert one.backend == "onnx" and none is None
    with pytest.raises(ValueError, match="backend"):
        load_predictors(ckpt, "tensorrt")


# --------------------------------------------------------------------------------------------
# The service


def test_default_service_batches_predict_on_onnx_and_explains_on_pytorch(ckpt: Path) -> None:
    pictures = [png(i) for i in range(16)]
    single = Predictor.from_checkpoint(serving_onnx(ckpt).path)
    expected = [
        single.predict_images([Image.open(io.BytesIO(p)).convert("RGB")])[0].probabilities
        for p in pictures
    ]
    app = create_app(ckpt, batch_wait_ms=20)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        model = c.get("/model").json()
        assert model["backend"] == graph_runtime() and model["explain_backend"] == "torch"
        assert model["batching"]["max_batch"] == 32
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda p: c.post("/predict", files=upload(p)).json(), pictures))
        for body, want in zip(bodies, expected, strict=True):
            for k in CLASSES:
                assert body["probabilities"][k] == pytest.approx(want[k], abs=1e-6)
        batching = c.get("/model").json()["batching"]
        assert batching["batches"] < len(pictures) and batching["mean_batch"] > 1
        explained = c.post("/explain?format=json", files=upload(pictures[0])).json()
        assert explained["probabilities"]["crack"] == pytest.approx(expected[0]["crack"], abs=1e-4)
        assert c.post("/predict", files=upload(b"junk")).status_code == 422


def test_batch_size_one_and_bad_batch_options(ckpt: Path, tmp_path: Path) -> None:
    with TestClient(create_app(ckpt, batch_size=1), base_url="http://127.0.0.1") as c:
        assert c.post("/predict", files=upload(png(1))).status_code == 200
        assert c.get("/model").json()["batching"]["mean_batch"] == 1
    with pytest.raises(ValueError, match="batch_size"):
        create_app(ckpt, batch_size=0)
    with pytest.raises(ValueError, match="batch_wait_ms"):
        create_app(ckpt, batch_wait_ms=5000)
    assert main(["serve", str(ckpt), "--batch-wait-ms", "2000"]) == 2
    with pytest.raises(SystemExit):  # argparse: --batch-size must be at least 1
        main(["serve", str(ckpt), "--batch-size", "0"])
