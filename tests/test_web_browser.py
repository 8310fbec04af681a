"""`pneumonia-cxr web`: the static folder, served by a plain static file server, scores in
Chromium with the results of `predict` (state, label, probability, reasons and their figures),
offline once loaded, sends no image anywhere, gives a photo, a scanned page, the astronaut and an
adult's DICOM no label and no heatmap, and survives bad files (errors in words) and a damaged
model.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import re
import shutil
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_loader import dicom_bytes
from test_serve_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    assert_in_words,
    assert_likely_only_above_half,
    assert_not_assessed_card,
    read_cards,
)

from pneumonia_cxr.cli import main

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium`"),
    pytest.mark.realdata,
]


@pytest.fixture(scope="module")
def web_folder(tmp_path_factory) -> Path:
    from pneumonia_cxr.web import WebExportError, node_modules

    try:
        node_modules()
    except WebExportError as error:
        pytest.skip(f"no browser libraries: {error}")  # `make install` runs `npm ci`
    folder = tmp_path_factory.mktemp("web") / "site"
    try:
        assert main(["web", str(folder)]) == 0
    except SystemExit:
        pytest.fail("web failed")
    return folder


@pytest.fixture(scope="module")
def static_server(web_folder: Path) -> Iterator[str]:
    """`python3 -m http.server`'s handler: no special headers, no cross-origin isolation."""
    root = web_folder.parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (  # noqa: E731
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def _pick_xrays(real_data_root: Path, predictor, n: int = 12, near: int = 3) -> list[Path]:
    """Both classes, `near` of them within 0.1 of the threshold (the hardest to agree on)."""
    test = real_data_root / "test"
    pool = sorted((test / "NORMAL").iterdir())[:60] + sorted((test / "PNEUMONIA").iterdir())[:60]
    scores = predictor.score_files(pool).scores.probabilities
    gap = np.abs(scores - predictor.threshold)
    close = [pool[i] for i in np.argsort(gap)[:near]]
    rest = [p for p in pool[::10] if p not in close][: n - near]
    return close + rest


GOLDEN = Path(__file__).parent / "golden" / "preprocessing.json"
GOLDEN_JS = """async ([encoded, name]) => {
    const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
    const { input, gray } = await BrowserScorer.modelInput(await BrowserScorer.decode(bytes, name));
    const hex = async (array) => [...new Uint8Array(await crypto.subtle.digest("SHA-256",
        new Uint8Array(array.buffer, array.byteOffset, array.byteLength)))]
        .map((b) => b.toString(16).padStart(2, "0")).join("");
    return { uint8: await hex(gray), float32: await hex(input) };
}"""


def _dicoms(gray: np.ndarray, folder: Path) -> list[Path]:
    """One real X-ray as the four kinds of DICOM a PACS exports: 8- and 16-bit, MONOCHROME2
    and MONOCHROME1 (inverted storage), with a rescale and a window on the 16-bit ones."""
    wide = gray.astype(np.uint16) * 16 + 100
    files = {
        "mono2_8bit.dcm": dicom_bytes(gray),
        "mono1_8bit.dcm": dicom_bytes(255 - gray, photometric="MONOCHROME1"),
        "mono2_16bit.dcm": dicom_bytes(
            wide, RescaleSlope=2, RescaleIntercept=-50, WindowCenter=4200, WindowWidth=7000
        ),
        "mono1_16bit.dcm": dicom_bytes(4500 - wide, photometric="MONOCHROME1"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def _scored(predictor, paths: list[Path]):
    batch = predictor.iter_files(paths, batch_size=len(paths))
    [scored] = list(batch)
    return scored.scores, scored.facts


PLAIN_RESULTS_JS = """PneumoniaPage.lastResults.map(r => Object.fromEntries(
    Object.entries(r).filter(([key]) => !/png_base64$|^cam$/.test(key))))"""
"""The result JSON behind the cards, less its pictures."""


def _compared(result: dict) -> dict:
    """The result JSON's fields a page must agree on (not its name)."""
    return {k: v for k, v in result.items() if k != "name"}


CHROMA = re.compile(r"chroma (\d+\.\d)")


def _same_result(ours: dict, theirs: dict) -> None:
    """The browser's result JSON against `service.result_json`: same keys, same words and
    figures (the colour figure, measured on a differently resampled copy, within 0.5),
    numbers within 0.01."""
    assert sorted(ours) == sorted(theirs), (ours, theirs)
    for key, value in theirs.items():
        if key == "details":
            assert [CHROMA.sub("chroma ~", d) for d in ours[key]] == [
                CHROMA.sub("chroma ~", d) for d in value
            ], (ours, theirs)
            ours_chroma = [float(c) for d in ours[key] for c in CHROMA.findall(d)]
            their_chroma = [float(c) for d in value for c in CHROMA.findall(d)]
            assert ours_chroma == pytest.approx(their_chroma, abs=0.5), (ours, theirs)
        elif isinstance(value, float) and not isinstance(value, bool):
            assert ours[key] == pytest.approx(value, abs=0.01), (key, ours, theirs)
        elif isinstance(value, dict):
            assert ours[key] == pytest.approx(value), key
        else:
            assert ours[key] == value, (key, ours, theirs)


def test_the_static_folder_scores_like_predict_offline_and_keeps_images_local(
    web_folder: Path, static_server: str, real_data_root: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.model.intended_use import REASON_WORDS
    from pneumonia_cxr.model.shipped import default_model_path
    from pneumonia_cxr.serve.service import result_json

    predictor = Predictor.open(default_model_path(), device="cpu")
    xrays = _pick_xrays(real_data_root, predictor)
    skimage_data = pytest.importorskip("skimage.data")
    cat, page_scan = tmp_path / "cat.jpeg", tmp_path / "scanned_page.png"
    astronaut, adult = tmp_path / "astronaut.png", tmp_path / "adult.dcm"
    Image.fromarray(skimage_data.chelsea()).save(cat, quality=90)
    Image.fromarray(skimage_data.page()).save(page_scan)
    Image.fromarray(skimage_data.astronaut()).save(astronaut)
    bad = {
        "notes.jpeg": b"this is a text file, not an image\n",
        "truncated.jpeg": xrays[0].read_bytes()[:4000],
        "bomb.png": _png_header(60000, 60000),
        "empty.png": b"",
    }
    gray = np.asarray(Image.open(xrays[-1]).convert("L"))
    adult.write_bytes(dicom_bytes(gray, PatientAge="045Y", ViewPosition="AP"))
    bad["no_pixels.dcm"] = dicom_bytes(gray, with_pixels=False)
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    dicoms = _dicoms(gray, tmp_path)
    scored = [*xrays, *dicoms, adult, cat, page_scan, astronaut]
    expected = predictor.results(*_scored(predictor, scored))
    uploads = [*scored, *(tmp_path / name for name in bad)]

    requests: list[tuple[str, str, bytes | None]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        context.on("request", lambda r: requests.append((r.method, r.url, r.post_data_buffer)))
        page = context.new_page()
        page.goto(f"{static_server}/site/")
        page.wait_for_selector("body[data-ready=true]", timeout=90_000)
        assert "shipped with pneumonia-cxr" in page.inner_text("#model")
        assert "never leave this device" in page.inner_text("#privacy")
        scope = page.inner_text("[data-testid=scope]")
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")  # cached for offline
        context.set_offline(True)  # from here on, nothing may be fetched
        page.set_input_files("#file", [str(p) for p in uploads])
        page.wait_for_selector("body[data-scored='1']", timeout=120_000)
        summary = page.inner_text("[data-testid=summary]")
        results = page.evaluate(PLAIN_RESULTS_JS)
        shown = read_cards(page)
        type_toggle_shown = page.is_visible("#type-toggle")
        page.uncheck("#heatmaps")  # every card its image: a DICOM's decoded film, never a map
        unmapped = read_cards(page)
        page.check("#heatmaps")

        page.reload()  # offline: the service worker serves the page, the model, the runtime
        page.wait_for_selector("body[data-ready=true]", timeout=90_000)
        page.set_input_files("#file", [str(xrays[0])])
        page.wait_for_selector("body[data-scored='1']", timeout=60_000)
        reloaded = page.eval_on_selector("[data-testid=probability]", "e => e.dataset.value")
        golden = json.loads(GOLDEN.read_text())
        computed = [
            page.evaluate(
                GOLDEN_JS,
                [base64.b64encode((real_data_root / v["file"]).read_bytes()).decode(), v["file"]],
            )
            for v in golden["vectors"]
        ]

        # Damaged model: the sha256 check stops it with a message, the page does not hang.
        damaged = web_folder.parent / "damaged"
        shutil.copytree(web_folder, damaged)
        document = json.loads((damaged / "model" / "model.json").read_text())
        document["sha256"] = "0" * 64
        (damaged / "model" / "model.json").write_text(json.dumps(document))
        context.set_offline(False)
        other = context.new_page()
        other.goto(f"{static_server}/damaged/")
        other.wait_for_selector("#model[data-testid=error]", timeout=60_000)
        damaged_text = other.inner_text("#model")
        browser.close()

    assert scope == predictor.engine.intended_use.scope_sentence()
    assert "sha256 check" in damaged_text
    assert_in_words(damaged_text)
    assert len(shown) == len(uploads) == len(results)
    # The browser's result JSON is the service's (`Predictor.results` -> `result_json`).
    by_name = {r["name"]: r for r in results}
    outputs = predictor.outputs
    largest = 0.0
    for path, result in zip(scored, expected, strict=True):
        ours, card = by_name[path.name], shown[path.name]
        _same_result(
            _compared(ours), json.loads(json.dumps(result_json(result, outputs, predictor)))
        )
        if result.assessed:
            assert card["label"] == result.label and card["state"] == "assessed", card
            largest = max(largest, abs(float(card["p"]) - result.probability))
        else:
            assert_not_assessed_card(card)
            assert card["reasons"] == list(dict.fromkeys(r.words for r in result.refusals))
    assert largest <= 0.01, largest
    assert abs(float(reloaded) - expected[0].probability) <= 0.01  # offline, after a reload
    for name in (cat.name, page_scan.name, astronaut.name, adult.name):
        assert shown[name]["state"] == "not assessed", shown[name]
    assert REASON_WORDS["colour"] in shown[astronaut.name]["reasons"]
    assert REASON_WORDS["age"] in shown[adult.name]["reasons"]
    assert "PatientAge 045Y = 45.0 years" in " ".join(by_name[adult.name]["details"])
    assert_likely_only_above_half(shown.values())
    assessed = sum(r.assessed for r in expected)
    assert summary.startswith(
        f"{assessed} assessed, {len(expected) - assessed} not assessed, {len(bad)} errors; "
    ), summary
    # With heatmaps off a DICOM card shows its decoded film (a PNG), a photo its own file.
    pictures = unmapped
    for path in [*dicoms, adult]:
        assert pictures[path.name]["kind"] == "image"
        assert pictures[path.name]["src"].startswith("data:image/png;base64,"), path.name
        assert pictures[path.name]["src"] == pictures[path.name]["original"]
    assert all(pictures[p.name]["src"].startswith("blob:") for p in xrays)

    # The heatmap: the graph's Grad-CAM (export.head_gradcam) against pytorch-grad-cam's.
    import torch

    from pneumonia_cxr.explain.gradcam import model_cams
    from pneumonia_cxr.model.model_file import load_model

    bundle = load_model(default_model_path())
    inputs = torch.from_numpy(np.stack([predictor.load_input(p)[0] for p in xrays]))
    reference = model_cams(bundle.model, inputs)
    correlations = []
    for path, expected_map in zip(xrays, reference, strict=True):
        assert shown[path.name]["overlay"].startswith("data:image/png;base64,")
        assert shown[path.name]["kind"] in ("heatmap", "type-heatmap")
        cam = json.loads(shown[path.name]["cam"])
        grid = np.array(cam["values"], dtype=np.float32).reshape(cam["height"], cam["width"])
        size = expected_map.shape[::-1]
        upsampled = np.asarray(Image.fromarray(grid, "F").resize(size, Image.Resampling.BILINEAR))
        correlations.append(np.corrcoef(upsampled.ravel(), expected_map.ravel())[0, 1])
    assert min(correlations) >= 0.9, correlations
    assert type_toggle_shown  # the type's heatmap: the second toggle
    # The browser's implementation of the input contract gives the golden vectors bit for bit.
    for vector, ours in zip(golden["vectors"], computed, strict=True):
        assert ours["uint8"] == vector["uint8_sha256"], vector["file"]
        assert ours["float32"] == vector["float32_sha256"], vector["file"]
    errors = {name: shown[name]["error"] or "" for name in bad}
    for text in errors.values():
        assert text.startswith("Could not read this image: "), errors
        assert_in_words(text)
    assert "not JPEG, PNG or DICOM" in errors["notes.jpeg"], errors
    assert "truncated" in errors["truncated.jpeg"], errors
    assert "decompression bomb" in errors["bomb.png"], errors
    assert "empty" in errors["empty.png"], errors
    assert "no PixelData" in errors["no_pixels.dcm"], errors

    # Every request went to the static server, none carried a body (no image left the page).
    # (blob: URLs are the page's own thumbnails of the chosen files, held in the tab's memory)
    outside = [u for _, u, _ in requests if not u.removeprefix("blob:").startswith(static_server)]
    assert requests and not outside, outside
    assert {method for method, _, _ in requests} <= {"GET", "HEAD"}
    assert all(body is None for _, _, body in requests)


def test_web_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("someone's file")
    assert main(["web", str(tmp_path)]) == 2
    assert "not written by `pneumonia-cxr web`" in capsys.readouterr().err
