"""End to end: `fracturekit serve` as a real process, its page driven in headless Chromium.

Needs Debian's chromium at /usr/bin/chromium (tools/test.sh installs it) and Playwright for
Python; skipped with the reason when either is missing.

Run as a script, it saves the page of a segmentation model for the README:

    .venv/bin/python tests/test_browser.py CKPT IMAGE --out docs/page_segment.png [--px-per-mm X]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracturekit.models import build_model, save_checkpoint
from fracturekit.synthetic import render_sample

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CLASSES = ["crack", "no_crack"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"fracturekit serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"fracturekit serve did not answer /health in {timeout} s:\n{log.read_text()}")


API_KEY = "page-key-42"


@contextlib.contextmanager
def serve_process(ckpt: Path, folder: Path, api_key: str | None = None) -> Iterator[str]:
    """A real `fracturekit serve` process on a free localhost port (log in ``folder``); yields
    its URL once ``/health`` answers."""
    port = free_port()
    log = folder / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("FRACTUREKIT_API_KEY", None)
    if api_key:
        env["FRACTUREKIT_API_KEY"] = api_key
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fracturekit", "serve", str(ckpt), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=[None], ids=["open"])
def server(tmp_path: Path, request):
    """`fracturekit serve` of a small classifier; yields its URL (``request.param``: the API
    key it is started with, or None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("simple_cnn", 2, pretrained=False)
    ckpt = save_checkpoint(
        tmp_path / "model.pt",
        model,
        # Threshold 0: the untrained model always answers "crack", so the page shows a width.
        {"classes": CLASSES, "img_size": 64, "positive": "crack", "threshold": 0.0},
    )
    with serve_process(ckpt, tmp_path, request.param) as url:
        yield url


@pytest.fixture
def seg_server(tmp_path: Path, make_seg_checkpoint):
    """`fracturekit serve` of a segmentation model that marks every pixel as crack."""
    with serve_process(make_seg_checkpoint(bias=3.0), tmp_path) as url:
        yield url


def _playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (tools/test.sh does)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def segment_page(expect, browser, url: str, image: Path, shot: Path, px_per_mm=None):
    """The page of a segmentation model after ``image`` is uploaded (with the scale
    ``px_per_mm`` typed in when given): the mask overlay and the width table are shown; the
    page is saved to ``shot``. Returns the page (``expect``: Playwright's)."""
    page = browser.new_page(viewport={"width": 1100, "height": 820})
    page.goto(url + "/")
    expect(page.locator("#model-info")).to_contain_text("segmentation")
    expect(page.locator("#scale-field")).to_be_visible()
    if px_per_mm is not None:
        page.fill("#px-per-mm", str(px_per_mm))
    page.set_input_files("#file", str(image))
    overlay = page.locator("#overlay")
    expect(overlay).to_be_visible(timeout=60_000)
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    width = page.locator("#width")
    expect(width).to_be_visible()
    expect(width).to_contain_text("Mean width")
    expect(page.locator("#fraction")).to_contain_text("Crack fraction")
    page.screenshot(path=str(shot), full_page=True)
    return page


def test_page_in_chromium(server: str, tmp_path: Path) -> None:
    sync_api = _playwright()

    sample = render_sample(np.random.default_rng(3), 160, "concrete", True)
    crack_png = tmp_path / "crack.png"
    Image.fromarray(sample.image).save(crack_png)
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    tiff = io.BytesIO()
    Image.fromarray(render_sample(np.random.default_rng(4), 96, "rock", False).image).save(
        tiff, "TIFF"
    )

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            requests_elsewhere = []
            local = (server, "blob:", "data:")  # object URLs and inline images are local
            page.on(
                "request",
                lambda r: None if r.url.startswith(local) else requests_elsewhere.append(r.url),
            )
            page.goto(server + "/")
            sync_api.expect(page.locator("#model-info")).to_contain_text("simple_cnn")

            # Pick the synthetic crack image: the class, a bar per class, then the heat map.
            page.set_input_files("#file", str(crack_png))
            label = page.locator("#label")
            sync_api.expect(label).not_to_have_text("…", timeout=30_000)
            shown = label.inner_text().strip()
            assert shown in CLASSES
            assert page.locator("#bars li").count() == 2
            assert page.locator("#confidence").inner_text().endswith("%")
            toggle = page.locator("#show-overlay")
            sync_api.expect(toggle).to_be_enabled(timeout=30_000)
            sync_api.expect(page.locator("#overlay")).to_be_visible()
            assert page.locator("#overlay").get_attribute("src").startswith("data:image/png")
            assert shown == "crack"
            sync_api.expect(page.locator("#width")).to_be_visible()
            sync_api.expect(page.locator("#width")).to_contain_text("Maximum width")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            toggle.uncheck()
            sync_api.expect(page.locator("#preview")).to_be_visible()
            sync_api.expect(page.locator("#overlay")).to_be_hidden()

            # A file that is not an image: the API's message is shown to the user.
            page.set_input_files("#file", str(not_image))
            error = page.locator("#error")
            sync_api.expect(error).to_be_visible(timeout=30_000)
            sync_api.expect(error).to_contain_text("HTTP 422")
            sync_api.expect(error).to_contain_text("notes.png")
            page.screenshot(path=str(tmp_path / "error.png"), full_page=True)

            # Drag and drop a TIFF (browsers cannot show it): the server renders the preview.
            page.evaluate(
                """([b64, name]) => {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    const dt = new DataTransfer();
                    dt.items.add(new File([bytes], name, { type: "image/tiff" }));
                    const drop = document.getElementById("drop");
                    drop.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true }));
                }""",
                [base64.b64encode(tiff.getvalue()).decode(), "rock.tif"],
            )
            sync_api.expect(page.locator("#file-name")).to_have_text("rock.tif")
            sync_api.expect(error).to_be_hidden()
            sync_api.expect(label).not_to_have_text("…", timeout=30_000)
            assert label.inner_text().strip() in CLASSES
            sync_api.expect(toggle).to_be_enabled(timeout=30_000)
            toggle.uncheck()
            preview = page.locator("#preview")
            assert preview.get_attribute("src").startswith("data:image/png")
            width = page.evaluate("document.getElementById('preview').naturalWidth")
            assert width == 96
            page.screenshot(path=str(tmp_path / "tiff.png"), full_page=True)
            assert requests_elsewhere == []  # everything came from the server itself
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


@pytest.mark.parametrize("server", [API_KEY], ids=["api-key"], indirect=True)
def test_page_asks_for_the_api_key(server: str, tmp_path: Path) -> None:
    """A server started with a key: the page asks for it, keeps it for the tab and sends it."""
    sync_api = _playwright()
    crack_png = tmp_path / "crack.png"
    Image.fromarray(render_sample(np.random.default_rng(3), 96, "concrete", True).image).save(
        crack_png
    )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server + "/")
            form = page.locator("#key-form")
            sync_api.expect(form).to_be_visible()
            page.fill("#api-key", "wrong")
            page.click("#key-form button")
            sync_api.expect(page.locator("#key-help")).to_contain_text("refused")
            page.fill("#api-key", API_KEY)
            page.click("#key-form button")
            sync_api.expect(page.locator("#model-info")).to_contain_text("simple_cnn")
            sync_api.expect(form).to_be_hidden()
            page.set_input_files("#file", str(crack_png))
            label = page.locator("#label")
            sync_api.expect(label).not_to_have_text("…", timeout=30_000)
            assert label.inner_text().strip() in CLASSES
            sync_api.expect(page.locator("#show-overlay")).to_be_enabled(timeout=30_000)
            # Kept for the tab: a reload needs no key again.
            page.reload()
            sync_api.expect(page.locator("#model-info")).to_contain_text("simple_cnn")
            assert page.evaluate("sessionStorage.getItem('fracturekit-api-key')") == API_KEY
        finally:
            browser.close()


def test_segmentation_page_in_chromium(seg_server: str, tmp_path: Path) -> None:
    """A segmentation model: the mask over the photo, the crack fraction, the width table in
    px and mm; a bad scale is refused on the page."""
    sync_api = _playwright()
    crack_png = tmp_path / "crack.png"
    Image.fromarray(render_sample(np.random.default_rng(3), 160, "concrete", True).image).save(
        crack_png
    )
    shot = tmp_path / "page_segment.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = segment_page(sync_api.expect, browser, seg_server, crack_png, shot, px_per_mm=4)
            assert page.locator("#label").inner_text().strip() == "crack"
            assert page.locator("#fraction").inner_text().endswith("100.0% of the image")
            assert page.locator("#bars li").count() == 0  # no class bars for a mask
            sync_api.expect(page.locator("#bars-title")).to_be_hidden()
            rows = page.locator("#width-rows")
            sync_api.expect(rows).to_contain_text("Total length")
            sync_api.expect(rows).to_contain_text("mm)")
            sync_api.expect(page.locator("#width-note")).to_contain_text("predicted mask")
            shown = page.evaluate("document.getElementById('overlay').naturalWidth")
            assert shown == 160
            toggle = page.locator("#show-overlay")
            sync_api.expect(toggle).to_be_enabled()
            toggle.uncheck()
            sync_api.expect(page.locator("#preview")).to_be_visible()

            # A scale that is not a positive number is refused before anything is sent.
            page.fill("#px-per-mm", "-1")
            page.set_input_files("#file", str(crack_png))
            sync_api.expect(page.locator("#error")).to_contain_text("scale")
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def main(argv: list[str] | None = None) -> int:
    """Save the page of a segmentation model after one upload (the README's screenshot)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("checkpoint", type=Path, help="a segmentation model.pt")
    parser.add_argument("image", type=Path, help="the photo to upload")
    parser.add_argument("--out", type=Path, default=Path("docs/page_segment.png"))
    parser.add_argument("--px-per-mm", type=float, default=None, help="scale typed in the page")
    args = parser.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as folder,
        serve_process(args.checkpoint, Path(folder)) as url,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            segment_page(expect, browser, url, args.image, args.out, args.px_per_mm)
        finally:
            browser.close()
    # 256 colours: a third of the size, for a file kept in the repository.
    shot = Image.open(args.out).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    shot.save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
