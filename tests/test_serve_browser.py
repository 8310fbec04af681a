"""The page in a real browser: Debian's Chromium driven by Playwright against `pneumonia-cxr serve`.

`.ci/run` installs Chromium (apt-get) when it is missing, so this runs in CI; elsewhere it is
skipped only when no Chromium binary exists, with the command that installs one.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from test_serve import xray  # noqa: F401  (shared fixture)

from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.shipped import default_model_path
from pneumonia_cxr.predict import predict_paths
from pneumonia_cxr.serve.app import TOKEN_ENV_VAR

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a closed network: no background services that would try to reach Google.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TOKEN = "s3cret-token"


@pytest.fixture
def server(tmp_path: Path):
    """The shipped model (whose OOD guard flags photos), behind an access token."""
    port = _free_port()
    command = [sys.executable, "-m", "pneumonia_cxr.cli", "serve"]
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [*command, "--port", str(port), "--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, TOKEN_ENV_VAR: TOKEN},
    )
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            try:
                request = urllib.request.Request(
                    f"{base}/ready", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() - started < 60, "server not ready within 60 s"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _astronaut_png() -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium`")
def test_page_shows_predicts_probability_and_errors_in_words(
    server: str,
    xray: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The token asked once; the model's scope in one sentence; predict's probability as a
    percentage; the astronaut photograph gets no label and the colour reason; an unreadable file
    an error in words; nothing leaves the server."""
    from playwright.sync_api import sync_playwright

    [expected] = predict_paths(Predictor.open(default_model_path(), device="cpu"), [xray])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requested: list[str] = []
            dialogs: list[str] = []
            page.on("request", lambda request: requested.append(request.url))

            def answer(dialog) -> None:
                dialogs.append(dialog.message)
                dialog.accept(TOKEN)

            page.on("dialog", answer)
            page.goto(server)
            assert page.locator("input#file[type=file]").count() == 1
            page.locator("#model").filter(has_text="chosen on validation").wait_for(timeout=30_000)
            scope = page.locator("[data-testid=scope]")
            assert scope.is_visible() and "Trained and tested on" in scope.text_content()
            assert "calibrate" in scope.text_content()

            page.set_input_files("#file", str(xray))
            shown = page.locator("[data-testid=probability]").first
            shown.wait_for(timeout=60_000)
            exact = float(shown.get_attribute("data-value"))
            assert exact == pytest.approx(expected.probability, abs=1e-4)
            assert shown.text_content() == f"{100 * exact:.1f}%"
            label = page.locator("[data-testid=label]").first.text_content()
            assert label == expected.label
            kind = page.locator("[data-testid=pneumonia-type]")
            if expected.pneumonia_type:  # the shipped model names the type of a PNEUMONIA
                assert f"likely {expected.pneumonia_type.lower()}" in kind.first.text_content()
            else:
                assert kind.count() == 0
            page.wait_for_timeout(300)  # let the overlay image paint
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert (tmp_path / "page.png").stat().st_size > 10_000

            page.set_input_files(
                "#file",
                files=[
                    {"name": "astronaut.png", "mimeType": "image/png", "buffer": _astronaut_png()}
                ],
            )
            verdict = page.locator("[data-testid=label]").first
            verdict.filter(has_text="not assessed").wait_for(timeout=60_000)
            assert page.locator(".label-PNEUMONIA, .label-NORMAL").count() == 0
            assert "colour image" in page.locator("[data-testid=reason]").first.text_content()
            assert page.locator("[data-testid=pneumonia-type]").count() == 0
            details = page.locator("#results details").first
            assert details.get_attribute("open") is None  # the probability stays folded away
            assert "PNEUMONIA" not in page.locator("#results").inner_text()  # nothing visible

            page.set_input_files(
                "#file",
                files=[{"name": "notes.jpeg", "mimeType": "image/jpeg", "buffer": b"not an image"}],
            )
            error = page.locator("[data-testid=error]").first
            error.wait_for(timeout=30_000)
            assert "not JPEG, PNG or DICOM" in error.text_content()
            page.screenshot(path=str(tmp_path / "page_error.png"), full_page=True)
            assert len(dialogs) == 1, dialogs  # the token is asked once per tab
        finally:
            browser.close()
    external = [url for url in requested if not url.startswith((server, "data:", "blob:"))]
    assert not external, external
