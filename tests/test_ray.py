"""`fracturekit predict --ray`: Ray Data gives the rows of local predict, and survives a dead
worker. One local Ray with 2 CPUs serves the module (starting one takes ~10 s)."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

from fixture_images import noise_image
from fracturekit.cli import main
from fracturekit.models import build_model, save_checkpoint
from fracturekit.predict import check_output, predict_batch

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'fracturekit[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'ray[data]'")
pytest.importorskip("pyarrow", reason="pyarrow is not installed (comes with ray[data])")

from fracturekit.ray_predict import PredictWorker, predict_ray  # noqa: E402

N_IMAGES = 30


class DiesOnce(PredictWorker):
    """Kills its own process on its first batch, once per run (a marker file remembers)."""

    def __call__(self, batch):
        marker = Path(os.environ["FRACTUREKIT_TEST_MARKER"])
        if not marker.exists():
            marker.write_text("died")
            os._exit(1)
        return super().__call__(batch)


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    marker = tmp_path_factory.mktemp("marker") / "died"
    # Workers import this module by value: tests/ is not on their path.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "FRACTUREKIT_TEST_MARKER": str(marker),
                "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                "OMP_NUM_THREADS": "1",
            }
        },
    )
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ray")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("simple_cnn", 2, pretrained=False)
    meta = {"classes": ["crack", "no_crack"], "img_size": 32, "positive": "crack"}
    ckpt = save_checkpoint(root / "model.pt", model, {**meta, "threshold": 0.4})
    images = root / "imgs"
    images.mkdir()
    for i in range(N_IMAGES):
        noise_image(i, size=(40 + i, 36)).save(images / f"img{i:02d}.png")
    (images / "img05_broken.png").write_bytes(b"not an image")
    (images / "img17_empty.jpg").write_bytes(b"")
    return ckpt, images


def _records(path: Path) -> list[dict]:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_rows_identical_to_local_predict_with_error_rows(ray_local, case, tmp_path) -> None:
    ckpt, images = case
    ray_local.write_text("no dying in this test")
    local = predict_batch(ckpt, [images], out=tmp_path / "local.json", batch_size=4)
    remote = predict_ray(ckpt, [images], out=tmp_path / "ray.json", batch_size=4)
    assert (remote.n, remote.failed) == (local.n, local.failed) == (N_IMAGES + 2, 2)
    a, b = _records(tmp_path / "local.json"), _records(tmp_path / "ray.json")
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["label"] == y["label"] and x["error"] == y["error"]
        assert x["threshold"] == y["threshold"]
        for c, p in x["probabilities"].items():
            assert abs(p - y["probabilities"][c]) <= 1e-6
    errors = [r for r in b if r["error"]]
    assert [Path(r["path"]).name for r in errors] == ["img05_broken.png", "img17_empty.jpg"]
    assert all(r["label"] is None and r["probabilities"] == {} for r in errors)
    # The same columns as local predict, in CSV and Parquet.
    predict_ray(ckpt, [images], out=tmp_path / "ray.csv", batch_size=4)
    predict_batch(ckpt, [images], out=tmp_path / "local.csv", batch_size=4)
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text()
    import pyarrow.parquet as pq

    predict_ray(ckpt, [images], out=tmp_path / "ray.parquet", batch_size=4)
    table = pq.read_table(tmp_path / "ray.parquet")
    assert table.column_names == ["path", "label", "p_crack", "p_no_crack", "threshold", "error"]
    assert table.column("path").to_pylist() == [r["path"] for r in a]


@pytest.mark.slow
def test_a_killed_worker_loses_and_doubles_no_row(ray_local, case, tmp_path) -> None:
    ckpt, images = case
    ray_local.unlink(missing_ok=True)
    local = predict_batch(ckpt, [images], out=tmp_path / "local.json", batch_size=4)
    remote = predict_ray(ckpt, [images], out=tmp_path / "ray.json", batch_size=4, worker=DiesOnce)
    assert ray_local.read_text() == "died"  # a worker really died mid-run
    assert remote.n == local.n == N_IMAGES + 2
    a, b = _records(tmp_path / "local.json"), _records(tmp_path / "ray.json")
    assert [r["path"] for r in a] == [r["path"] for r in b]
    assert [r["label"] for r in a] == [r["label"] for r in b]


def test_local_parquet_and_usage_errors(case, tmp_path, capsys, monkeypatch) -> None:
    import pyarrow.parquet as pq

    ckpt, images = case
    result = predict_batch(ckpt, [images], out=tmp_path / "local.parquet", batch_size=8)
    table = pq.read_table(tmp_path / "local.parquet")
    assert table.num_rows == result.n == N_IMAGES + 2
    assert str(table.schema.field("p_crack").type) == "double"
    errors = [e for e in table.column("error").to_pylist() if e]
    assert len(errors) == 2 and table.column("label").to_pylist().count(None) == 2
    # --ray needs --out; a manifest error is a usage error before Ray starts.
    assert main(["predict", str(ckpt), str(images), "--ray"]) == 2
    assert "--ray writes its rows to a file" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    args = ["predict", str(ckpt), str(tmp_path / "bad.csv"), "--out", str(tmp_path / "r.csv")]
    assert main([*args, "--ray"]) == 2
    assert "no 'path' column" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with pytest.raises(ValueError, match="needs pyarrow"):
        check_output(tmp_path / "x.parquet")


@pytest.mark.slow
def test_segmenter_rows_and_masks_from_the_workers(
    ray_local, case, make_seg_checkpoint, tmp_path
) -> None:
    _, images = case
    ray_local.write_text("no dying in this test")
    ckpt = make_seg_checkpoint(bias=3.0)
    local = predict_batch(ckpt, [images], out=tmp_path / "local.csv", masks=tmp_path / "lm")
    remote = predict_ray(
        ckpt, [images], out=tmp_path / "ray.csv", batch_size=8, masks=tmp_path / "rm"
    )
    assert (remote.n, remote.failed) == (local.n, local.failed) == (N_IMAGES + 2, 2)
    a = (tmp_path / "local.csv").read_text().replace(str(tmp_path / "lm"), "MASKS")
    b = (tmp_path / "ray.csv").read_text().replace(str(tmp_path / "rm"), "MASKS")
    assert a == b and "crack_fraction" in a.splitlines()[0]
    written = sorted(p.name for p in (tmp_path / "rm").glob("*.png"))
    assert written == sorted(p.name for p in (tmp_path / "lm").glob("*.png"))
    assert len(written) == N_IMAGES
