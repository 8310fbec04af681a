"""Files and folders in, one table row per image out (+ optional Grad-CAM overlays).

A thin layer over the one inference path (`inference.Predictor`): it expands folders, turns
each file's result or error into a row and writes the table; the columns come from the model's
output registry (`model.outputs`), the same in every mode (plain, streamed `archive`,
`distributed_predict`), and every mode counts and exits by one `Summary`. A file that cannot be
read becomes a row with its error; it never stops the run and never turns into a blank image or
a default label. An image the model was not made for is "not assessed": no label, no heatmap,
its reason in plain words (and named in a warning by the CLI).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from tqdm import tqdm

from pneumonia_cxr.data.walk import iter_image_files, path_text
from pneumonia_cxr.inference.predictor import ImageResult, Predictor, ScoredBatch
from pneumonia_cxr.model.outputs import (
    OUTPUTS,
    ModelOutput,
    column_formats,
    format_value,
    table_columns,
)
from pneumonia_cxr.storage import atomic_write, atomic_write_text, check_table_path

if TYPE_CHECKING:
    from pneumonia_cxr.model.model_file import ModelBundle

log = logging.getLogger(__name__)


@dataclass
class PredictionRow:
    """One file's line in every output: its `ImageResult`, or the error that kept it unread.

    The attributes the README documents (`.probability`, `.label`, each answer's columns as
    `model.outputs` names them, ...) read the result; each is None or blank where the image was
    unreadable or not assessed."""

    path: str
    result: ImageResult | None = None
    error: str = ""
    heatmap: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def state(self) -> str:
        return self.result.state if self.result is not None else "unreadable"

    @property
    def assessed(self) -> bool:
        return self.result is not None and self.result.assessed

    def __getattr__(self, name: str) -> Any:
        # The result's view (each answer's columns, guard_score, ood_score, reason, ...), or
        # nothing for an unreadable file: blank text, None numbers, no details.
        if name.startswith("_"):
            raise AttributeError(name)
        result = self.__dict__.get("result")
        if result is not None:
            return getattr(result, name)
        if name in _TEXT_VIEWS or any(name == o.label_column for o in OUTPUTS):
            return ""
        if name in _NUMBER_VIEWS or any(name == o.probability_column for o in OUTPUTS):
            return [] if name == "details" else None
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def values(self, outputs: Sequence[ModelOutput]) -> dict[str, Any]:
        """Column -> value (`model.outputs.table_columns`): one row of any table."""
        if self.result is not None:
            values = self.result.values(outputs)
        else:
            values = {"state": self.state, "out_of_distribution": None, "reason": ""}
            values |= {output.label_column: "" for output in outputs}
        return values | {"path": path_text(self.path), "error": self.error,
                         "heatmap": path_text(self.heatmap)}  # fmt: skip


_TEXT_VIEWS = frozenset({"reason"})
_NUMBER_VIEWS = frozenset({"guard_score", "ood_score", "out_of_distribution", "details"})


@dataclass
class Summary:
    """What a prediction run did, counted the same way in every mode."""

    positive: str = "PNEUMONIA"
    scored: int = 0
    """Files read (assessed or not)."""
    unreadable: int = 0
    not_assessed: int = 0
    positives: int = 0
    """Assessed images labelled `positive`."""
    kept_from_before: int = 0
    not_assessed_examples: list[str] = field(default_factory=list)

    def add(self, state: str, label: str, path: str) -> None:
        if state == "unreadable":
            self.unreadable += 1
            return
        self.scored += 1
        self.positives += state == "assessed" and label == self.positive
        if state == "not assessed":
            self.not_assessed += 1
            if len(self.not_assessed_examples) < 10:
                self.not_assessed_examples.append(path_text(path))

    def add_rows(self, rows: Iterable[PredictionRow]) -> None:
        for row in rows:
            self.add(row.state, row.label, row.path)

    @property
    def exit_code(self) -> int:
        """The one rule of every mode: 0 when at least one file was read, 1 when none was."""
        return 0 if self.scored else 1

    def warning(self) -> str | None:
        """Names the images that got no answer, or None."""
        count = self.not_assessed
        if not count:
            return None
        examples = self.not_assessed_examples
        more = f" and {count - len(examples)} more" if count > len(examples) else ""
        return (
            f"warning: {count} image(s) not assessed (no label: the model was not made for them; "
            f"the reason is in each row): {', '.join(examples)}{more}"
        )

    def line(self, output: str | None = None) -> str:
        total = self.scored + self.unreadable
        assessed = self.scored - self.not_assessed
        where = f" -> {output}" if output else ""
        kept = f"; {self.kept_from_before} kept from before" if self.kept_from_before else ""
        return (
            f"{total} image(s){where}: {assessed} assessed ({self.positives} {self.positive}), "
            f"{self.not_assessed} not assessed, {self.unreadable} unreadable{kept}"
        )


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
    writers: Sequence[Any] = (),
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
        writers: More outputs of the same loop, each given every batch (e.g.
            `dicom_results.DicomBatchWriter`).

    Returns:
        One row per file: its result (state, each answer's probability and label at the
        model's own thresholds, the applicability scores and reasons), or the error that made
        the file unreadable; an image that is not assessed has no label.
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
            writers=writers,
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
    writers: Sequence[Any] = (),
) -> Iterator[list[PredictionRow]]:
    """The rows of each batch of files, in file order, as soon as the batch is scored.

    `files` is consumed lazily, `chunk_batches` batches at a time, so memory does not grow with
    the number of files; every batch holds `batch_size` consecutive files (the last one fewer),
    whatever the chunking, so a resumed run scores the same batches as an unbroken one.
    Each of `writers` (an object with `keep_original` and `write(predictor, batch, rows)`) is
    given every scored batch: overlays, DICOM results.
    """
    if gradcam_dir and predictor.bundle is None:
        raise ValueError("Grad-CAM needs the PyTorch model file (.pt), not an ONNX export")
    writers = list(writers)
    if gradcam_dir:
        writers.insert(
            0, _OverlayWriter(Path(gradcam_dir), gradcam_method, gradcam_target, predictor)
        )
    keep_original = any(writer.keep_original for writer in writers)
    for chunk in _chunks(files, batch_size * chunk_batches):
        rows = [PredictionRow(path=str(path)) for path in chunk]
        batches = predictor.iter_files(
            chunk, batch_size=batch_size, num_workers=num_workers, keep_original=keep_original
        )
        done = 0
        for batch in batches:
            _fill_rows(rows, batch, predictor)
            for writer in writers if batch.inputs is not None else ():
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
        rows[index].result = result


class _OverlayWriter:
    """Grad-CAM overlays named after their files, never overwriting one another."""

    keep_original = True

    def __init__(
        self, out_dir: Path, method: str, target: str = "pneumonia", predictor=None
    ) -> None:
        from pneumonia_cxr.explain.gradcam import AnswerLogit, cam_class

        cam_class(method)  # unknown method or target, a type map of a binary model: fail now
        targets = [output.name for output in OUTPUTS]
        if target not in targets:
            raise ValueError(f"unknown heatmap target {target!r}; choose from {targets}")
        if target == "type" and predictor is not None and predictor.bundle is not None:
            AnswerLogit(predictor.bundle.model, target)
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
        """Overlays of the assessed images only: a heatmap on an image the model refused would
        look like a finding. A type map only where a type was named."""
        from pneumonia_cxr.explain.overlay import gradcam_overlays

        wanted = [
            k
            for k, index in enumerate(batch.indices)
            if rows[index].assessed and (self.target != "type" or rows[index].pneumonia_type)
        ]
        if not wanted:
            return
        overlays = gradcam_overlays(
            predictor,
            batch.inputs[wanted],
            [batch.originals[k] for k in wanted],
            method=self.method,
            target=self.target,
        )
        for index, pixels in zip([batch.indices[k] for k in wanted], overlays, strict=True):
            target = self.out_dir / self._name(Path(rows[index].path))
            overlay = Image.fromarray(pixels)
            atomic_write(target, lambda handle, image=overlay: image.save(handle, format="PNG"))
            rows[index].heatmap = str(target)


def rows_outputs(rows: Sequence[PredictionRow]) -> list[ModelOutput]:
    """The outputs rows answer (for tables written without the predictor at hand)."""
    names = {name for row in rows if row.result is not None for name in row.result.probabilities}
    return [output for output in OUTPUTS if output.name in names or output.name == "pneumonia"]


def rows_to_records(
    rows: Sequence[PredictionRow],
    outputs: Sequence[ModelOutput] | None = None,
    *,
    heatmap: bool | None = None,
) -> list[dict[str, Any]]:
    """One object per row with exactly `model.outputs.table_columns` (numbers as numbers,
    None for blanks): what every table format, and the distributed mode's parts, carry."""
    outputs = list(outputs) if outputs is not None else rows_outputs(rows)
    heatmap = any(row.heatmap for row in rows) if heatmap is None else heatmap
    columns = table_columns(outputs, heatmap=heatmap)
    records = []
    for row in rows:
        values = row.values(outputs)
        record = {column: values.get(column) for column in columns}
        for column, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                record[column] = None
        records.append(record)
    return records


def records_to_csv(
    records: Sequence[dict[str, Any]], outputs: Sequence[ModelOutput], *, header: bool = True
) -> str:
    """CSV text of `rows_to_records`' objects (the column order is the records' own)."""
    if not records:
        return ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns, formats = list(records[0]), column_formats(list(outputs))
    if header:
        writer.writerow(columns)
    for record in records:
        writer.writerow([format_value(c, record[c], formats) for c in columns])
    return buffer.getvalue()


def records_to_json(records: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(records), indent=2, allow_nan=False) + "\n"


def rows_to_csv(
    rows: Sequence[PredictionRow],
    outputs: Sequence[ModelOutput] | None = None,
    *,
    heatmap: bool | None = None,
    header: bool = True,
) -> str:
    """CSV text with `model.outputs.table_columns`: blank cells for what a row lacks."""
    outputs = list(outputs) if outputs is not None else rows_outputs(rows)
    if not rows:
        columns = table_columns(outputs, heatmap=bool(heatmap))
        return ",".join(columns) + "\n" if header else ""
    records = rows_to_records(rows, outputs, heatmap=heatmap)
    return records_to_csv(records, outputs, header=header)


def rows_to_json(
    rows: Sequence[PredictionRow], outputs: Sequence[ModelOutput] | None = None
) -> str:
    """A JSON list of row objects (`rows_to_records`)."""
    return records_to_json(rows_to_records(rows, outputs))


def write_records(
    records: Sequence[dict[str, Any]], path: str | Path, outputs: Sequence[ModelOutput]
) -> Path:
    """Write a table as .csv or .json, chosen by the suffix: the one table writer."""
    path = check_table_path(path)
    if path.suffix.lower() == ".json":
        return atomic_write_text(path, records_to_json(records))
    text = records_to_csv(records, outputs) or ",".join(table_columns(list(outputs))) + "\n"
    return atomic_write_text(path, text)


def write_rows(
    rows: Sequence[PredictionRow],
    path: str | Path,
    outputs: Sequence[ModelOutput] | None = None,
) -> Path:
    """Write rows as .csv or .json, chosen by the suffix."""
    outputs = list(outputs) if outputs is not None else rows_outputs(rows)
    return write_records(rows_to_records(rows, outputs), path, outputs)
