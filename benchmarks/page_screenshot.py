"""The README's screenshot of the page: `pneumonia-cxr serve` with the shipped model, two test
X-rays and a photo uploaded in Debian's Chromium (Playwright), the page saved as a PNG.

Run: `.venv/bin/python benchmarks/page_screenshot.py [--output assets/serve_page.png]`
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            raise SystemExit("the server stopped")
        time.sleep(0.3)
    raise SystemExit("the server was not ready within 120 s")


def _photo() -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany_224"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared)
    parser.add_argument("--output", type=Path, default=Path("assets/serve_page.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no Chromium: apt-get install chromium")
    xrays = [
        sorted((args.data / "test" / name).glob("*.jpeg"))[0] for name in ("PNEUMONIA", "NORMAL")
    ]
    port = _free_port()
    command = [sys.executable, "-m", "pneumonia_cxr.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(base)
            page.locator("#model").filter(has_text="validation").wait_for(timeout=60_000)
            files = [
                {"name": x.name, "mimeType": "image/jpeg", "buffer": x.read_bytes()} for x in xrays
            ]
            files.append({"name": "cat.png", "mimeType": "image/png", "buffer": _photo()})
            page.set_input_files("#file", files=files)
            page.locator("[data-testid=label]").nth(2).wait_for(timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(args.output), full_page=True)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=20)
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
