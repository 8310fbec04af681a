"""Files and folders in, one table row per image out (+ optional Grad-CAM overlays).

The path is the house data path: the one loader (`load_xray`), transforms rebuilt from the
model file's own preprocessing, the model, its stored temperature and threshold. A file that
cannot be read becomes a row with its error; it never stops the run and never turns into a
blank image or a default label.

`check_model_contract` lives here because every consumer of a model file (predict, evaluate,
explain-check) must refuse the same out-of-contract files before feeding them images.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.data.loader import is_image_file, load_xray
from pneumonia_cxr.data.transforms import build_transforms
from pneumonia_cxr.errors import ImageLoadError, ModelFileError
from pneumonia_cxr.export import OnnxPredictor
from pneumonia_cxr.model.backbones import get_backbone
from pneumonia_cxr.model.model_file import ModelBundle

log = logging.getLogger(__name__)

ROW_COLUMNS: tuple[str, ...] = ("path", "probability", "label", "error")
"""Columns of every prediction table; `heatmap` is added when overlays are written."""

MIN_IMAGE_SIZE = 32
"""Smallest model input the registered backbones accept (five stride-2 stages: 32 -> 1 px)."""

SUPPORTED_RESIZE: frozenset[str] = frozenset({"squash"})
"""Resize modes `build_transforms` implements; a model file asking for another is refused."""

_MEAN_STD_TOLERANCE = 1e-6


@dataclass
class PredictionRow:
    """One image's verdict. `probability` is None and `error` non-empty when it was unreadable."""

    path: str
    probability: float | None = None
    label: str = ""
    error: str = ""
    heatmap: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def check_model_contract(bundle: ModelBundle, source: str | Path = "model file") -> None:
    """Refuse a model file whose stored preprocessing cannot be right for the data it meets.

    The check is concrete, because the data side imposes little: every image is decoded to
    grayscale by `load_xray` and resized to the model's size, so any image size and any of
    JPEG/PNG/DICOM works. What can be wrong is the model file's half of the contract:

    - class names: they must be exactly `CLASS_NAMES` in that order, the classes and label
      indices that dataset discovery produces (a file trained with other classes, or with the
      indices swapped, would turn every probability into that of the wrong class);
    - channels: 3, since every registered backbone takes RGB input (gray replicated);
    - size: at least `MIN_IMAGE_SIZE` pixels; resize mode one the transforms implement;
    - normalization "imagenet": mean and std equal (to 1e-6) those the backbone registry lists
      for that backbone's pretrained weights; normalization "unit": mean 0, std 1.

    Raises:
        ModelFileError: naming the file, the mismatch and what to do.
    """
    problems = _contract_problems(bundle)
    if problems:
        raise ModelFileError(
            f"{source}: its preprocessing does not match this data and backbone "
            f"({'; '.join(problems)}). Retrain with `pneumonia-cxr train`, or use the "
            "unmodified final_pneumonia_model.pt of a run."
        )


def _contract_problems(bundle: ModelBundle) -> list[str]:
    pre: Preprocessing = bundle.preprocessing
    problems = []
    if tuple(bundle.class_names) != tuple(CLASS_NAMES):
        problems.append(
            f"class names {list(bundle.class_names)} differ from the dataset's classes "
            f"{list(CLASS_NAMES)} (index 1 = positive)"
        )
    if pre.channels != 3:
        problems.append(f"channels {pre.channels}, but the backbones take 3")
    if int(pre.image_size) < MIN_IMAGE_SIZE:
        problems.append(f"image_size {pre.image_size} is below {MIN_IMAGE_SIZE} pixels")
    if pre.resize not in SUPPORTED_RESIZE:
        problems.append(f"resize {pre.resize!r} is not one of {sorted(SUPPORTED_RESIZE)}")
    if pre.normalization == "imagenet":
        spec = get_backbone(bundle.backbone_name)
        expected = {"mean": spec.mean, "std": spec.std}
    else:
        expected = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    for name, values in expected.items():
        stored = getattr(pre, name)
        if len(stored) != len(values) or any(
            abs(a - b) > _MEAN_STD_TOLERANCE for a, b in zip(stored, values, strict=False)
        ):
            problems.append(
                f"{name} {list(stored)} differs from {list(values)}, the {pre.normalization} "
                f"normalization of backbone {bundle.backbone_name}"
            )
    return problems


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (whatever their extension: the loader judges content), folders recursively.

    Inside folders only image files count (`is_image_file`: by extension, dot-files skipped),
    sorted, so a folder of mixed files gives the same rows every time. A path that does not
    exist is kept: it becomes a row with a "not found" error rather than vanishing.
    """
    expanded: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                log.warning("no image files (.jpeg/.jpg/.png/.dcm) under %s", path)
            expanded.extend(found)
        else:
            expanded.append(path)
    return expanded


def _one_line(error: BaseException) -> str:
    """The error's kind and reason on one line, without the path (the row's path column has it)."""
    if isinstance(error, ImageLoadError):
        reason = error.reason
    elif isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:
        reason = str(error)
    return f"{type(error).__name__}: {' '.join(reason.split())}"


class _PathDataset(Dataset):
    """Path -> model input, or the error text; keeps the original pixels for overlays.

    Not `XrayDataset`: predict needs each failure's message in its row (that dataset's collate
    keeps only the index) and must also turn a missing or unreadable path into a row.
    """

    def __init__(self, paths: Sequence[Path], preprocessing: Preprocessing, keep_original: bool):
        self.paths = list(paths)
        self.transform = build_transforms(preprocessing)
        self.keep_original = keep_original
        # JPEG draft decoding is only a speed hint; overlays want the full-resolution film.
        self.min_side = None if keep_original else preprocessing.image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            gray = load_xray(self.paths[index], min_side=self.min_side)
        except (ImageLoadError, OSError) as error:
            return {"index": index, "error": _one_line(error)}
        sample: dict[str, Any] = {"index": index, "image": self.transform(gray)}
        if self.keep_original:
            sample["original"] = gray
        return sample


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    good = [s for s in samples if "image" in s]
    return {
        "image": torch.stack([s["image"] for s in good]) if good else None,
        "index": [s["index"] for s in good],
        "original": [s.get("original") for s in good],
        "errors": [(s["index"], s["error"]) for s in samples if "error" in s],
    }


def default_device() -> torch.device:
    """The GPU when there is one: prediction is the path users run on whole folders."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prepare(bundle: ModelBundle, device: torch.device) -> torch.nn.Module:
    """Eval mode, on `device`, channels_last (the fast layout for convolutions on CPU and GPU)."""
    return bundle.model.to(device=device, memory_format=torch.channels_last).eval()


def _scorer(
    bundle: ModelBundle | OnnxPredictor, device: torch.device
) -> Callable[[torch.Tensor], list[float]]:
    """Images -> P(PNEUMONIA): ONNX Runtime for an exported model, else the PyTorch model."""
    if isinstance(bundle, OnnxPredictor):
        return lambda images: bundle.probabilities(images.cpu()).tolist()
    model = _prepare(bundle, device)

    def score(images: torch.Tensor) -> list[float]:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return bundle.probabilities(model(images)[:, 0]).cpu().tolist()

    return score


def _label(bundle: ModelBundle, probability: float) -> str:
    return bundle.class_names[int(probability >= bundle.threshold)]


def _batches(
    paths: Sequence[Path],
    bundle: ModelBundle,
    batch_size: int,
    num_workers: int,
    keep_original: bool,
) -> Iterator[dict[str, Any]]:
    loader = DataLoader(
        _PathDataset(paths, bundle.preprocessing, keep_original),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
    )
    yield from loader


def predict_paths(
    bundle: ModelBundle | OnnxPredictor,
    paths: Iterable[str | Path],
    batch_size: int = 32,
    *,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    gradcam_dir: str | Path | None = None,
    gradcam_method: str = "gradcam",
    progress: bool = False,
) -> list[PredictionRow]:
    """Predict every image under `paths`; one row per file, in `expand_paths` order.

    Args:
        bundle: A loaded model file (`load_model`), or an `OnnxPredictor` (the fast CPU path;
            no Grad-CAM); checked with `check_model_contract`. A PyTorch model is moved to
            `device` and left there, in eval mode.
        paths: Files and folders (folders are searched recursively).
        batch_size: Images per forward pass.
        num_workers: DataLoader worker processes decoding images (0: in this process).
        device: Where the model runs; default the GPU when available.
        gradcam_dir: When given, one overlay PNG per readable image is written there
            (`<file stem>_gradcam.png`), on the image at its original resolution.
        gradcam_method: One of `pneumonia_cxr.explain.gradcam.CAM_METHODS`.
        progress: Show a tqdm bar on stderr.

    Returns:
        Rows with probability P(PNEUMONIA) (temperature applied) and the label at the model's
        stored threshold, or the error that made the file unreadable.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_model_contract(bundle)
    files = expand_paths(paths)
    rows = [PredictionRow(path=str(path)) for path in files]
    if gradcam_dir and isinstance(bundle, OnnxPredictor):
        raise ValueError("Grad-CAM needs the PyTorch model file (.pt), not an ONNX export")
    device = torch.device(device) if device is not None else default_device()
    score = _scorer(bundle, device)
    writer = _OverlayWriter(Path(gradcam_dir), gradcam_method) if gradcam_dir else None
    with tqdm(
        total=len(files), desc="predict", unit="img", file=sys.stderr, disable=not progress
    ) as bar:
        for batch in _batches(files, bundle, batch_size, num_workers, writer is not None):
            for index, message in batch["errors"]:
                rows[index].error = message
            if batch["image"] is not None:
                probs = score(batch["image"])
                for index, probability in zip(batch["index"], probs, strict=True):
                    rows[index].probability = float(probability)
                    rows[index].label = _label(bundle, probability)
                if writer is not None:
                    images = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
                    writer.write(bundle.model, images, batch, rows)
            bar.update(len(batch["index"]) + len(batch["errors"]))
    return rows


class _OverlayWriter:
    """Grad-CAM overlays named after their files, never overwriting one another."""

    def __init__(self, out_dir: Path, method: str) -> None:
        from pneumonia_cxr.explain.gradcam import cam_class

        cam_class(method)  # unknown method: fail before any work
        self.out_dir, self.method = out_dir, method
        self.used: set[str] = set()
        out_dir.mkdir(parents=True, exist_ok=True)

    def _name(self, source: Path) -> str:
        name, counter = f"{source.stem}_gradcam.png", 1
        while name in self.used:  # same file name in two folders
            counter += 1
            name = f"{source.stem}_{counter}_gradcam.png"
        self.used.add(name)
        return name

    def write(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        batch: dict[str, Any],
        rows: list[PredictionRow],
    ) -> None:
        from pneumonia_cxr.explain.gradcam import compute_cams
        from pneumonia_cxr.explain.overlay import overlay_heatmap

        cams = compute_cams(
            model, model.cam_target_layer, images, method=self.method, batch_size=len(images)
        )
        for index, original, cam in zip(batch["index"], batch["original"], cams, strict=True):
            target = self.out_dir / self._name(Path(rows[index].path))
            Image.fromarray(overlay_heatmap(original, cam)).save(target, format="PNG")
            rows[index].heatmap = str(target)


def _columns(rows: Sequence[PredictionRow]) -> list[str]:
    return [*ROW_COLUMNS, "heatmap"] if any(row.heatmap for row in rows) else list(ROW_COLUMNS)


def _record(row: PredictionRow, columns: Sequence[str]) -> dict[str, Any]:
    values = asdict(row)
    return {column: values[column] for column in columns}


def rows_to_csv(rows: Sequence[PredictionRow]) -> str:
    """CSV text; an unreadable file has an empty probability and label and its error."""
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        record = _record(row, columns)
        if record["probability"] is not None:
            record["probability"] = f"{record['probability']:.6f}"
        writer.writerow(record)
    return buffer.getvalue()


def rows_to_json(rows: Sequence[PredictionRow]) -> str:
    """A JSON list of row objects; an unreadable file has `"probability": null`."""
    columns = _columns(rows)
    records = [_record(row, columns) for row in rows]
    for record in records:
        probability = record["probability"]
        if probability is not None and not math.isfinite(probability):
            record["probability"] = None
    return json.dumps(records, indent=2, allow_nan=False) + "\n"


def write_rows(rows: Sequence[PredictionRow], path: str | Path) -> Path:
    """Write rows as .csv or .json, chosen by the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"{path}: output must end in .csv or .json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rows_to_csv(rows) if suffix == ".csv" else rows_to_json(rows), encoding="utf-8")
    return path


ENGINES = ("auto", "torch", "onnx")


def load_for_prediction(
    model_path: str | Path,
    *,
    engine: str = "auto",
    device: str | torch.device | None = None,
    gradcam: bool = False,
) -> ModelBundle | OnnxPredictor:
    """The fastest engine that gives the model's own labels.

    "auto": an `.onnx` file runs on ONNX Runtime; a `.pt` file runs on ONNX Runtime too when it
    would run on the CPU (a cached export, about 2.5-3x PyTorch eager here, identical labels:
    benchmarks/inference_throughput.py) unless Grad-CAM is asked for or onnxruntime is
    missing; otherwise PyTorch (GPU when available).
    """
    from pneumonia_cxr.export import cached_onnx_predictor, load_predictor
    from pneumonia_cxr.model.model_file import load_model

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if Path(model_path).suffix.lower() == ".onnx":
        if engine == "torch" or gradcam:
            raise ModelFileError(f"{model_path}: an ONNX export runs without PyTorch or Grad-CAM")
        return load_predictor(model_path)
    bundle = load_model(model_path)
    on_cpu = (torch.device(device) if device else default_device()).type == "cpu"
    if engine == "torch" or gradcam or (engine == "auto" and not on_cpu):
        return bundle
    try:
        return cached_onnx_predictor(bundle)
    except ImportError:
        if engine == "onnx":
            raise
        log.info("onnxruntime not installed: predicting with PyTorch")
        return bundle
