"""The `web` folder in Chromium against `predict` (state, label, probability; the network's number
for an image not assessed), with its size, load time and ms per image.

40 official test copies (both classes; the 8 nearest the threshold among the first 200 of
each class, then every tenth of those), the 4 DICOM kinds tests/test_web_browser.py builds from
one of them, and the full-resolution originals when `--fullres` holds them; each scored by the
page (served by Python's `http.server`, one WebAssembly thread: no cross-origin isolation) and
by `predict` with the same model (the shipped one by default).

Run: `.venv/bin/python benchmarks/web_page.py [--fullres ../shared/data/kermany_fullres_sample]`
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_serve_browser import read_cards  # noqa: E402
from test_web_browser import CHROMIUM, CHROMIUM_ARGS, _dicoms  # noqa: E402

from pneumonia_cxr.inference.predictor import Predictor  # noqa: E402
from pneumonia_cxr.model.shipped import default_model_path  # noqa: E402
from pneumonia_cxr.web import write_web_folder  # noqa: E402


def _choose(predictor: Predictor, test: Path) -> list[Path]:
    pool = sorted((test / "NORMAL").iterdir())[:200] + sorted((test / "PNEUMONIA").iterdir())[:200]
    p = predictor.score_files(pool).scores.probabilities
    near = [pool[i] for i in np.argsort(np.abs(p - predictor.threshold))[:8]]
    return near + [f for f in pool[::10] if f not in near][:32]


def main() -> None:
    shared = ROOT.parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=shared / "kermany_224")
    parser.add_argument("--fullres", type=Path)
    parser.add_argument("--model_path", type=Path)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    model = args.model_path or default_model_path()
    predictor = Predictor.open(model, device="cpu")
    work = Path(tempfile.mkdtemp(prefix="web-page-"))
    written = write_web_folder(work / "site", model)
    xrays = _choose(predictor, args.data / "test")
    dicoms = _dicoms(np.asarray(Image.open(xrays[-1]).convert("L")), work)
    originals = sorted(args.fullres.rglob("*.jpeg")) if args.fullres else []
    files = [*xrays, *dicoms, *originals]
    expected = {}
    for path in files:
        [batch] = list(predictor.iter_files([path]))
        [result] = predictor.results(batch.scores, batch.facts)
        expected[path.name] = result

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(work))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        started = time.perf_counter()
        page.goto(f"http://127.0.0.1:{server.server_port}/site/")
        page.wait_for_selector("body[data-ready=true]", timeout=120_000)
        load_s = time.perf_counter() - started
        timings = {}
        for group, chosen in (("copies", xrays), ("dicom", dicoms), ("originals", originals)):
            if not chosen:
                continue
            before = page.get_attribute("body", "data-scored") or "0"
            started = time.perf_counter()
            page.set_input_files("#file", [str(p) for p in chosen])
            page.wait_for_selector(f"body[data-scored='{int(before) + 1}']", timeout=600_000)
            timings[group] = (time.perf_counter() - started) / len(chosen) * 1000
            shown = read_cards(page)
            numbers = {r["name"]: r for r in page.evaluate("PneumoniaPage.lastResults")}
            report = []
            for path in chosen:
                result, card = expected[path.name], shown[path.name]
                same = card["state"] == result.state and (card["label"] or "") == result.label
                key = "probability" if result.assessed else "unassessed_probability"
                number = result.probabilities["pneumonia"]
                report.append((same, abs(numbers[path.name][key] - number)))
            same = sum(ok for ok, _ in report)
            largest = max(d for _, d in report)
            print(
                f"{group}: {same}/{len(chosen)} same states and labels, max |dP| {largest:.2e}, "
                f"{timings[group]:.0f} ms per image"
            )
        browser.close()
    server.shutdown()
    print(
        json.dumps(
            {
                "folder_mb": round(written["bytes"] / 2**20, 1),
                "load_s": round(load_s, 2),
                "ms_per_image": {k: round(v) for k, v in timings.items()},
            }
        )
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
