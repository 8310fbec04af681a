"""`pneumonia-cxr web OUT_DIR`: the page as a self-contained static folder that scores in the
browser (ONNX Runtime Web), so that any static server (a hospital intranet, GitHub Pages,
`python3 -m http.server`) can serve it and no image ever leaves the device.

The folder holds the one page the server also serves (`serve/static`: the same `index.html`
and `app.js`, which scores through `static/browser.js` when `model/model.json` is present and
through the server's API otherwise), the model as ONNX with its sha256 and metadata, ONNX
Runtime Web's files, a web app manifest and a service worker (offline after the first visit).
Browser libraries come from the repository's `package.json` (`npm ci`), never downloaded here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from pneumonia_cxr.errors import PneumoniaCxrError
from pneumonia_cxr.model.outputs import output_entries

MARKER = ".pneumonia-cxr-web"
"""Written into the folder: a folder holding it may be rewritten, any other non-empty one not."""

NODE_FILES: dict[str, tuple[str, ...]] = {
    "onnxruntime-web/dist": (
        "ort.wasm.min.js",
        "ort-wasm-simd-threaded.mjs",
        "ort-wasm-simd-threaded.wasm",
    ),
    "dicom-parser/dist": ("dicomParser.min.js",),
}
"""What the page loads from npm packages (package.json pins their versions), by package folder."""

STATIC_FILES = ("app.js", "browser.js", "style.css")
"""Copied as they are into static/; index.html (marked data-mode="browser") and sw.js (with its
cache version) are written from `serve/static` with one line changed."""


class WebExportError(PneumoniaCxrError):
    """The folder cannot be written as asked (names the folder and what to do)."""


def node_modules(start: Path | None = None) -> Path:
    """The `node_modules` folder holding the page's npm packages: $PNEUMONIA_CXR_NODE_MODULES,
    else the nearest one above the current folder or this package (a checkout after `npm ci`)."""
    if env := os.environ.get("PNEUMONIA_CXR_NODE_MODULES"):
        candidates = [Path(env)]
    else:
        places = [start or Path.cwd(), Path(__file__).resolve().parent]
        candidates = [p / "node_modules" for place in places for p in [place, *place.parents]]
    for candidate in candidates:
        if all((candidate / package).is_dir() for package in NODE_FILES):
            return candidate
    raise WebExportError(
        "the page's browser libraries (onnxruntime-web, dicom-parser) were not found: run "
        "`npm ci` in the pneumonia-cxr checkout (package.json), or set "
        "PNEUMONIA_CXR_NODE_MODULES to a node_modules folder that holds them"
    )


def _check_folder(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise WebExportError(f"{out_dir}: exists and is not a folder; choose a new folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise WebExportError(
            f"{out_dir}: the folder is not empty and was not written by `pneumonia-cxr web`; "
            "choose an empty or new folder"
        )


def _prepare(out_dir: Path) -> None:
    _check_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by pneumonia-cxr web\n")


def _icons(out_dir: Path) -> list[dict[str, str]]:
    from PIL import Image, ImageDraw

    icons = []
    for size in (192, 512):
        image = Image.new("RGB", (size, size), (23, 43, 77))
        draw = ImageDraw.Draw(image)
        inset = size // 6
        for left in (inset, size // 2 + size // 24):  # two lung fields
            draw.ellipse(
                (left, inset, left + size // 3 - size // 24, size - inset), fill=(220, 226, 235)
            )
        name = f"icon-{size}.png"
        image.save(out_dir / name)
        icons.append({"src": name, "sizes": f"{size}x{size}", "type": "image/png"})
    return icons


def write_web_folder(out_dir: str | Path, model_path: str | Path) -> dict[str, Any]:
    """Write the static folder for the model at `model_path` (.onnx, or a .pt: its shipped
    twin or cached export); returns what was written (files, model sha256, size in bytes)."""
    from pneumonia_cxr.data.loader import DEFAULT_MAX_PIXELS
    from pneumonia_cxr.inference.engines import OnnxEngine
    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.model import intended_use as use
    from pneumonia_cxr.serve.service import describe_model

    out_dir, model_path = Path(out_dir), Path(model_path)
    _check_folder(out_dir)  # before any work: a folder we must not touch is refused at once
    modules = node_modules()
    predictor = Predictor.open(model_path, engine="onnx", device="cpu")
    engine = predictor.engine
    assert isinstance(engine, OnnxEngine)
    _prepare(out_dir)
    for sub in ("static", "model", "ort", "dicom"):
        (out_dir / sub).mkdir(exist_ok=True)
    static = resources.files("pneumonia_cxr.serve") / "static"
    for name in STATIC_FILES:
        (out_dir / "static" / name).write_bytes((static / name).read_bytes())
    page = (static / "index.html").read_text()
    if page.count("<body>") != 1:
        raise WebExportError("serve/static/index.html must hold one <body> tag")
    (out_dir / "index.html").write_text(page.replace("<body>", '<body data-mode="browser">'))
    for package, names in NODE_FILES.items():
        folder = "ort" if package.startswith("onnxruntime") else "dicom"
        for name in names:
            shutil.copyfile(modules / package / name, out_dir / folder / name)
    model_bytes = engine.path.read_bytes()
    sha256 = hashlib.sha256(model_bytes).hexdigest()
    (out_dir / "model" / "model.onnx").write_bytes(model_bytes)
    description = describe_model(predictor, model_path)
    description.pop("model_path")
    document = {
        "file": "model.onnx",
        "sha256": sha256,
        "metadata": engine.metadata,
        "model": description,
        # The answers this model gives (`model.outputs`) and why an image is not assessed, in
        # the words every other output uses, by kind.
        "outputs": output_entries(predictor.decision),
        "reasons": dict(use.REASON_WORDS),
        "max_pixels": DEFAULT_MAX_PIXELS,
        "header_rules": {"lateral_views": sorted(use.LATERAL_VIEWS), "age_units": use.AGE_UNITS},
    }
    (out_dir / "model" / "model.json").write_text(json.dumps(document, indent=1) + "\n")
    manifest = {
        "name": "Pediatric pneumonia detector",
        "short_name": "Pneumonia CXR",
        "start_url": "./",
        "scope": "./",
        "display": "standalone",
        "background_color": "#ffffff",
        "theme_color": "#172b4d",
        "icons": _icons(out_dir),
    }
    (out_dir / "manifest.webmanifest").write_text(json.dumps(manifest, indent=1) + "\n")
    files = sorted(
        p.relative_to(out_dir).as_posix()
        for p in out_dir.rglob("*")
        if p.is_file() and p.relative_to(out_dir).as_posix() not in (MARKER, "sw.js", "files.json")
    )
    version = hashlib.sha256()
    for name in files:
        version.update(name.encode() + b"\0" + (out_dir / name).read_bytes())
    (out_dir / "sw.js").write_text(
        f'const CACHE = "pneumonia-cxr-{version.hexdigest()[:16]}";\n'
        + (static / "sw.js").read_text()
    )
    files.append("sw.js")
    listing = {"files": ["./", *files, "files.json"]}
    (out_dir / "files.json").write_text(json.dumps(listing, indent=1) + "\n")
    size = sum((out_dir / f).stat().st_size for f in [*files, "files.json"])
    return {"files": len(files) + 1, "bytes": size, "sha256": sha256, "out_dir": str(out_dir)}
