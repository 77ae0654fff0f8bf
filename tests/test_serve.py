"""The REST API and its page (FastAPI TestClient): every route and every kind of bad input."""

from __future__ import annotations

import base64
import io
import json
import struct
import tempfile
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fixture_images import dicom_bytes, jpeg_bytes, noise_image, write_tiff16
from fracturekit.cli import main
from fracturekit.models import build_model, save_checkpoint
from fracturekit.predict import Predictor, graph_runtime
from fracturekit.serve import create_app
from fracturekit.serve.app import ENV_CHECKPOINT, ENV_MAX_UPLOAD_MB, create_app_from_env

LOCAL = "http://127.0.0.1"  # the Host the service answers to by default

CLASSES = ["crack", "no_crack"]
STATIC = Path(__file__).resolve().parents[1] / "src" / "fracturekit" / "serve" / "static"


def local_client(app, **kwargs) -> TestClient:
    """A TestClient that talks to the app as http://127.0.0.1 (the default allowed Host)."""
    return TestClient(app, base_url=LOCAL, **kwargs)


def make_checkpoint(path: Path, threshold: float = 0.4) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("simple_cnn", 2, pretrained=False)
    meta = {
        "classes": CLASSES,
        "img_size": 32,
        "positive": "crack",
        "threshold": threshold,
        "metrics": {"f1": 0.91, "roc_auc": 0.97},
    }
    return save_checkpoint(path, model, meta)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (10 gigapixels by default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def upload(data: bytes, name: str = "image.png", ctype: str = "image/png", field: str = "file"):
    return {field: (name, data, ctype)}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "model.pt")


@pytest.fixture(scope="module")
def client(ckpt: Path):
    with local_client(create_app(ckpt)) as c:
        yield c


@pytest.fixture(scope="module")
def picture() -> bytes:
    return png_bytes(noise_image(7, (64, 48)))


def assert_error(response, status: int, *words: str) -> str:
    """A JSON error with ``status`` whose message holds every word."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, detail
    return detail


# --------------------------------------------------------------------------------------------
# routes


def test_health(client: TestClient) -> None:
    body = client.get("/health").json()
    assert (
        body["status"] == "ok"
        and body["model"] == "simple_cnn"
        and body["backend"] == graph_runtime()
    )


def test_model(client: TestClient) -> None:
    body = client.get("/model").json()
    assert body["classes"] == CLASSES and body["positive"] == "crack"
    assert body["img_size"] == 32 and body["threshold"] == pytest.approx(0.4)
    assert body["metrics"] == {"f1": 0.91, "roc_auc": 0.97}
    assert body["max_upload_mb"] == 25 and "gradcam" in body["explain_methods"]
    assert body["max_pixels"] == 40_000_000


def test_predict_matches_the_predictor(client: TestClient, ckpt: Path, picture: bytes) -> None:
    r = client.post("/predict", files=upload(picture, "wall.png"))
    assert r.status_code == 200, r.text
    body = r.json()
    expected = Predictor.from_checkpoint(ckpt).predict_images([Image.open(io.BytesIO(picture))])[0]
    assert body["path"] == "wall.png" and body["label"] == expected.label
    assert body["confidence"] == pytest.approx(expected.confidence, abs=1e-6)
    for c in CLASSES:
        assert body["probabilities"][c] == pytest.approx(expected.probabilities[c], abs=1e-6)
    assert body["threshold"] == pytest.approx(0.4) and body["positive"] == "crack"
    assert body["image"] == {"width": 64, "height": 48}
    assert set(body["timing_ms"]) == {"decode_ms", "inference_ms", "total_ms"}
    assert body["timing_ms"]["total_ms"] >= body["timing_ms"]["inference_ms"] >= 0
    assert body["preview_png"] is None and body["error"] is None


@pytest.mark.parametrize("kind", ["jpeg", "gray-png", "tiff16", "dicom", "dicom-no-suffix"])
def test_predict_formats_with_preview(client: TestClient, tmp_path: Path, kind: str) -> None:
    if kind == "jpeg":
        data, name = jpeg_bytes(noise_image(1, (40, 30))), "a.jpg"
    elif kind == "gray-png":
        data, name = png_bytes(noise_image(2, (40, 30), mode="L")), "a.png"
    elif kind == "tiff16":
        data, name = write_tiff16(tmp_path / "a.tif", size=(40, 30)).read_bytes(), "a.tif"
    else:
        values = np.linspace(0, 4000, 30 * 40).reshape(30, 40).astype(np.uint16)
        data, name = dicom_bytes(values), ("a.dcm" if kind == "dicom" else "scan")
    r = client.post("/predict?preview=true", files=upload(data, name, "application/octet-stream"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in CLASSES and body["image"] == {"width": 40, "height": 30}
    preview = Image.open(io.BytesIO(base64.b64decode(body["preview_png"])))
    assert preview.format == "PNG" and preview.size == (40, 30)


def test_preview_of_a_large_image_is_downsized(client: TestClient) -> None:
    big = png_bytes(noise_image(3, (1200, 600)))
    body = client.post("/predict?preview=1", files=upload(big)).json()
    assert body["image"] == {"width": 1200, "height": 600}
    preview = Image.open(io.BytesIO(base64.b64decode(body["preview_png"])))
    assert preview.size == (512, 256)


def test_explain_png_and_json(client: TestClient, picture: bytes) -> None:
    r = client.post("/explain", files=upload(picture))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-fracturekit-label"] in CLASSES
    assert Image.open(io.BytesIO(r.content)).size == (64, 48)

    r = client.post("/explain?format=json", files=upload(picture))
    body = r.json()
    # The service's default is the CLI's (declared once, in fracturekit.contracts).
    from fracturekit.contracts import EXPLAIN_METHOD

    assert r.status_code == 200 and body["method"] == EXPLAIN_METHOD
    assert body["target"] == "crack"  # a binary model explains its positive class by default
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.size == (64, 48) and overlay.mode == "RGB"
    assert body["label"] in CLASSES and "width" in body
    assert body["width"] is None or body["width"]["n_cracks"] >= 1

    other = client.post(
        "/explain?format=json&target=no_crack&method=eigencam&width=false", files=upload(picture)
    ).json()
    assert other["target"] == "no_crack" and other["method"] == "eigencam"
    assert other["width"] is None


def test_explain_measures_the_crack_width(tmp_path: Path) -> None:
    """A model that always answers "crack" (threshold 0): the dark crack drawn on a synthetic
    concrete image is found in the heat-map region and measured in the uploaded image's px."""
    from fracturekit.synthetic import render_sample

    sample = render_sample(np.random.default_rng(5), 128, "concrete", True)
    crack = png_bytes(Image.fromarray(sample.image))
    big = png_bytes(Image.fromarray(sample.image).resize((1024, 1024), Image.Resampling.NEAREST))
    with local_client(create_app(make_checkpoint(tmp_path / "always.pt", threshold=0.0))) as c:
        body = c.post("/explain?format=json&px_per_mm=4", files=upload(crack)).json()
        assert body["label"] == "crack" and body["target"] == "crack"
        width = body["width"]
        assert width is not None and width["n_cracks"] >= 1
        true_max = max(t.max_width_px for t in sample.cracks)
        assert 0 < width["max_width_px"] <= true_max + 3
        assert width["length_px"] > 10
        assert width["length_mm"] == pytest.approx(width["length_px"] / 4, rel=1e-3)
        assert width["severity"] in ("narrow", "moderate", "wide")
        # 8x larger upload: measured on its 512 px copy, reported in the upload's pixels.
        scaled = c.post("/explain?format=json", files=upload(big)).json()["width"]
        assert scaled is not None
        assert scaled["length_px"] == pytest.approx(8 * width["length_px"], rel=0.35)
        off = c.post("/explain?format=json&width=false", files=upload(crack)).json()
        assert off["width"] is None


def test_page_and_static_files(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    for needle in ('id="file"', 'id="label"', 'id="bars"', 'id="show-overlay"', 'role="alert"'):
        assert needle in html
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and ctype in r.headers["content-type"]


def test_page_needs_no_network() -> None:
    """No CDN, font service or any other host: the page works offline."""
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


def test_openapi_documents_the_upload(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/health", "/model", "/predict", "/explain"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["required"] == ["file"]
    assert "413" in schema["paths"]["/predict"]["post"]["responses"]
    props = schema["components"]["schemas"]["PredictionResponse"]["properties"]
    assert {"path", "label", "confidence", "probabilities", "threshold", "error"} <= set(props)


def test_docs_are_off_unless_asked(client: TestClient, ckpt: Path) -> None:
    """Swagger UI loads its scripts from a CDN: only with docs=True (fracturekit serve --docs)."""
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    with local_client(create_app(ckpt, docs=True)) as c:
        assert c.get("/docs").status_code == 200


# --------------------------------------------------------------------------------------------
# bad input: always a 4xx JSON message, never a 500


def test_not_an_image(client: TestClient) -> None:
    r = client.post("/predict", files=upload(b"%PDF-1.4 hello", "report.pdf", "application/pdf"))
    assert_error(r, 422, "report.pdf", "not a readable image")


def test_truncated_image(client: TestClient, picture: bytes) -> None:
    r = client.post("/predict", files=upload(picture[: len(picture) // 2], "half.png"))
    assert_error(r, 422, "half.png", "truncated")
    r = client.post("/predict", files=upload(jpeg_bytes(noise_image(1))[:-6], "cut.jpg"))
    assert_error(r, 422, "cut.jpg", "truncated")


def test_zero_bytes(client: TestClient) -> None:
    assert_error(client.post("/predict", files=upload(b"", "empty.png")), 422, "empty.png", "empty")


def test_decompression_bomb(client: TestClient) -> None:
    r = client.post("/predict", files=upload(bomb_png(), "bomb.png"))
    assert_error(r, 413, "bomb.png", "100000x100000", "megapixels")
    r = client.post("/explain", files=upload(bomb_png(), "bomb.png"))
    assert_error(r, 413, "megapixels")


def test_413_is_decided_by_the_error_kind(client: TestClient, picture: bytes, monkeypatch) -> None:
    """The status comes from ``ImageReadError.kind``, not from the wording of the message."""
    from fracturekit.io import ImageReadError
    from fracturekit.serve import _engine

    def refuse(kind: str, reason: str):
        def read(data, *, name, **options):
            raise ImageReadError(name, reason, kind=kind)

        return read

    monkeypatch.setattr(_engine, "read_image_bytes", refuse("too_large", "far too many pixels"))
    assert_error(client.post("/predict", files=upload(picture, "a.png")), 413, "a.png", "pixels")
    monkeypatch.setattr(_engine, "read_image_bytes", refuse("unreadable", "bad megapixels field"))
    assert_error(client.post("/predict", files=upload(picture, "b.png")), 422, "megapixels")


def test_pixel_limit_is_configurable(ckpt: Path, picture: bytes) -> None:
    with local_client(create_app(ckpt, max_pixels=1000)) as c:
        assert_error(c.post("/predict", files=upload(picture)), 413, "megapixels")
        small = png_bytes(noise_image(1, (20, 20)))
        assert c.post("/predict", files=upload(small)).status_code == 200


def test_upload_over_the_size_limit(ckpt: Path) -> None:
    with local_client(create_app(ckpt, max_upload_mb=0.05)) as c:  # 51 KiB
        big = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
        # Refused from the Content-Length header...
        assert_error(c.post("/predict", files=upload(big)), 413, "limit", "--max-upload-mb")

        # ...and, without one (chunked), by counting the bytes as they arrive.
        boundary = "xYzBoundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()

        def body():
            yield head
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]
            yield f"\r\n--{boundary}--\r\n".encode()

        r = c.post(
            "/predict",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert_error(r, 413, "limit")
        assert c.post("/predict", files=upload(png_bytes(noise_image(1)))).status_code == 200


def test_body_is_refused_while_it_streams() -> None:
    """The reader stops at the limit: the rest of a huge body is never received."""
    import anyio
    from starlette.requests import Request

    from fracturekit.serve._upload import UploadError, read_file_part

    boundary = b"bnd"
    head = b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
    received = []

    async def receive() -> dict:
        received.append(1)
        chunk = head if len(received) == 1 else b"\0" * 65536
        return {"type": "http.request", "body": chunk, "more_body": len(received) < 10_000}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary)],
    }

    async def read() -> None:
        await read_file_part(Request(scope, receive), "file", 2**20)

    with pytest.raises(UploadError) as info:
        anyio.run(read)
    assert info.value.status == 413
    # 1 MiB limit + 64 KiB of multipart allowance: about 18 chunks of 64 KiB, not 10,000.
    assert len(received) <= 20


def test_slow_upload_times_out(ckpt: Path, monkeypatch) -> None:
    """A client trickling its body gets 408 and frees its upload slot (raw ASGI: TestClient
    would read the whole body before the app sees it)."""
    import anyio

    from fracturekit.serve import _upload

    monkeypatch.setattr(_upload, "UPLOAD_TIMEOUT_S", 0.3)
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\n\r\n'
    calls = []

    async def receive() -> dict:
        calls.append(1)
        if len(calls) > 1:
            await anyio.sleep(5)  # the rest of the body never comes in time
        return {"type": "http.request", "body": head, "more_body": True}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    app = create_app(ckpt)
    with local_client(app) as c:
        sent: list[dict] = []

        async def drive() -> None:
            async def send(message: dict) -> None:
                sent.append(message)

            await app(dict(scope), receive, send)

        started = time.perf_counter()
        c.portal.call(drive)
        assert time.perf_counter() - started < 3
        assert c.get("/health").status_code == 200
    assert sent[0]["status"] == 408
    assert b"too slowly" in b"".join(m.get("body", b"") for m in sent[1:])


def test_wrong_field_name(client: TestClient, picture: bytes) -> None:
    r = client.post("/predict", files=upload(picture, field="image"))
    assert_error(r, 422, "no form field named 'file'", "'image'")
    r = client.post("/explain", data={"note": "x"}, files=upload(picture, field="upload"))
    assert_error(r, 422, "'note'", "'upload'")


def test_not_multipart(client: TestClient, picture: bytes) -> None:
    r = client.post("/predict", content=picture, headers={"content-type": "image/png"})
    assert_error(r, 415, "multipart/form-data", "'file'")
    r = client.post("/predict", json={"file": "abc"})
    assert_error(r, 415, "application/json")
    assert_error(client.post("/predict"), 415, "multipart/form-data")


def test_malformed_multipart(client: TestClient) -> None:
    r = client.post(
        "/predict", content=b"no boundary here", headers={"content-type": "multipart/form-data"}
    )
    assert_error(r, 400, "boundary")
    r = client.post(
        "/predict",
        content=b"--b\r\nbroken header line\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code in (400, 422) and isinstance(r.json()["detail"], str)
    many = {f"f{i}": (f"{i}.png", b"x", "image/png") for i in range(20)}
    assert_error(client.post("/predict", files=many), 400, "too many parts")


def test_bad_query_parameters(client: TestClient, picture: bytes) -> None:
    assert_error(client.post("/explain?format=gif", files=upload(picture)), 422, "format")
    assert_error(client.post("/explain?method=magic", files=upload(picture)), 422, "gradcam")
    r = client.post("/explain?target=dog", files=upload(picture))
    assert_error(r, 422, "'dog'", "crack, no_crack")
    assert_error(client.post("/explain?px_per_mm=-2", files=upload(picture)), 422, "px_per_mm")
    for bad in ("inf", "-inf", "nan", "1e308"):  # finite, > 0 and sane, never a 500
        r = client.post(f"/explain?format=json&px_per_mm={bad}", files=upload(picture))
        assert_error(r, 422, "px_per_mm")
    assert_error(client.post("/predict?preview=maybe", files=upload(picture)), 422, "preview")


def test_unknown_routes_and_methods(client: TestClient) -> None:
    assert_error(client.get("/nothing"), 404, "Not Found")
    assert_error(client.get("/predict"), 405, "Method Not Allowed")


def test_still_healthy_after_bad_input(client: TestClient, picture: bytes) -> None:
    for data in (b"", b"junk", bomb_png(), picture[:100]):
        assert 400 <= client.post("/predict", files=upload(data)).status_code < 500
    assert client.get("/health").status_code == 200
    assert client.post("/predict", files=upload(picture)).status_code == 200


def test_concurrent_requests(client: TestClient) -> None:
    pictures = [png_bytes(noise_image(i, (40, 40))) for i in range(4)]
    expected = [client.post("/predict", files=upload(p)).json()["probabilities"] for p in pictures]

    def one(i: int) -> dict:
        route = "/explain?format=json" if i % 3 == 0 else "/predict"
        return client.post(route, files=upload(pictures[i % 4])).json()

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(12)))
    for i, body in enumerate(results):
        # /predict answers on ONNX Runtime (batched), /explain on PyTorch: the export's parity.
        tol = 1e-4 if i % 3 == 0 else 1e-6
        for c in CLASSES:
            assert body["probabilities"][c] == pytest.approx(expected[i % 4][c], abs=tol)


# --------------------------------------------------------------------------------------------
# uploads stay off the disk unless asked


def test_nothing_written_to_disk(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    spool = tmp_path / "tmp"
    cwd = tmp_path / "cwd"
    spool.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where spooled uploads would go
    monkeypatch.chdir(cwd)
    big = png_bytes(noise_image(9, (900, 900)))  # over 1 MB: larger than any in-memory spool
    assert len(big) > 2**20
    with local_client(create_app(ckpt)) as c:
        assert c.post("/predict", files=upload(big)).status_code == 200
        assert c.post("/explain", files=upload(big)).status_code == 200
    assert list(spool.iterdir()) == [] and list(cwd.iterdir()) == []


def test_save_uploads(ckpt: Path, tmp_path: Path, picture: bytes) -> None:
    keep = tmp_path / "kept"
    with local_client(create_app(ckpt, save_uploads=keep)) as c:
        c.post("/predict", files=upload(picture, "../../evil name.png"))
        c.post("/predict", files=upload(picture, "../../evil name.png"))
        c.post("/predict", files=upload(b"junk", "bad.png"))
        c.post("/predict", files=upload(b"", "empty.png"))
        c.post("/explain", files=upload(picture[: len(picture) // 2], "half.png"))
    files = sorted(keep.iterdir())
    # Only uploads that decoded are kept: no empty, junk or truncated files.
    assert len(files) == 2 and all(f.parent == keep for f in files)
    named = [f for f in files if f.name.endswith("evil_name.png")]
    assert len(named) == 2 and named[0].name != named[1].name
    assert named[0].read_bytes() == picture
    assert not [f for f in files if f.name.startswith(".")]  # no temporary files left


# --------------------------------------------------------------------------------------------
# construction, ONNX backend, environment factory, CLI


def test_create_app_from_a_predictor(ckpt: Path, picture: bytes) -> None:
    with local_client(create_app(Predictor.from_checkpoint(ckpt))) as c:
        assert c.post("/predict", files=upload(picture)).json()["label"] in CLASSES
    with pytest.raises(ValueError, match="max_upload_mb"):
        create_app(ckpt, max_upload_mb=0)


def test_onnx_backend_serves_predictions_not_heat_maps(ckpt: Path, tmp_path: Path) -> None:
    from fracturekit.export import export_onnx

    onnx_path = export_onnx(ckpt, tmp_path / "model.onnx").path
    picture = png_bytes(noise_image(4))
    torch_body = None
    with local_client(create_app(ckpt)) as c:
        torch_body = c.post("/predict", files=upload(picture)).json()
    with local_client(create_app(onnx_path)) as c:
        assert c.get("/model").json()["explain_methods"] == []
        body = c.post("/predict", files=upload(picture)).json()
        assert body["label"] == torch_body["label"]
        assert body["confidence"] == pytest.approx(torch_body["confidence"], abs=1e-4)
        assert_error(c.post("/explain", files=upload(picture)), 501, "exported graph")


def test_app_from_environment(ckpt: Path, monkeypatch, picture: bytes) -> None:
    monkeypatch.setenv(ENV_CHECKPOINT, str(ckpt))
    monkeypatch.setenv(ENV_MAX_UPLOAD_MB, "0.01")
    with local_client(create_app_from_env()) as c:
        assert c.get("/model").json()["max_upload_mb"] == pytest.approx(0.01)
        assert c.post("/predict", files=upload(picture)).status_code == 200
        assert_error(c.post("/predict", files=upload(b"x" * 90_000)), 413)
    monkeypatch.delenv(ENV_CHECKPOINT)
    with pytest.raises(RuntimeError, match=ENV_CHECKPOINT):
        create_app_from_env()


def test_the_app_factory_is_where_the_cli_starts_it() -> None:
    from fracturekit.cli import serve as cli_serve
    from fracturekit.serve import app

    module, factory = cli_serve.APP_FACTORY.split(":")
    assert module == app.__name__ and callable(getattr(app, factory))


def test_cli_serve_checks_before_starting(tmp_path: Path, ckpt: Path, capsys) -> None:
    assert main(["serve", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["serve", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt" in capsys.readouterr().err
    assert main(["serve", str(ckpt), "--workers", "0"]) == 2
    assert main(["serve", str(ckpt), "--port", "70000"]) == 2
    assert main(["serve", str(ckpt), "--max-upload-mb", "0"]) == 2
    assert main(["serve", str(ckpt), "--max-pixels", "-5"]) == 2
    err = capsys.readouterr().err
    assert "--max-upload-mb 0.0: must be positive" in err and "--max-pixels -5: must be" in err
    (tmp_path / "file").write_text("x")
    assert main(["serve", str(ckpt), "--save-uploads", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_errors_are_json_with_a_detail_string(client: TestClient) -> None:
    r = client.post("/predict", files=upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64))
    assert r.status_code == 422
    assert json.loads(r.text).keys() == {"detail"}


# --------------------------------------------------------------------------------------------
# hardening: slow clients, a full queue, access control


def raw_scope(path: str = "/predict", boundary: bytes = b"b") -> dict:
    """An ASGI scope for driving the app directly (TestClient reads the whole body first)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"multipart/form-data; boundary=" + boundary),
            (b"host", b"127.0.0.1"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


def trickle(body: bytes, every_s: float):
    """An ASGI receive() that sends ``body`` one byte every ``every_s`` seconds."""
    import anyio

    sent = [0]

    async def receive() -> dict:
        i = sent[0]
        sent[0] += 1
        if i:
            await anyio.sleep(every_s)
        return {"type": "http.request", "body": body[i : i + 1], "more_body": i + 1 < len(body)}

    return receive


def multipart(data: bytes, boundary: str = "b", name: str = "s.png") -> bytes:
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode()


def test_a_trickling_client_is_cut_off(ckpt: Path, monkeypatch) -> None:
    """One byte at a time: refused (408) once the body falls behind the minimum rate, long
    before the overall upload deadline."""
    import anyio

    from fracturekit.serve import _upload

    monkeypatch.setattr(_upload, "GRACE_S", 0.3)
    monkeypatch.setattr(_upload, "MIN_RATE", 1000)
    body = multipart(b"x" * 30)  # about 3 s at one byte every 0.02 s
    app = create_app(ckpt)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    with local_client(app) as c:
        started = time.perf_counter()
        c.portal.call(lambda: app(raw_scope(), trickle(body, 0.02), send))
        assert time.perf_counter() - started < 1.5
        del anyio
    assert sent[0]["status"] == 408
    assert b"too slowly" in b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.slow
def test_slow_clients_do_not_block_other_uploads(ckpt: Path, picture: bytes) -> None:
    """Ten clients trickling their bodies: a normal upload is still answered at once."""
    app = create_app(ckpt)
    body = multipart(b"x" * 20)

    async def send(message: dict) -> None:
        pass

    with local_client(app) as c:
        slow = [
            c.portal.start_task_soon(lambda: app(raw_scope(), trickle(body, 0.1), send))
            for _ in range(10)
        ]
        time.sleep(0.3)  # every slow body has started
        assert all(not f.done() for f in slow)
        started = time.perf_counter()
        r = c.post("/predict", files=upload(picture))
        assert r.status_code == 200 and time.perf_counter() - started < 1.5
        for f in slow:
            f.result(timeout=30)


def test_a_full_queue_answers_503_with_retry_after(ckpt: Path, picture: bytes) -> None:
    """Past the work queue (decoding) or the batches' bound (inference), requests are refused
    at once instead of queueing without bound."""
    import threading

    from fracturekit.serve._engine import WorkQueue

    predictor = Predictor.from_checkpoint(ckpt)
    release = threading.Event()
    entered = threading.Event()
    original = predictor.predict_proba

    def slow_proba(batch):
        entered.set()
        release.wait(30)
        return original(batch)

    app = create_app(predictor)
    with local_client(app) as c:
        predictor.predict_proba = slow_proba  # after the warm-up
        app.state.work = WorkQueue(threads=1, depth=1)
        app.state.engine.batcher.max_pending = 1
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/predict", files=upload(picture))
            assert entered.wait(30)
            started = time.perf_counter()
            r = c.post("/predict", files=upload(picture))
            assert time.perf_counter() - started < 5
            assert_error(r, 503, "busy")
            assert int(r.headers["retry-after"]) > 0
            release.set()
            assert first.result(timeout=30).status_code == 200
        assert c.post("/predict", files=upload(picture)).status_code == 200


def test_receive_budget_bounds_the_bytes_in_flight() -> None:
    from fracturekit.serve._upload import ReceiveBudget, UploadError

    budget = ReceiveBudget(max_bytes=100, max_uploads=2)
    a, b = budget.open(), budget.open()
    with pytest.raises(UploadError) as info:
        budget.open()
    assert info.value.status == 503 and "Retry-After" in info.value.headers
    a.add(60)
    with pytest.raises(UploadError):
        b.add(50)
    a.close()
    a.close()  # closing twice gives back once
    b.add(90)
    b.close()
    assert budget.bytes == 0 and budget.uploads == 0


def test_api_key(ckpt: Path, picture: bytes) -> None:
    with local_client(create_app(ckpt, api_key="s3cret-ключ")) as c:
        # The page, its files and /health need no key: the page asks for it.
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200
        assert c.get("/static/app.js").status_code == 200
        for path in ("/model", "/openapi.json"):
            r = c.get(path)
            assert_error(r, 401, "Authorization: Bearer")
            assert r.headers["www-authenticate"] == "Bearer"
        assert_error(c.post("/predict", files=upload(picture)), 401, "API key")
        wrong = {"Authorization": "Bearer nope"}
        assert_error(c.get("/model", headers=wrong), 401, "wrong API key")
        key = "s3cret-ключ".encode()
        assert c.get("/model", headers={"Authorization": b"Bearer " + key}).status_code == 200
        assert c.get("/model", headers={"X-API-Key": key}).status_code == 200
        r = c.post("/predict", files=upload(picture), headers={"X-API-Key": key})
        assert r.status_code == 200


def test_foreign_origins_and_hosts_are_refused(client: TestClient, ckpt: Path, picture) -> None:
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        r = client.post("/predict", files=upload(picture), headers={"Origin": origin})
        assert_error(r, 403, "other web sites")
    for origin in ("http://127.0.0.1", "https://127.0.0.1"):  # the page itself (TLS proxy too)
        r = client.post("/predict", files=upload(picture), headers={"Origin": origin})
        assert r.status_code == 200, r.text
    assert_error(client.get("/health", headers={"Host": "evil.example"}), 400, "--allowed-hosts")
    with TestClient(create_app(ckpt)) as c:  # Host "testserver": not a name of this server
        assert_error(c.get("/model"), 400, "testserver")
    with TestClient(create_app(ckpt, allowed_hosts=["testserver:8000"])) as c:
        assert c.get("/model").status_code == 200
        assert c.get("/model", headers={"Origin": "http://testserver"}).status_code == 200
        assert c.get("/model", headers={"Origin": "http://testserver:81"}).status_code == 403
    with TestClient(create_app(ckpt, allowed_hosts=["*"])) as c:
        assert c.get("/model", headers={"Host": "anything.example"}).status_code == 200


def test_json_answers_are_not_sniffed(client: TestClient, picture: bytes) -> None:
    for r in (
        client.get("/health"),
        client.post("/predict", files=upload(picture)),
        client.post("/predict", files=upload(b"junk")),
        client.get("/model", headers={"Origin": "http://evil.example"}),
    ):
        assert r.headers["x-content-type-options"] == "nosniff"


def test_unfinished_multipart_body_is_refused(client: TestClient, picture: bytes) -> None:
    """A body cut before its closing boundary: the file inside may be cut too."""
    body = multipart(picture, boundary="zz")
    cut = body[: -len(b"\r\n--zz--\r\n")]
    headers = {"content-type": "multipart/form-data; boundary=zz"}
    assert_error(client.post("/predict", content=cut, headers=headers), 400, "closing boundary")
    assert client.post("/predict", content=body, headers=headers).status_code == 200


def test_costly_cam_methods_are_opt_in(client: TestClient, ckpt: Path, picture: bytes) -> None:
    methods = client.get("/model").json()["explain_methods"]
    assert "scorecam" not in methods and {"gradcam", "hirescam"} <= set(methods)
    r = client.post("/explain?method=scorecam", files=upload(picture))
    assert_error(r, 422, "scorecam", "--explain-methods")
    with local_client(create_app(ckpt, explain_methods=["scorecam", "hirescam"])) as c:
        assert c.get("/model").json()["explain_methods"] == ["hirescam", "scorecam"]
        r = c.post("/explain?method=scorecam&format=json", files=upload(picture))
        assert r.status_code == 200 and r.json()["method"] == "scorecam"
    with pytest.raises(ValueError, match="magic"):
        create_app(ckpt, explain_methods=["magic"])


def test_service_pixel_limit_is_40_megapixels(client: TestClient) -> None:
    r = client.post("/predict", files=upload(bomb_png(8000, 6000), "big.png"))
    assert_error(r, 413, "big.png", "megapixels")


def test_save_uploads_stops_at_its_cap(ckpt: Path, tmp_path: Path, picture: bytes) -> None:
    keep = tmp_path / "kept"
    keep.mkdir()
    (keep / "earlier.png").write_bytes(picture)
    with local_client(create_app(ckpt, save_uploads=keep, save_max=3)) as c:
        for _ in range(4):
            assert c.post("/predict", files=upload(picture)).status_code == 200
    assert len(list(keep.iterdir())) == 3


def test_environment_carries_the_access_options(ckpt: Path, monkeypatch, picture) -> None:
    from fracturekit import contracts as env

    monkeypatch.setenv(env.ENV_CHECKPOINT, str(ckpt))
    monkeypatch.setenv(env.ENV_API_KEY, "k")
    monkeypatch.setenv(env.ENV_ALLOWED_HOSTS, "lab.example")
    monkeypatch.setenv(env.ENV_EXPLAIN_METHODS, "gradcam")
    monkeypatch.setenv(env.ENV_MAX_PIXELS, "1000")
    monkeypatch.setenv(env.ENV_DOCS, "1")
    with TestClient(create_app_from_env(), base_url="http://lab.example") as c:
        assert c.get("/model").status_code == 401
        body = c.get("/model", headers={"X-API-Key": "k"}).json()
        assert body["explain_methods"] == ["gradcam"] and body["max_pixels"] == 1000
        assert c.get("/docs", headers={"X-API-Key": "k"}).status_code == 200
        assert c.get("/health", headers={"Host": "127.0.0.1"}).status_code == 400


def test_cli_serve_refuses_an_open_address_without_a_key(ckpt: Path, tmp_path, capsys) -> None:
    from fracturekit.cli import serve as cli_serve

    missing = str(tmp_path / "none.pt")
    assert main(["serve", str(ckpt), "--host", "0.0.0.0"]) == 2
    assert "--insecure-no-auth" in capsys.readouterr().err
    assert main(["serve", str(ckpt), "--host", "192.168.1.5"]) == 2
    capsys.readouterr()
    # With a key, or told to, the checks go on (to the missing checkpoint).
    assert main(["serve", missing, "--host", "0.0.0.0", "--api-key", "k"]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert main(["serve", missing, "--host", "0.0.0.0", "--insecure-no-auth"]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert main(["serve", str(ckpt), "--explain-methods", "gradcam,magic"]) == 2
    assert "magic" in capsys.readouterr().err
    assert cli_serve.is_loopback("127.0.0.1") and cli_serve.is_loopback("::1")
    assert cli_serve.is_loopback("localhost") and not cli_serve.is_loopback("0.0.0.0")
    assert cli_serve.allowed_hosts("10.0.0.2", None)[-1] == "10.0.0.2"
    assert cli_serve.allowed_hosts("127.0.0.1", "a.example, b.example") == [
        "a.example",
        "b.example",
    ]


def test_cli_keeps_the_default_allocator_for_serve(tmp_path: Path, monkeypatch) -> None:
    """The allocator tuning keeps freed memory resident: right for a batch, wrong for a
    long-running service whose bursts would stay resident."""
    import fracturekit.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1))
    assert main(["serve", str(tmp_path / "none.pt")]) == 2
    assert calls == []
    assert main(["export", str(tmp_path / "none.pt")]) == 2
    assert calls == [1]


def test_one_image_is_decoded_at_a_time(client: TestClient, monkeypatch) -> None:
    """Decoding is the memory peak of a request: two uploads never decode together."""
    from fracturekit.serve import _engine

    active, most = [0], [0]
    lock = threading.Lock()
    original = _engine.read_image_bytes

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.2)
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(_engine, "read_image_bytes", counting)
    pictures = [png_bytes(noise_image(i, (40, 40))) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        codes = list(
            pool.map(lambda p: client.post("/predict", files=upload(p)).status_code, pictures)
        )
    assert codes == [200] * 4 and most[0] == 1


# --------------------------------------------------------------------------------------------
# a segmentation model: POST /segment, and /predict, /explain and /model on it

SIGMOID_3 = 1.0 / (1.0 + np.exp(-3.0))


@pytest.fixture(scope="module")
def seg_all(make_seg_checkpoint):
    """A segmenter whose every pixel is crack (probability sigmoid(3))."""
    with local_client(create_app(make_seg_checkpoint(bias=3.0))) as c:
        yield c


@pytest.fixture(scope="module")
def seg_none(make_seg_checkpoint):
    """A segmenter that finds no crack (probability sigmoid(-3) everywhere)."""
    with local_client(create_app(make_seg_checkpoint(bias=-3.0))) as c:
        yield c


def test_a_prior_decides_a_segmenter_s_images_not_its_pixels(
    make_seg_checkpoint, picture: bytes
) -> None:
    """Every pixel at sigmoid(3) = 0.95; validation negatives up to 0.97: at 3% positives the
    image needs more than that, so the image is negative and its mask empty."""
    predictor = Predictor.from_checkpoint(make_seg_checkpoint(bias=3.0))
    negatives = list(np.linspace(0.05, 0.97, 40))
    positives = [0.98, 0.99, 0.995, 0.999] * 10
    scores = negatives + positives
    predictor.meta["validation"] = {
        "labels": [0] * len(negatives) + [1] * len(positives),
        "probabilities": [[1 - v, v] for v in scores],
    }
    with local_client(create_app(predictor.with_prior(0.03))) as c:
        info = c.get("/model").json()
        assert info["prior"] == pytest.approx(0.03) and info["threshold"] == 0.5
        assert info["image_threshold"] > 0.97
        body = c.post("/segment", files=upload(picture)).json()
        assert body["label"] == "background" and body["crack_fraction"] == 0.0
        assert body["polygons"] == [] and body["width"]["cracks"] == 0
        assert body["threshold"] == 0.5 and body["image_threshold"] == info["image_threshold"]
        assert body["score"] == pytest.approx(SIGMOID_3, abs=1e-5)
        r = c.post("/segment?format=png", files=upload(picture))
        assert r.status_code == 200 and not np.asarray(Image.open(io.BytesIO(r.content))).any()
        assert r.headers["x-fracturekit-label"] == "background"
        assert c.post("/predict", files=upload(picture)).json()["label"] == "background"
        body = c.post("/segment?overlay=true", files=upload(picture)).json()
        assert body["overlay"].startswith("data:image/png;base64,")


def test_model_says_its_task(client: TestClient, seg_all: TestClient) -> None:
    body = client.get("/model").json()
    assert body["task"] == "classify" and body["min_area"] is None
    body = seg_all.get("/model").json()
    assert body["task"] == "segment" and body["min_area"] == 0
    assert body["classes"] == ["background", "crack"] and body["positive"] == "crack"
    assert body["explain_methods"] == ["probability"]


def test_segment_json(seg_all: TestClient, seg_none: TestClient, picture: bytes) -> None:
    from fracturekit.serve.app import SegmentResponse

    r = seg_all.post("/segment", files=upload(picture, "wall.png"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == set(SegmentResponse.model_fields)
    assert body["path"] == "wall.png" and body["label"] == "crack" and body["positive"] == "crack"
    assert body["crack_fraction"] == 1.0 and body["score"] == pytest.approx(SIGMOID_3, abs=1e-5)
    assert body["threshold"] == 0.5 and body["min_area"] == 0
    assert (body["width_px"], body["height_px"]) == (64, 48)
    assert len(body["polygons"]) == 1 and body["polygons_truncated"] is False
    assert body["polygons"][0]["bbox"] == [0, 0, 64, 48]
    assert body["polygons"][0]["area_px"] == 64 * 48
    assert body["overlay"] is None
    width = body["width"]
    assert width["cracks"] == 1 and width["length_px"] > 0 and width["max_width_px"] > 0
    assert width["px_per_mm"] is None and width["length_mm"] is None and len(width["rows"]) == 1

    body = seg_none.post("/segment", files=upload(picture)).json()
    assert body["label"] == "background" and body["crack_fraction"] == 0.0
    assert body["score"] == pytest.approx(1.0 - SIGMOID_3, abs=1e-5)
    assert body["polygons"] == [] and body["polygons_truncated"] is False
    assert body["width"]["cracks"] == 0 and body["width"]["mean_width_px"] is None


def overlay_image(body: dict) -> Image.Image:
    head, b64 = body["overlay"].split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_segment_overlay_and_scale(seg_all, seg_none, picture: bytes) -> None:
    body = seg_all.post("/segment?overlay=true&px_per_mm=2", files=upload(picture)).json()
    shown = overlay_image(body)
    assert shown.size == (64, 48) and shown.mode == "RGB"
    # Every pixel is crack: the whole picture is tinted red; without a crack it is unchanged.
    rgb = np.asarray(shown, dtype=int)
    assert (rgb[..., 0] - rgb[..., 1]).mean() > 80
    plain = overlay_image(seg_none.post("/segment?overlay=true", files=upload(picture)).json())
    assert np.array_equal(np.asarray(plain), np.asarray(Image.open(io.BytesIO(picture))))
    width = body["width"]
    assert width["px_per_mm"] == 2
    assert width["length_mm"] == pytest.approx(width["length_px"] / 2, abs=1e-3)
    assert width["max_width_mm"] == pytest.approx(width["max_width_px"] / 2, abs=1e-3)


def test_segment_png(seg_all: TestClient, seg_none: TestClient, picture: bytes) -> None:
    for c, value, label in ((seg_all, 255, "crack"), (seg_none, 0, "background")):
        r = c.post("/segment?format=png", files=upload(picture))
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        mask = Image.open(io.BytesIO(r.content))
        assert mask.size == (64, 48) and mask.mode == "L"
        assert np.unique(np.asarray(mask)).tolist() == [value]
        assert r.headers["x-fracturekit-label"] == label
        assert float(r.headers["x-fracturekit-crack-fraction"]) == value / 255
    # Accept: image/png asks for the mask; JSON stays the default.
    r = seg_all.post("/segment", files=upload(picture), headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "image/png"
    r = seg_all.post("/segment", files=upload(picture), headers={"Accept": "*/*"})
    assert r.headers["content-type"] == "application/json"
    r = seg_all.post("/segment?format=json", files=upload(picture), headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "application/json"


def test_segment_bad_query_parameters(seg_all: TestClient, picture: bytes) -> None:
    for bad in ("-2", "0", "inf", "-inf", "nan", "1e308", "wide"):
        r = seg_all.post(f"/segment?px_per_mm={bad}", files=upload(picture))
        assert_error(r, 422, "px_per_mm")
    assert_error(seg_all.post("/segment?format=gif", files=upload(picture)), 422, "format")
    assert_error(seg_all.post("/segment?overlay=maybe", files=upload(picture)), 422, "overlay")
    assert_error(seg_all.post("/segment", files=upload(b"%PDF-1.4", "a.pdf")), 422, "a.pdf")
    assert_error(seg_all.post("/segment", files=upload(bomb_png())), 413, "megapixels")


def test_large_images_are_measured_on_a_reduced_mask(seg_all: TestClient, monkeypatch) -> None:
    """Above MEASURE_MAX_SIDE, widths and outlines come from the map reduced to that side,
    reported in the upload's pixels; the mask PNG and the fraction stay full size."""
    from fracturekit.serve import _segment

    monkeypatch.setattr(_segment, "MEASURE_MAX_SIDE", 64)
    wide = png_bytes(noise_image(2, (256, 40)))
    body = seg_all.post("/segment", files=upload(wide)).json()
    assert (body["width_px"], body["height_px"]) == (256, 40) and body["crack_fraction"] == 1.0
    assert body["polygons"][0]["bbox"] == [0, 0, 256, 40]
    assert body["polygons"][0]["area_px"] == pytest.approx(256 * 40, rel=0.05)
    width = body["width"]
    assert width["length_px"] == pytest.approx(256, rel=0.15)
    assert width["max_width_px"] == pytest.approx(40, rel=0.15)
    assert float(width["rows"][0]["max_width_px"]) == pytest.approx(width["max_width_px"], 1e-3)
    r = seg_all.post("/segment?format=png", files=upload(wide))
    assert Image.open(io.BytesIO(r.content)).size == (256, 40)


def test_outlines_are_limited(make_seg_checkpoint, monkeypatch) -> None:
    from fracturekit.serve import _segment

    predictor = Predictor.from_checkpoint(make_seg_checkpoint(bias=3.0))
    prob = np.zeros((40, 60), np.float32)
    for i in range(5):
        prob[5 : 5 + 2 + i, 2 + 12 * i : 10 + 12 * i] = 0.9  # five pieces, growing
    mask = prob >= 0.5
    body = _segment.segment_answer(predictor, "x.png", prob, mask, px_per_mm=None)
    assert len(body["polygons"]) == 5 and body["polygons_truncated"] is False
    monkeypatch.setattr(_segment, "POLYGON_LIMIT", 3)
    body = _segment.segment_answer(predictor, "x.png", prob, mask, px_per_mm=None)
    assert [p["area_px"] for p in body["polygons"]] == [8 * 6, 8 * 5, 8 * 4]  # the largest
    assert body["polygons_truncated"] is True


def test_predict_on_a_segmenter(seg_all: TestClient, seg_none: TestClient, picture) -> None:
    """Classifier clients keep working: the image-level decision of the mask."""
    body = seg_all.post("/predict", files=upload(picture)).json()
    assert body["label"] == "crack" and body["crack_fraction"] == 1.0
    assert body["probabilities"]["crack"] == pytest.approx(SIGMOID_3, abs=1e-5)
    assert body["probabilities"]["background"] == pytest.approx(1 - SIGMOID_3, abs=1e-5)
    assert body["confidence"] == pytest.approx(SIGMOID_3, abs=1e-5)
    assert body["threshold"] == 0.5 and body["positive"] == "crack"
    body = seg_none.post("/predict?preview=true", files=upload(picture)).json()
    assert body["label"] == "background" and body["crack_fraction"] == 0.0
    assert body["preview_png"] is not None


def test_explain_on_a_segmenter(seg_all: TestClient, picture: bytes) -> None:
    """The pixel probability map over the image, as `fracturekit explain` draws it."""
    r = seg_all.post("/explain", files=upload(picture))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (64, 48)
    body = seg_all.post("/explain?format=json&px_per_mm=4", files=upload(picture)).json()
    assert body["method"] == "probability" and body["target"] == "crack"
    assert body["label"] == "crack" and body["crack_fraction"] == 1.0
    assert body["width"]["n_cracks"] == 1
    assert body["width"]["length_mm"] == pytest.approx(body["width"]["length_px"] / 4, rel=1e-3)
    r = seg_all.post("/explain?method=gradcam", files=upload(picture))
    assert_error(r, 422, "probability", "/segment")
    r = seg_all.post("/explain?target=background", files=upload(picture))
    assert_error(r, 422, "positive class", "crack")


def test_a_classifier_refuses_segment(client: TestClient, picture: bytes) -> None:
    r = client.post("/segment", files=upload(picture))
    assert_error(r, 409, "classifier", "/predict")
    assert client.get("/model").json()["explain_methods"] != ["probability"]
    assert client.post("/predict", files=upload(picture)).json()["crack_fraction"] is None


def test_segment_keeps_the_limits_and_the_api_key(make_seg_checkpoint, picture: bytes) -> None:
    app = create_app(make_seg_checkpoint(bias=3.0), max_upload_mb=0.05, api_key="k3y")
    with local_client(app) as c:
        key = {"X-API-Key": "k3y"}
        assert_error(c.post("/segment", files=upload(picture)), 401, "API key")
        r = c.post("/segment", files=upload(picture), headers={"Authorization": "Bearer no"})
        assert_error(r, 401, "wrong API key")
        big = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
        assert_error(c.post("/segment", files=upload(big), headers=key), 413, "limit")
        r = c.post(
            "/segment", files=upload(picture), headers={**key, "Origin": "http://evil.example"}
        )
        assert r.status_code == 403
        r = c.post("/segment", files=upload(picture), headers=key)
        assert r.status_code == 200 and r.json()["label"] == "crack"


def test_openapi_documents_segment(seg_all: TestClient) -> None:
    schema = seg_all.get("/openapi.json").json()
    post = schema["paths"]["/segment"]["post"]
    assert post["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    assert {"200", "409", "413", "503"} <= set(post["responses"])
    props = schema["components"]["schemas"]["SegmentResponse"]["properties"]
    assert {"crack_fraction", "polygons", "polygons_truncated", "width", "overlay"} <= set(props)


def test_page_has_the_segmentation_view(client: TestClient) -> None:
    html = client.get("/").text
    for needle in ('id="px-per-mm"', 'id="fraction"', 'id="width-note"'):
        assert needle in html
    js = client.get("/static/app.js").text
    assert "/segment?" in js and "px_per_mm" in js and 'task === "segment"' in js


def test_mask_overlay_keeps_thin_cracks() -> None:
    """render.mask_overlay: mask pixels tinted, the rest untouched, a 1-px line of a 4x larger
    mask still painted on the small picture."""
    from fracturekit.render import mask_overlay

    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((80, 120), bool)
    mask[41, :] = True  # one pixel thick at 4x the picture's size
    out = np.asarray(mask_overlay(image, mask, colour=(255, 0, 0), alpha=0.5))
    assert out.shape == (20, 30, 3)
    assert (out[10] == [178, 50, 50]).all()
    assert (np.delete(out, 10, axis=0) == 100).all()
    with pytest.raises(ValueError, match="alpha"):
        mask_overlay(image, mask, alpha=2)
