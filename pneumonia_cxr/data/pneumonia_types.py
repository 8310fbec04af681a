"""The pneumonia type of each training image: BACTERIAL (0), VIRAL (1) or unknown (-1).

Where it comes from, in order: a `labels.csv` (columns `file,type`) in the dataset folder, then
a type folder (`.../PNEUMONIA/BACTERIAL/x.jpeg`, `.../PNEUMONIA/VIRAL/x.jpeg`), then the Kermany
file name (`personN_bacteria_M`, `personN_virus_M`). A NORMAL image has no type; a pneumonia
image whose type is unknown trains the pneumonia question only (issue 27).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from pneumonia_cxr import TYPE_NAMES
from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.patients import pneumonia_type
from pneumonia_cxr.errors import DatasetLayoutError

UNKNOWN = -1
LABELS_FILE = "labels.csv"
_SPELLINGS = {
    "bacterial": 0,
    "bacteria": 0,
    "viral": 1,
    "virus": 1,
}
_NAME_TYPES = {"bacteria": 0, "virus": 1}


def parse_type(text: str, where: str) -> int:
    """0 or 1 for a type name (any case; bacterial/bacteria, viral/virus), else a clear error."""
    value = _SPELLINGS.get(text.strip().lower())
    if value is None:
        raise DatasetLayoutError(
            f"{where}: pneumonia type {text!r} is neither of {', '.join(TYPE_NAMES)} "
            "(bacterial/viral); fix or remove it"
        )
    return value


def read_labels_csv(root: str | Path) -> dict[str, int]:
    """`labels.csv` in `root`: file (relative to `root`, or a bare name) -> type; {} when absent.
    A file listed twice with two types, a missing file, or another type is an error."""
    path = Path(root) / LABELS_FILE
    if not path.is_file():
        return {}
    types: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "type"} <= set(reader.fieldnames):
            raise DatasetLayoutError(f"{path}: needs the columns file,type")
        for line, row in enumerate(reader, start=2):
            name = (row["file"] or "").strip()
            kind = parse_type(row["type"] or "", f"{path} line {line} ({name})")
            if name in types and types[name] != kind:
                raise DatasetLayoutError(
                    f"{path} line {line}: {name} is listed as both {TYPE_NAMES[types[name]]} "
                    f"and {TYPE_NAMES[kind]}; keep one"
                )
            types[name.replace("\\", "/")] = kind
    return types


def record_type(record: ImageRecord, listed: dict[str, int] | None = None) -> int:
    """The type of one record (UNKNOWN for a NORMAL image or an unknown pneumonia type)."""
    if record.label != 1:
        return UNKNOWN
    listed = listed or {}
    for key in (record.path.name, *_relative_keys(record.path)):
        if key in listed:
            return listed[key]
    folder = record.path.parent.name.lower()
    if folder in _SPELLINGS:
        return _SPELLINGS[folder]
    kind = pneumonia_type(record.path.name)
    return _NAME_TYPES[kind] if kind else UNKNOWN


def _relative_keys(path: Path) -> list[str]:
    parts = path.parts
    return ["/".join(parts[i:]) for i in range(max(0, len(parts) - 4), len(parts) - 1)]


def type_labels(records: Sequence[ImageRecord], listed: dict[str, int] | None = None) -> list[int]:
    """`record_type` of every record, in order. A `labels.csv` entry that names no image of
    `records` is an error (a typo would otherwise drop its label silently)."""
    listed = listed or {}
    keys = {key for r in records for key in (r.path.name, *_relative_keys(r.path))}
    unknown = sorted(set(listed) - keys)
    if unknown:
        raise DatasetLayoutError(
            f"{LABELS_FILE} names {len(unknown)} file(s) that are not images of the data set, "
            f"e.g. {unknown[0]}; fix the names (relative to the data set folder) or remove them"
        )
    return [record_type(record, listed) for record in records]


def check_trainable(train_types: Sequence[int], where: str = "the training split") -> None:
    """A type head needs both types among the training images; else say why it cannot."""
    present = {t for t in train_types if t != UNKNOWN}
    if present != {0, 1}:
        have = ", ".join(TYPE_NAMES[t] for t in sorted(present)) or "none"
        raise DatasetLayoutError(
            f"{where} has pneumonia type labels of {have} only: a type head needs both "
            f"{' and '.join(TYPE_NAMES)} images; add them or train without --type_head"
        )
