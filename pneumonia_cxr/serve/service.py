"""The model behind the HTTP service: loaded once in the background, fed one batch at a time.

One worker thread runs every model call, so Grad-CAM hooks and PyTorch's thread pool are never
shared between requests; requests wait their turn in a bounded queue (`max_in_flight`), and a
request beyond it is refused at once (503) rather than piling up memory. `/health` never touches
this queue.

Heatmaps (`?gradcam=true`) come from PyTorch Grad-CAM in the full install, and from the ONNX
graph's own Grad-CAM outputs (`cam`, `type_cam`; the `web` page draws the same) where PyTorch is
not installed; only assessed images get one. A DICOM upload also gets `preview_png_base64`: its
decoded image as a small PNG (a browser cannot show DICOM), so the page shows the film it scored.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumonia_cxr.errors import ImageLoadError, ImageTooLargeError, NotAnImageError
from pneumonia_cxr.model.outputs import heatmap_key, output_entries

if TYPE_CHECKING:  # the model loads on the worker thread: the server answers /health first
    import numpy as np

    from pneumonia_cxr.inference.engines import OnnxEngine
    from pneumonia_cxr.inference.predictor import Predictor

log = logging.getLogger(__name__)

OVERLAY_MAX_SIDE = 768
"""Heatmap overlays are sent at most this wide/high: enough to read, small enough to send."""
PREVIEW_MAX_SIDE = 512
"""A DICOM upload's decoded image (`preview_png_base64`) is sent at most this wide/high."""


@dataclass
class ServeConfig:
    model_path: Path | None = None
    """None: the model shipped with the package."""
    max_upload_bytes: int = 32 * 1024 * 1024
    max_files: int = 16
    max_in_flight: int = 64
    """Requests being scored or waiting; beyond it a request gets 503 at once."""
    device: str | None = None
    engine: str = "auto"
    """Scores come from this engine (`Predictor.open`); Grad-CAM overlays from PyTorch."""
    api_token: str | None = None
    """When set, every route but /health, the page and its static files needs
    `Authorization: Bearer <token>` (401 JSON otherwise)."""


class BusyError(Exception):
    """Too many requests in flight."""


def upload_status(error: BaseException) -> int:
    """HTTP status of an unreadable upload: 415 not an image, 413 too many pixels, else 422."""
    if isinstance(error, NotAnImageError):
        return 415
    if isinstance(error, ImageTooLargeError):
        return 413
    return 422


class ModelService:
    """Holds the Predictor; `predict` is awaited by the endpoints."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.predictor: Predictor | None = None
        self._explainer: Predictor | None = None
        self.model_path: Path | None = None
        self.load_error: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    def start(self) -> None:
        """Load the model on the worker thread; the server answers /health meanwhile."""
        self._executor.submit(self._load)

    def _load(self) -> None:
        from pneumonia_cxr.inference.predictor import Predictor
        from pneumonia_cxr.model.shipped import resolve_model_path

        try:
            path = resolve_model_path(self.config.model_path)
            # The engine `predict` uses by default, so the page agrees with `predict`.
            self.predictor = Predictor.open(
                path, engine=self.config.engine, device=self.config.device
            )
            self.model_path = Path(path)
            log.info("model ready: %s", path)
        except Exception as error:  # reported by /ready and /v1/model, never a crash
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("model failed to load: %s", self.load_error)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def info(self) -> dict[str, Any]:
        """What /v1/model shows: enough to know which model answers and how it decides."""
        assert self.predictor is not None and self.model_path is not None
        return describe_model(self.predictor, self.model_path)

    async def predict(self, files: list[tuple[str, bytes]], gradcam: bool) -> list[dict[str, Any]]:
        """Score uploads on the worker thread, after any request already queued."""
        with self._lock:
            if self._in_flight >= self.config.max_in_flight:
                raise BusyError(f"{self._in_flight} requests in flight")
            self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._score, files, gradcam)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _score(self, files: list[tuple[str, bytes]], gradcam: bool) -> list[dict[str, Any]]:
        import numpy as np

        from pneumonia_cxr.inference.predictor import one_line

        predictor = self.predictor
        assert predictor is not None
        results: list[dict[str, Any]] = [{"name": name} for name, _ in files]
        inputs, originals, kept, facts = [], [], [], []
        for index, (name, data) in enumerate(files):
            try:
                image, gray, fact = predictor.input_and_facts_from_bytes(
                    data, name, keep_original=gradcam
                )
            except (ImageLoadError, ValueError) as error:
                results[index].update(
                    state="unreadable",
                    error=one_line(error),
                    status=upload_status(error),
                )
                continue
            inputs.append(image)
            originals.append(gray)
            kept.append(index)
            facts.append(fact)
            if fact.dicom is not None:  # a browser cannot show DICOM: the decoded film
                results[index]["preview_png_base64"] = _png_base64(gray, PREVIEW_MAX_SIDE)
        if not kept:
            return results
        batch = np.stack(inputs)
        scored = predictor.results(predictor.scores(batch), facts)
        outputs = predictor.outputs
        for index, result in zip(kept, scored, strict=True):
            results[index].update(result_json(result, outputs, predictor))
        draw = self._overlay_maker() if gradcam else None
        if draw is None:
            return results
        # Heatmaps of assessed images only (one on a refused image would look like a finding);
        # the type's only where a type was named.
        for output in outputs:
            wanted = [
                k
                for k, result in enumerate(scored)
                if result.assessed and result.labels.get(output.name)
            ]
            if not wanted or not _can_draw(draw, output.name):
                continue
            pngs = _overlays(draw, batch[wanted], [originals[k] for k in wanted], output.name)
            key = heatmap_key(output.name, outputs.index(output))
            for k, png in zip(wanted, pngs, strict=True):
                results[kept[k]][key] = png
        return results

    def _overlay_maker(self) -> Predictor | OnnxEngine | None:
        """What draws the heatmaps: PyTorch Grad-CAM (`_gradcam_predictor`), else, where
        PyTorch is not installed (the light install), the scoring engine's ONNX graph, whose
        `cam`/`type_cam` outputs carry the same maps (`explain.overlay.graph_overlays`); None
        when neither can (scores come without overlays)."""
        from pneumonia_cxr.explain.overlay import has_graph_cam

        explainer = self._gradcam_predictor()
        if explainer is not None:
            return explainer
        assert self.predictor is not None
        engine = self.predictor.engine
        if importlib.util.find_spec("torch") is None and has_graph_cam(engine):
            return engine  # type: ignore[return-value]
        return None

    def _gradcam_predictor(self) -> Predictor | None:
        """The PyTorch engine Grad-CAM needs (gradients), opened on the first heatmap asked;
        None for an ONNX export, which has no gradients, and without PyTorch (the light
        install): then the graph's own maps draw them (`_overlay_maker`)."""
        from pneumonia_cxr.inference.predictor import Predictor

        predictor = self.predictor
        assert predictor is not None and self.model_path is not None
        if predictor.bundle is not None:
            return predictor
        if self.model_path.suffix.lower() == ".onnx" or importlib.util.find_spec("torch") is None:
            return None
        if self._explainer is None:
            self._explainer = Predictor.open(
                self.model_path, engine="torch", device=self.config.device
            )
        return self._explainer


def result_json(result, outputs, predictor: Predictor) -> dict[str, Any]:
    """One image's answer as the service sends it: the table's columns (`model.outputs`), the
    reasons in plain words and their figures apart, and each output's threshold."""
    return result.values(outputs) | {
        "reasons": list(dict.fromkeys(r.words for r in result.refusals)),
        "details": result.details,
        "threshold": predictor.threshold,
        "thresholds": {o.name: o.cut(predictor.decision) for o in outputs},
    }


def describe_model(predictor: Predictor, model_path: Path) -> dict[str, Any]:
    """Which model answers and how it decides: /v1/model, and the `web` folder's model.json."""
    from pneumonia_cxr.model.decision import calibration_line

    engine, decision = predictor.engine, predictor.decision
    calibrated = decision.calibration is not None
    return {
        "model_path": str(model_path),
        "shipped": _is_shipped(model_path),
        "backbone": engine.backbone_name,
        "members": list(engine.backbone_names),
        "preprocessing": asdict(engine.preprocessing),
        "threshold": decision.threshold,
        "threshold_rule": decision.rule,
        "min_sensitivity": decision.min_sensitivity,
        "temperature": decision.temperature,
        "classes": list(decision.class_names),
        "ood_cutoff": decision.ood_cutoff,
        "guard_cutoff": decision.guard_cutoff,
        "type": asdict(decision.type) if decision.type is not None else None,
        "outputs": output_entries(decision),
        "intended_use": asdict(engine.intended_use),
        "scope": engine.intended_use.scope_sentence(),
        "site_verdict": (decision.calibration or {}).get("verdict"),
        "training_data_fingerprint": engine.data_fingerprint,
        "model_fingerprint": engine.fingerprint(),
        "engine": type(engine).__name__,
        "calibration": decision.calibration,
        "calibration_line": calibration_line(decision.calibration),
        # A site-calibrated file's operating point is not the one the parent was tested at.
        "test_metrics": None if calibrated else _test_metrics(model_path),
    }


def _can_draw(draw: Predictor | OnnxEngine, target: str) -> bool:
    """PyTorch draws every head's map; a graph only those it carries (`type_cam` may lack)."""
    from pneumonia_cxr.explain.overlay import has_graph_cam
    from pneumonia_cxr.inference.engines import OnnxEngine

    if isinstance(draw, OnnxEngine):
        return has_graph_cam(draw, target)
    members = draw.bundle.model.members
    return target == "pneumonia" or all(m.answer_head(target) is not None for m in members)


def _overlays(
    draw: Predictor | OnnxEngine,
    batch: np.ndarray,
    originals: list[np.ndarray],
    target: str = "pneumonia",
) -> list[str]:
    """Heatmap overlays as base64 PNGs: PyTorch Grad-CAM through a `Predictor`
    (`gradcam_overlays`), or the ONNX graph's own maps through its engine (`graph_overlays`,
    numpy and Pillow only)."""
    from pneumonia_cxr.explain.overlay import graph_overlays
    from pneumonia_cxr.inference.engines import OnnxEngine

    if isinstance(draw, OnnxEngine):
        overlays = graph_overlays(draw, batch, originals, target=target)
    else:
        from pneumonia_cxr.explain.overlay import gradcam_overlays

        overlays = gradcam_overlays(draw, batch, originals, target=target)
    return [_png_base64(pixels, OVERLAY_MAX_SIDE) for pixels in overlays]


def _png_base64(pixels: np.ndarray, max_side: int) -> str:
    """An image (gray (H, W) or (1, H, W), or RGB (H, W, 3); uint8) as a base64 PNG at most
    `max_side` wide/high."""
    from PIL import Image

    if pixels.ndim == 3 and pixels.shape[0] == 1:  # the loader's gray (1, H, W)
        pixels = pixels[0]
    image = Image.fromarray(pixels)
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _is_shipped(path: Path) -> bool:
    from pneumonia_cxr.model.shipped import is_shipped_model

    return is_shipped_model(path)


def _test_metrics(model_path: Path) -> dict[str, Any] | None:
    """The headline test figures of this model, when an evaluation of it is on disk: the
    shipped model's card figures, or `eval_test/metrics.json` beside a run's model file."""
    from pneumonia_cxr.model.shipped import SHIPPED_METRICS_FILE, WEIGHTS_DIR

    candidates = [model_path.resolve().parent / "eval_test" / "metrics.json"]
    if _is_shipped(model_path):
        candidates.insert(0, WEIGHTS_DIR / SHIPPED_METRICS_FILE)
    for path in candidates:
        if path.is_file():
            metrics = json.loads(path.read_text())
            at = metrics.get("at_threshold", {})
            return {
                "split": metrics.get("split"),
                "n": metrics.get("n"),
                "roc_auc": metrics.get("roc_auc", {}).get("value"),
                **{
                    name: at.get(name, {}).get("value")
                    for name in ("accuracy", "sensitivity", "specificity", "precision", "f1")
                },
            }
    return None
