"""The page in a real browser: Debian's Chromium driven by Playwright against `pneumonia-cxr serve`.

`.ci/run` installs Chromium (apt-get) when it is missing, so this runs in CI; elsewhere it is
skipped only when no Chromium binary exists, with the command that installs one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_loader import dicom_bytes

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


CARDS_JS = """cards => cards.map(c => {
    const img = c.querySelector("img");
    return {
        name: c.querySelector(".name").textContent,
        state: c.dataset.state,
        label: c.querySelector("[data-testid=label]")?.textContent ?? null,
        p: c.querySelector("[data-testid=probability]")?.dataset.value ?? null,
        error: c.querySelector("[data-testid=error]")?.textContent ?? null,
        reasons: [...c.querySelectorAll("[data-testid=reason]")].map(e => e.textContent),
        type: c.querySelector("[data-testid=pneumonia-type]")?.textContent ?? null,
        detailsOpen: [...c.querySelectorAll("details")].some(d => d.open),
        visible: c.innerText,
        kind: img?.dataset.kind ?? null,
        src: img?.getAttribute("src") ?? null,
        original: img?.dataset.original ?? null,
        overlay: img?.dataset.overlay ?? null,
        typeOverlay: img?.dataset.typeOverlay ?? null,
        cam: img?.dataset.cam ?? null,
        loaded: img ? img.complete && img.naturalWidth > 0 : null,
    };
})"""
"""What each result card shows (both pages' tests read cards with it)."""

_JARGON = re.compile(r"\b[A-Z]\w*(Error|Exception)\b|max_pixels|max_upload|b'|`|\s--\w|pip install")


def read_cards(page) -> dict[str, dict]:
    """Every result card on the page, by file name (`CARDS_JS`)."""
    return {c["name"]: c for c in page.eval_on_selector_all("[data-testid=result]", CARDS_JS)}


def assert_in_words(text: str) -> None:
    """An error as a clinician reads it: no class names, options, bytes or commands."""
    assert text and not _JARGON.search(text), text


def assert_likely_only_above_half(cards) -> None:
    """ "likely <type> (NN%)" only where NN >= 50."""
    for card in cards:
        said = card["type"] or ""
        if "likely" in said:
            share = re.search(r"\((\d+(?:\.\d+)?)%\)", said)
            assert share and float(share.group(1)) >= 50.0, said


def assert_not_assessed_card(card: dict) -> None:
    """No label, no heatmap of either kind, the reasons each once, figures folded away."""
    assert card["state"] == "not assessed" and card["label"] is None and card["p"] is None, card
    assert card["kind"] == "image" and card["overlay"] == "" and card["typeOverlay"] == "", card
    assert card["cam"] is None and card["type"] is None, card
    assert card["reasons"] and len(set(card["reasons"])) == len(card["reasons"]), card
    assert not card["detailsOpen"] and "details" in card["visible"], card
    assert not re.search(r"\b(NORMAL|PNEUMONIA)\b", card["visible"]), card["visible"]
    assert card["loaded"], card  # the image itself (a DICOM: its decoded film), never broken


def _files(real_data_root: Path, folder: Path) -> list[Path]:
    """A NORMAL and a PNEUMONIA test copy, the NORMAL one as a child's DICOM and as a
    45-year-old's, the astronaut photograph, and three unreadable files."""
    from skimage import data

    test = real_data_root / "test"
    normal = sorted((test / "NORMAL").glob("*.jpeg"))[0]
    pneumonia = sorted((test / "PNEUMONIA").glob("*.jpeg"))[0]
    gray = np.asarray(Image.open(normal).convert("L"))
    made = {
        "child.dcm": dicom_bytes(gray, PatientAge="003Y", ViewPosition="AP"),
        "adult.dcm": dicom_bytes(gray, PatientAge="045Y", ViewPosition="AP"),
        "empty.png": b"",
        "notes.jpeg": b"not an image",
        "broken.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d%PDF" + b"x" * 40,
    }
    for name, content in made.items():
        (folder / name).write_bytes(content)
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    readable = [normal, pneumonia, folder / "child.dcm", folder / "adult.dcm"]
    unreadable = [folder / n for n in ("empty.png", "notes.jpeg", "broken.png")]
    return [*readable, folder / "astronaut.png", *unreadable]


# Messages the server may send (loader, app, load errors) and what the page must make of them.
SERVER_WORDS = {
    "100000x100000 = 10,000,000,000 pixels exceeds the limit of 100,000,000 (likely a "
    "decompression bomb); downscale it or raise max_pixels if it is genuine": "100000x100000 = "
    "10,000,000,000 pixels exceeds the limit of 100,000,000 (likely a decompression bomb); "
    "downscale it",
    "starts like a PNG but its header is damaged (broken PNG file (chunk b'%PDF')); re-export "
    "the file": "starts like a PNG but its header is damaged (broken PNG file); re-export the file",
    "the upload is 40.0 MB or more; the limit is 32 MB (`pneumonia-cxr serve --max_upload_mb N` "
    "raises it)": "the upload is 40.0 MB or more; the limit is 32 MB",
    "pixel data compressed as 'JPEG 2000', which no installed pydicom plugin decodes; `pip "
    "install pylibjpeg` or re-export the file uncompressed (pydicom says: no decoder)": "pixel "
    "data compressed as 'JPEG 2000', which no installed pydicom plugin decodes; re-export the "
    "file uncompressed",
    "ModelFileError: /m/model.pt: model file not found; train one with `pneumonia-cxr train`": (
        "/m/model.pt: model file not found"
    ),
}


@pytest.mark.realdata
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium`")
def test_page_shows_results_states_and_errors_in_words(
    server: str, real_data_root: Path, tmp_path: Path
) -> None:
    """The token asked once; the model's scope from its intended-use record; one batch: a NORMAL
    and a PNEUMONIA copy with predict's label and probability and a heatmap, a child's DICOM
    shown as its decoded film, the astronaut and an adult's DICOM "not assessed" with their
    reasons and no label or heatmap, three unreadable files in words, a summary line; "likely"
    only beside 50% or more; the toggles keep their place; nothing leaves the server."""
    from playwright.sync_api import sync_playwright

    from pneumonia_cxr.model.intended_use import REASON_WORDS

    files = _files(real_data_root, tmp_path)
    predictor = Predictor.open(default_model_path(), device="cpu")
    expected = {Path(r.path).name: r for r in predict_paths(predictor, files)}
    scope_expected = predictor.engine.intended_use.scope_sentence()
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
            toggle = page.locator("#type-toggle")  # there from the start: no layout jump
            assert toggle.evaluate("e => getComputedStyle(e).display") != "none"
            page.locator("#model").filter(has_text="chosen on validation").wait_for(timeout=30_000)
            scope = page.locator("[data-testid=scope]")
            assert scope.is_visible() and scope.text_content() == scope_expected
            assert "`" not in scope_expected and "pneumonia-cxr" not in scope_expected
            assert toggle.is_visible() and page.is_enabled("#type-heatmaps")
            one_line = page.locator("label.toggle").first.bounding_box()["height"]
            assert toggle.bounding_box()["height"] <= one_line + 1  # its label does not wrap
            top = page.locator("#results").bounding_box()["y"]
            toggle.evaluate("e => e.classList.add('off')")
            assert page.locator("#results").bounding_box()["y"] == top
            toggle.evaluate("e => e.classList.remove('off')")
            assert "not a diagnosis" in page.inner_text("[data-testid=legend]")
            words = {
                text: page.evaluate("t => PneumoniaPage.plainError(t)", text)
                for text in SERVER_WORDS
            }
            said = {
                args: page.evaluate("([p, t]) => PneumoniaPage.typeWords(p, t).text", list(args))
                for args in ((0.47, 0.4649), (0.2, 0.4649), (0.9, 0.4649), (0.45, 0.3), (0.7, 0.72))
            }

            page.set_input_files("#file", [str(f) for f in files])
            page.wait_for_selector("body[data-scored='1']", timeout=120_000)
            summary = page.inner_text("[data-testid=summary]")
            page.wait_for_timeout(300)  # let the pictures paint
            cards = read_cards(page)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            page.uncheck("#heatmaps")
            unmapped = read_cards(page)
            page.check("#heatmaps")
            page.check("#type-heatmaps")
            typed = read_cards(page)
            assert len(dialogs) == 1, dialogs  # the token is asked once per tab
        finally:
            browser.close()
    external = [url for url in requested if not url.startswith((server, "data:", "blob:"))]
    assert not external, external
    assert (tmp_path / "page.png").stat().st_size > 10_000

    assert words == SERVER_WORDS
    assert said == {
        (0.47, 0.4649): "type uncertain",  # 47% viral: the named type under 50%
        (0.2, 0.4649): "likely bacterial (80.0%)",
        (0.9, 0.4649): "likely viral (90.0%)",
        (0.45, 0.3): "type uncertain",
        (0.7, 0.72): "type uncertain",  # within 0.05 of the type threshold
    }
    assert len(cards) == len(files)
    counts = {"assessed": 0, "not assessed": 0, "unreadable": 0}
    for path in files:
        card, row = cards[path.name], expected[path.name]
        counts[row.state] += 1
        assert card["state"] == row.state, (card, row)
        if row.state == "assessed":  # predict's label and probability, a heatmap
            exact = float(card["p"])
            assert exact == pytest.approx(row.probability, abs=1e-4)
            assert card["label"] == row.label and f"{100 * exact:.1f}%" in card["visible"]
            assert card["kind"] in ("heatmap", "type-heatmap") and card["overlay"], card
            assert bool(card["type"]) == bool(row.pneumonia_type), (card, row)
            assert unmapped[path.name]["kind"] == "image"
            assert unmapped[path.name]["src"] == unmapped[path.name]["original"]
            if card["typeOverlay"]:
                assert typed[path.name]["kind"] == "type-heatmap"
        elif row.state == "not assessed":
            assert_not_assessed_card(card)
            assert card["reasons"] == list(dict.fromkeys(r.words for r in row.result.refusals))
            assert typed[path.name]["kind"] == "image"
        else:
            assert card["error"].startswith("Could not read this image: ")
            assert_in_words(card["error"])
            assert card["label"] is None and card["src"] is None
    for name in ("normal", "pneumonia"):  # the two test copies are assessed
        [path] = [f for f in files[:2] if name.upper() in str(f.parent.name)]
        assert cards[path.name]["state"] == "assessed"
    assert REASON_WORDS["colour"] in cards["astronaut.png"]["reasons"]
    assert REASON_WORDS["age"] in cards["adult.dcm"]["reasons"]
    for dicom in ("child.dcm", "adult.dcm"):  # the decoded film, never a broken image
        assert unmapped[dicom]["src"].startswith("data:image/png;base64,")
        assert unmapped[dicom]["loaded"] and unmapped[dicom]["kind"] == "image"
    assert "not JPEG, PNG or DICOM" in cards["notes.jpeg"]["error"]
    assert "%PDF" not in cards["broken.png"]["error"]
    assert_likely_only_above_half(cards.values())
    assert summary.startswith(
        f"{counts['assessed']} assessed, {counts['not assessed']} not assessed, "
        f"{counts['unreadable']} errors; "
    ), summary
    assert counts == {"assessed": 3, "not assessed": 2, "unreadable": 3}, counts
