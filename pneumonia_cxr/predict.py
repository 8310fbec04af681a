"""Files and folders in, one table row per image out (+ optional Grad-CAM overlays).

A thin layer over the one inference path (`inference.Predictor`): it expands folders, turns
each file's scores or error into a row and writes the table. A file that cannot be read
becomes a row with its error; it never stops the run and never turns into a blank image or a
default label. An image unlike the training X-rays keeps its probability and is flagged
`out_of_distribution` (and named in a warning by the CLI).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from tqdm import tqdm

from pneumonia_cxr.data.walk import iter_image_files, path_text
from pneumonia_cxr.inference.predictor import Predictor, ScoredBatch
from pneumonia_cxr.storage import atomic_write, atomic_write_text, check_table_path

if TYPE_CHECKING:
    from pneumonia_cxr.model.model_file import ModelBundle

log = logging.getLogger(__name__)

ROW_COLUMNS: tuple[str, ...] = (
    "path",
    "probability",
    "label",
    "ood_score",
    "out_of_distribution",
    "reason",
    "error",
)
"""Columns of every prediction table; `heatmap` is added when overlays are written."""
TYPE_COLUMNS: tuple[str, ...] = ("p_viral", "pneumonia_type")
"""Added after `label` by a model with a pneumonia type head (`pneumonia_type` blank unless the
label is PNEUMONIA and the image in distribution)."""


@dataclass
class PredictionRow:
    """One image's verdict. `probability` is None and `error` non-empty when it was unreadable."""

    path: str
    probability: float | None = None
    label: str = ""
    ood_score: float | None = None
    """None when unreadable or when the model carries no OOD statistics."""
    out_of_distribution: bool | None = None
    error: str = ""
    heatmap: str = ""
    p_viral: float | None = None
    """P(VIRAL | PNEUMONIA) of a model with a type head; None otherwise."""
    pneumonia_type: str = ""
    reason: str = ""
    """Why the image is out of the model's use (the label is then not to be read)."""

    @property
    def ok(self) -> bool:
        return not self.error


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Every file to score, in order: `data.walk.iter_image_files` (the one listing of every
    predict mode). A path that does not exist is kept: it becomes a row with a "not found"
    error rather than vanishing."""
    return list(iter_image_files(paths))


def predict_paths(
    predictor: Predictor | ModelBundle,
    paths: Iterable[str | Path],
    batch_size: int = 32,
    *,
    num_workers: int = 0,
    device: Any = None,
    gradcam_dir: str | Path | None = None,
    gradcam_method: str = "gradcam",
    gradcam_target: str = "pneumonia",
    progress: bool = False,
) -> list[PredictionRow]:
    """Predict every image under `paths`; one row per file, in `expand_paths` order.

    Args:
        predictor: An opened model (`Predictor.open`), or a `ModelBundle` in memory (run on
            the PyTorch engine on `device`).
        paths: Files and folders (folders are searched recursively).
        batch_size: Images per forward pass.
        num_workers: DataLoader worker processes decoding images (0: in this process).
        device: Only for a `ModelBundle`: where it runs (default: the GPU when there is one).
        gradcam_dir: When given, one overlay PNG per readable image is written there
            (`<file stem>_gradcam.png`), on the image at its original resolution.
        gradcam_method: One of `pneumonia_cxr.explain.gradcam.CAM_METHODS`.
        gradcam_target: "pneumonia" (the PNEUMONIA logit) or "type" (the type logit of a model
            with a type head; overlays named `<stem>_gradcam_type.png`).
        progress: Show a tqdm bar on stderr.

    Returns:
        Rows with probability P(PNEUMONIA) (temperature applied), the label at the model's
        stored threshold and the OOD score and flag, or the error that made the file unreadable.
    """
    if not isinstance(predictor, Predictor):
        predictor = Predictor.from_bundle(predictor, device)
    files = expand_paths(paths)
    rows: list[PredictionRow] = []
    with tqdm(
        total=len(files), desc="predict", unit="img", file=sys.stderr, disable=not progress
    ) as bar:
        for batch in iter_prediction_batches(
            predictor,
            files,
            batch_size=batch_size,
            num_workers=num_workers,
            gradcam_dir=gradcam_dir,
            gradcam_method=gradcam_method,
            gradcam_target=gradcam_target,
        ):
            rows.extend(batch)
            bar.update(len(batch))
    return rows


def iter_prediction_batches(
    predictor: Predictor,
    files: Iterable[Path],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    gradcam_dir: str | Path | None = None,
    gradcam_method: str = "gradcam",
    gradcam_target: str = "pneumonia",
    chunk_batches: int = 64,
) -> Iterator[list[PredictionRow]]:
    """The rows of each batch of files, in file order, as soon as the batch is scored.

    `files` is consumed lazily, `chunk_batches` batches at a time, so memory does not grow with
    the number of files; every batch holds `batch_size` consecutive files (the last one fewer),
    whatever the chunking, so a resumed run scores the same batches as an unbroken one.
    """
    if gradcam_dir and predictor.bundle is None:
        raise ValueError("Grad-CAM needs the PyTorch model file (.pt), not an ONNX export")
    writer = (
        _OverlayWriter(Path(gradcam_dir), gradcam_method, gradcam_target, predictor)
        if gradcam_dir
        else None
    )
    for chunk in _chunks(files, batch_size * chunk_batches):
        rows = [PredictionRow(path=str(path)) for path in chunk]
        batches = predictor.iter_files(
            chunk, batch_size=batch_size, num_workers=num_workers, keep_original=writer is not None
        )
        done = 0
        for batch in batches:
            _fill_rows(rows, batch, predictor)
            if writer is not None and batch.inputs is not None:
                writer.write(predictor, batch, rows)
            size = len(batch.indices) + len(batch.errors)
            yield rows[done : done + size]
            done += size


def _chunks(items: Iterable[Path], size: int) -> Iterator[list[Path]]:
    chunk: list[Path] = []
    for item in items:
        chunk.append(Path(item))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _fill_rows(rows: list[PredictionRow], batch: ScoredBatch, predictor: Predictor) -> None:
    for index, message in batch.errors:
        rows[index].error = message
    results = predictor.results(batch.scores, batch.facts)
    for index, result in zip(batch.indices, results, strict=True):
        row = rows[index]
        row.probability, row.label = result.probability, result.label
        row.ood_score, row.out_of_distribution = result.ood_score, result.out_of_distribution
        row.p_viral, row.pneumonia_type = result.p_viral, result.pneumonia_type
        row.reason = result.reason


class _OverlayWriter:
    """Grad-CAM overlays named after their files, never overwriting one another."""

    def __init__(
        self, out_dir: Path, method: str, target: str = "pneumonia", predictor=None
    ) -> None:
        from pneumonia_cxr.explain.gradcam import CAM_TARGETS, TypeLogit, cam_class

        cam_class(method)  # unknown method or target, a type map of a binary model: fail now
        if target not in CAM_TARGETS:
            raise ValueError(f"unknown heatmap target {target!r}; choose from {CAM_TARGETS}")
        if target == "type" and predictor is not None and predictor.bundle is not None:
            TypeLogit(predictor.bundle.model)
        self.out_dir, self.method, self.target = out_dir, method, target
        self.suffix = "_gradcam_type" if target == "type" else "_gradcam"
        self.used: set[str] = set()
        out_dir.mkdir(parents=True, exist_ok=True)

    def _name(self, source: Path) -> str:
        name, counter = f"{source.stem}{self.suffix}.png", 1
        while name in self.used:  # same file name in two folders
            counter += 1
            name = f"{source.stem}_{counter}{self.suffix}.png"
        self.used.add(name)
        return name

    def write(self, predictor: Predictor, batch: ScoredBatch, rows: list[PredictionRow]) -> None:
        from pneumonia_cxr.explain.overlay import gradcam_overlays

        overlays = gradcam_overlays(
            predictor, batch.inputs, batch.originals, method=self.method, target=self.target
        )
        for index, pixels in zip(batch.indices, overlays, strict=True):
            target = self.out_dir / self._name(Path(rows[index].path))
            overlay = Image.fromarray(pixels)
            atomic_write(target, lambda handle, image=overlay: image.save(handle, format="PNG"))
            rows[index].heatmap = str(target)


def table_columns(*, typed: bool, heatmap: bool = False) -> list[str]:
    """The table's columns: the type's after `label` for a model with a type head."""
    at = ROW_COLUMNS.index("label") + 1
    columns = [*ROW_COLUMNS[:at], *(TYPE_COLUMNS if typed else ()), *ROW_COLUMNS[at:]]
    return [*columns, "heatmap"] if heatmap else columns


def _columns(rows: Sequence[PredictionRow]) -> list[str]:
    return table_columns(
        typed=any(row.p_viral is not None for row in rows),
        heatmap=any(row.heatmap for row in rows),
    )


def _record(row: PredictionRow, columns: Sequence[str]) -> dict[str, Any]:
    values = asdict(row) | {"path": path_text(row.path), "heatmap": path_text(row.heatmap)}
    return {column: values[column] for column in columns}


def rows_to_csv(rows: Sequence[PredictionRow], columns: Sequence[str] | None = None) -> str:
    """CSV text; an unreadable file has an empty probability and label and its error."""
    columns = list(columns) if columns is not None else _columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        record = _record(row, columns)
        if record["probability"] is not None:
            record["probability"] = f"{record['probability']:.6f}"
        if record["ood_score"] is not None:
            record["ood_score"] = f"{record['ood_score']:.4f}"
        if record.get("p_viral") is not None:
            record["p_viral"] = f"{record['p_viral']:.6f}"
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
    path = check_table_path(path)
    text = rows_to_csv(rows) if path.suffix.lower() == ".csv" else rows_to_json(rows)
    return atomic_write_text(path, text)
