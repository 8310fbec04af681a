"""The Python API: `pcx.load()` -> `Model`, `model.predict(...)`, `model.explain(...)`,
`pcx.evaluate(...)`.

A thin face over the paths the CLI and the service use (`inference.Predictor`,
`predict.predict_paths`, `explain.overlay`, `evaluation.evaluate`): a result here is the row
`predict` writes, so a notebook and the command line cannot disagree.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.shipped import resolve_model_path
from pneumonia_cxr.predict import PredictionRow, expand_paths, predict_paths

ImageInput = str | Path | np.ndarray | Image.Image
"""A file path, a 2-D (gray) or H x W x 3 (RGB) uint8 array, or a PIL image."""


def load(
    model: str | Path | None = None, *, engine: str = "auto", device: str | None = None
) -> Model:
    """The shipped model (its sha256 checked) or a `.pt` / `.onnx` model file, on the engine
    `predict` would pick ("auto", "torch", "onnxruntime", "openvino")."""
    path = resolve_model_path(model)
    return Model(Predictor.open(path, engine=engine, device=device), path, device)


class Model:
    """An opened model file: `predict` scores, `explain` draws heatmaps."""

    def __init__(self, predictor: Predictor, path: Path, device: str | None = None) -> None:
        self.predictor, self.path, self._device = predictor, Path(path), device
        self._cam_predictor: Predictor | None = None

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, engine={type(self.predictor.engine).__name__})"

    @property
    def threshold(self) -> float:
        return self.predictor.threshold

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.predictor.class_names

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 32
    ) -> PredictionRow | list[PredictionRow]:
        """One `PredictionRow` (`.state`, `.assessed`, `.probability`, `.label`, each further
        answer's columns, `.reason`, `.error`, `.values(...)`) per image, as `predict` writes
        it (an image not assessed has no label and no probability: `.result` keeps its numbers):
        one row for one file or image, a list for a list or a folder (a folder's images in the
        order `predict` lists them, in its place). An unreadable file is a row with its
        `.error`, never an exception."""
        if isinstance(images, str | Path) and not Path(images).is_dir():
            return predict_paths(self.predictor, [images], batch_size=batch_size)[0]
        if _is_in_memory(images):
            return self._predict_in_memory(images, "<image 0>")
        items = [images] if isinstance(images, str | Path) else list(images)
        # Each path listed once (a folder: its images), all files scored in one pass.
        listed = {
            i: expand_paths([item]) for i, item in enumerate(items) if isinstance(item, str | Path)
        }
        files = [file for group in listed.values() for file in group]
        scored = iter(predict_paths(self.predictor, files, batch_size=batch_size))
        rows: list[PredictionRow] = []
        for i, item in enumerate(items):
            if i in listed:
                rows += [next(scored) for _ in listed[i]]
            else:
                rows.append(self._predict_in_memory(item, f"<image {i}>"))
        return rows

    def _predict_in_memory(self, image: np.ndarray | Image.Image, name: str) -> PredictionRow:
        """An array or PIL image goes through the upload path (`input_and_facts_from_bytes`):
        the same decode, colour check and transforms as a file."""
        image_input, _, facts = self.predictor.input_and_facts_from_bytes(_png_bytes(image), name)
        result = self.predictor.results(self.predictor.scores(image_input[None]), [facts])[0]
        return PredictionRow(path=name, result=result)

    def explain(
        self, image: ImageInput, *, target: str = "pneumonia", method: str = "gradcam"
    ) -> np.ndarray:
        """The heatmap of one image: a float array in [0, 1] at the model's input size (target
        "pneumonia", or "type" for a model with a type head).

        With PyTorch and a `.pt` model file: pytorch-grad-cam's `method`. Without PyTorch (the
        light install), or for an `.onnx` file: Grad-CAM from the ONNX graph's own `cam` /
        `type_cam` output (the `web` page's map), scaled the same way; a graph without it, or
        another method, needs the full install and the `.pt` file (one-line error)."""
        if importlib.util.find_spec("torch") is None or self.path.suffix.lower() == ".onnx":
            return self._graph_explain(image, target, method)
        from pneumonia_cxr.explain.gradcam import predictor_cams

        if self._cam_predictor is None:
            self._cam_predictor = Predictor.open(self.path, gradcam=True, device=self._device)
        predictor = self._cam_predictor
        model_input = _model_input(predictor, image)
        return predictor_cams(predictor, model_input[None], method=method, target=target)[0]

    def _graph_explain(self, image: ImageInput, target: str, method: str) -> np.ndarray:
        from pneumonia_cxr.errors import ModelFileError
        from pneumonia_cxr.explain.overlay import graph_cams, has_graph_cam
        from pneumonia_cxr.model.onnx_format import FULL_INSTALL_HINT

        if target not in {o.name for o in self.predictor.outputs}:
            names = [o.name for o in self.predictor.outputs]
            raise ValueError(f"target must be one of {names}, not {target!r}")
        engine = self.predictor.engine
        if method != "gradcam":
            problem = f"the {method} heatmap needs PyTorch"
        elif not has_graph_cam(engine, target):
            problem = (
                f"this model's ONNX graph carries no Grad-CAM map of {target!r} (only one network "
                "with an MLP head has it); its heatmaps need PyTorch"
            )
        else:
            problem = ""
        if problem:
            raise ModelFileError(
                f"{self.path.name}: {problem} and the .pt model file: {FULL_INSTALL_HINT}"
            )
        model_input = _model_input(self.predictor, image)
        return graph_cams(engine, model_input[None], target)[0]  # type: ignore[arg-type]


def evaluate(
    model: Model | str | Path | None = None,
    data: str | Path | None = None,
    *,
    split: str = "test",
    output_dir: str | Path | None = None,
    **options: Any,
):
    """`pneumonia-cxr evaluate` of a model (a `Model`, a model file, or None: the shipped
    one) on one split; returns its `EvaluationResult` (`.metrics`, `.files`). Files are
    written to `output_dir` (default: beside the model file, as the CLI does)."""
    from pneumonia_cxr.evaluation.evaluate import evaluate_model

    path = model.path if isinstance(model, Model) else model
    return evaluate_model(path, data, split=split, output_dir=output_dir, **options)


def _model_input(predictor: Predictor, image: ImageInput) -> np.ndarray:
    """One image as the model's input, through the loader (a file) or the upload path."""
    if isinstance(image, str | Path):
        return predictor.load_input(image)[0]
    return predictor.input_and_facts_from_bytes(_png_bytes(image), "image")[0]


def _is_in_memory(images: Any) -> bool:
    """One image held in memory (a list of them is a list)."""
    return isinstance(images, Image.Image) or (
        isinstance(images, np.ndarray) and images.dtype != object
    )


def _png_bytes(image: np.ndarray | Image.Image) -> bytes:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"an image array must be uint8, H x W or H x W x 3; got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"cannot score a {type(image).__name__}: give a path, an array or a PIL image"
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
