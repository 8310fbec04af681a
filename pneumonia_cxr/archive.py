"""Scoring an archive: files listed lazily, rows streamed to the output, resume, shards, merge.

`predict --output out.csv` writes each batch's rows as soon as they are scored and records
them in a progress file beside the output (`out.csv.progress.tsv`: the model's sha256 on its
first line, then per scored file its position in the listing, size, modification time (or
content hash) and path). `--resume` keeps the rows whose file is unchanged, rescores the rest,
and refuses an output written by another model. `--shard i/N` scores the files at positions
i, i + N, ... of the listing; `merge-predictions` puts shards back in listing order, into the
same file one unsharded run writes. The CSV itself stays a plain CSV every tool reads.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pneumonia_cxr.data.split import file_sha256
from pneumonia_cxr.data.walk import iter_image_files
from pneumonia_cxr.errors import PneumoniaCxrError
from pneumonia_cxr.faults import kill_if
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.outputs import table_columns
from pneumonia_cxr.predict import Summary, iter_prediction_batches, rows_to_csv
from pneumonia_cxr.storage import atomic_write_text

PROGRESS_SUFFIX = ".progress.tsv"
PATH_BYTES = "surrogateescape"
"""The progress file keeps each path's own bytes (a name that is not valid UTF-8 included), so
that a resumed run finds the file again; the CSV shows such a name escaped (`path_text`)."""
_HEADER = "# pneumonia-cxr predict progress; model_sha256="


class ArchiveError(PneumoniaCxrError):
    """A resume or merge that cannot be done safely (another model, a bad shard spec)."""


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """ "i/N" with 0 <= i < N."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ArchiveError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
        if count < 1 or not 0 <= index < count:
            raise ArchiveError(f"--shard {text}: need 0 <= i < N and N >= 1 (e.g. 0/4 ... 3/4)")
        return cls(index, count)


def walk_files(paths: Iterable[str | Path], files_from: str | Path | None = None) -> Iterator[Path]:
    """Files in a stable order, never all in memory: the listing every predict mode uses
    (`data.walk.iter_image_files`), then the lines of a list file (`.txt`: one path a line;
    `.csv`: its `path` column)."""
    yield from iter_image_files(paths)
    if files_from is not None:
        yield from _listed(Path(files_from))


def _listed(list_file: Path) -> Iterator[Path]:
    with open(list_file, newline="", encoding="utf-8") as handle:
        if list_file.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            if "path" not in (reader.fieldnames or ()):
                raise ArchiveError(f"{list_file}: a file list in CSV needs a 'path' column")
            for row in reader:
                if row["path"]:
                    yield Path(row["path"])
        else:
            for line in handle:
                if line.strip():
                    yield Path(line.strip())


def _signature(path: Path, content_hash: bool) -> str:
    """What makes a file "the same" on resume: size and mtime, or its sha256."""
    try:
        if content_hash:
            return "sha256:" + file_sha256(path)
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        return "missing"


def _read_done(output: Path, progress: Path, model_sha256: str) -> list[tuple[str, str]]:
    """(CSV line, progress line) of every row a previous run finished; another model refused."""
    lines = progress.read_text(encoding="utf-8", errors=PATH_BYTES).split("\n")
    if not lines or not lines[0].startswith(_HEADER):
        raise ArchiveError(
            f"{progress}: not a pneumonia-cxr progress file; remove it to start over"
        )
    if lines[0].removeprefix(_HEADER).strip() != model_sha256:
        raise ArchiveError(
            f"{output} was written by another model (sha256 {lines[0].removeprefix(_HEADER)[:12]}"
            f"..., this one {model_sha256[:12]}...): --resume would mix two models' answers. "
            "Write to a new --output, or delete the old one"
        )
    records = [line for line in lines[1:-1] if line]  # the last element: "" or a cut line
    csv_lines = output.read_text(encoding="utf-8").split("\n") if output.exists() else [""]
    body = csv_lines[1:-1]  # header first; the last element is "" or a cut line
    return list(zip(body, records[: len(body)], strict=False))


def score_archive(
    predictor: Predictor,
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    model_sha256: str,
    files_from: str | Path | None = None,
    resume: bool = False,
    shard: Shard = Shard(),
    content_hash: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    gradcam_dir: str | Path | None = None,
    gradcam_method: str = "gradcam",
    gradcam_target: str = "pneumonia",
    progress: bool = True,
    writers: Sequence = (),
) -> Summary:
    """Score every (shard's) file, appending rows as batches finish; see the module docstring."""
    output = Path(output)
    if output.suffix.lower() != ".csv":
        raise ArchiveError(f"{output}: streaming, --resume and --shard write CSV (.csv)")
    log = output.with_name(output.name + PROGRESS_SUFFIX)
    summary = Summary(positive=predictor.class_names[1])
    done: dict[str, str] = {}
    kept: list[tuple[str, str]] = []
    outputs, heatmap = predictor.outputs, bool(gradcam_dir)
    header = ",".join(table_columns(outputs, heatmap=heatmap))
    if resume and log.exists():
        _check_header(output, header)
        finished = _read_done(output, log, model_sha256)
        # Whole batches only: the rest then falls into the batches an unbroken run scored.
        finished = finished[: len(finished) - len(finished) % batch_size]
        for csv_line, record in finished:
            _, signature, path = record.split("\t", 2)
            if _signature(Path(path), content_hash) == signature:
                done[path] = signature
                kept.append((csv_line, record))
    output.parent.mkdir(parents=True, exist_ok=True)
    # Start from the finished rows only (a killed run may have cut its last line).
    atomic_write_text(output, "\n".join([header, *(line for line, _ in kept)]) + "\n")
    records = "\n".join([_HEADER + model_sha256, *(r for _, r in kept)]) + "\n"
    atomic_write_text(log, records, errors=PATH_BYTES)
    summary.kept_from_before = len(kept)
    for values in csv.DictReader(io.StringIO("\n".join([header, *(line for line, _ in kept)]))):
        summary.add(values["state"], values["label"], values["path"])
    positions: dict[str, list[int]] = {}  # a path listed twice is scored twice, in order

    def todo() -> Iterator[Path]:
        for position, path in enumerate(walk_files(paths, files_from)):
            if position % shard.count == shard.index and str(path) not in done:
                positions.setdefault(str(path), []).append(position)
                yield path

    # A counting pass (a directory walk, nothing kept) gives the bar its total, hence an ETA.
    total = None
    if progress:
        total = sum(
            1
            for position, path in enumerate(walk_files(paths, files_from))
            if position % shard.count == shard.index and str(path) not in done
        )
    bar = tqdm(total=total, desc="predict", unit="img", file=sys.stderr, disable=not progress)
    batches = 0
    with (
        open(output, "a", encoding="utf-8", newline="") as table,
        open(log, "a", encoding="utf-8", errors=PATH_BYTES) as record,
    ):
        for rows in iter_prediction_batches(
            predictor,
            todo(),
            batch_size=batch_size,
            num_workers=num_workers,
            gradcam_dir=gradcam_dir,
            gradcam_method=gradcam_method,
            gradcam_target=gradcam_target,
            writers=writers,
        ):
            batches += 1
            table.write(rows_to_csv(rows, outputs, heatmap=heatmap, header=False))
            kill_if(f"archive:batch{batches}:rows")  # a row written, its record not yet
            record.write(
                "".join(
                    f"{positions[row.path].pop(0)}\t{_signature(Path(row.path), content_hash)}\t"
                    f"{row.path}\n"
                    for row in rows
                )
            )
            table.flush()
            record.flush()
            kill_if(f"archive:batch{batches}")
            summary.add_rows(rows)
            bar.update(len(rows))
    bar.close()
    return summary


def _check_header(output: Path, header: str) -> None:
    """A resumed table must have this run's columns: rows of two layouts never share a file."""
    if not output.exists():
        return
    with open(output, encoding="utf-8") as handle:
        found = handle.readline().rstrip("\n")
    if found and found != header:
        raise ArchiveError(
            f"{output}: its columns ({found}) differ from this run's ({header}): it was written "
            "by another model or package version. Write to a new --output, or delete the old one"
        )


def merge_shards(inputs: Sequence[str | Path], output: str | Path) -> int:
    """Shard outputs -> one CSV (and progress file) in listing order, as one run writes it."""
    rows: list[tuple[int, str, str]] = []
    model: str | None = None
    header: str | None = None
    for raw in inputs:
        table = Path(raw)
        with open(table, encoding="utf-8") as handle:
            columns = handle.readline().rstrip("\n")
        if header is not None and columns != header:
            raise ArchiveError(f"{table}: its columns differ from the other shards'")
        header = columns
        log = table.with_name(table.name + PROGRESS_SUFFIX)
        if not log.exists():
            raise ArchiveError(f"{log}: missing; merge needs each shard's progress file")
        first = log.read_text(encoding="utf-8", errors=PATH_BYTES).split("\n", 1)[0]
        sha = first.removeprefix(_HEADER).strip()
        if model is not None and sha != model:
            raise ArchiveError(f"{table}: written by another model than the other shards")
        model = sha
        for csv_line, record in _read_done(table, log, sha):
            rows.append((int(record.split("\t", 1)[0]), csv_line, record))
    rows.sort()
    positions = [position for position, _, _ in rows]
    paths = [record.rsplit("\t", 1)[-1] for *_, record in rows]
    if len(set(positions)) != len(positions) or len(set(paths)) != len(paths):
        raise ArchiveError("the shards overlap (a file scored twice): merge distinct shards")
    if header is None:
        raise ArchiveError("no shard outputs to merge")
    atomic_write_text(output, "\n".join([header, *(line for _, line, _ in rows)]) + "\n")
    log_out = Path(output).with_name(Path(output).name + PROGRESS_SUFFIX)
    records = "\n".join([_HEADER + (model or ""), *(r for *_, r in rows)]) + "\n"
    atomic_write_text(log_out, records, errors=PATH_BYTES)
    return len(rows)


def read_table(path: str | Path) -> list[dict[str, str]]:
    """The rows of a prediction CSV (for callers and tests)."""
    return list(csv.DictReader(io.StringIO(Path(path).read_text(encoding="utf-8"))))
