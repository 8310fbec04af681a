"""A hospital's own labelled images ("a site"): list them, and split them by patient.

A site folder is either `NORMAL/` + `PNEUMONIA/` directly, or the official layout
(`{train,val,test}/{NORMAL,PNEUMONIA}/`, one split chosen). Patients come from the Kermany file
names, or from a `patients.csv` (columns `file`, `patient`) in the site folder; without either,
every image is its own group and a warning says so (images of one child could then fall on
both sides of a split).
"""

from __future__ import annotations

import csv
import logging
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.data.discovery import (
    ImageRecord,
    class_folders,
    class_images,
    find_layout_root,
    list_images,
)
from pneumonia_cxr.data.patients import patient_id
from pneumonia_cxr.errors import DatasetLayoutError

log = logging.getLogger(__name__)

SITE_SPLIT = "site"
"""The `split` of records read from a flat NORMAL/PNEUMONIA folder."""
PATIENTS_FILE = "patients.csv"


def is_flat_site(path: str | Path) -> bool:
    """True for a folder that holds NORMAL/ or PNEUMONIA/ directly."""
    return any((Path(path) / name).is_dir() for name in CLASS_NAMES)


def list_site_images(path: str | Path, split: str = "test") -> list[ImageRecord]:
    """Every image of a site folder with its label, checked as strictly as the official layout.

    Raises:
        DatasetLayoutError: a missing, empty or unknown class folder (named), or no layout.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: not a folder; give a folder with NORMAL/ and PNEUMONIA/")
    if not is_flat_site(root):
        return list_images(find_layout_root(root), [split])
    skipped: list[Path] = []
    records = [
        ImageRecord(path=image, split=SITE_SPLIT, label=label)
        for label, class_dir in enumerate(class_folders(root))
        for image in class_images(class_dir, skipped)
    ]
    if skipped:
        log.warning("ignored %d non-image file(s) in %s", len(skipped), root)
    return records


def read_patients_csv(folder: str | Path) -> dict[str, str]:
    """file name -> patient id from `<folder>/patients.csv`; empty when there is none."""
    path = Path(folder) / PATIENTS_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"file", "patient"} <= set(reader.fieldnames or ()):
            raise DatasetLayoutError(f"{path}: needs the columns 'file' and 'patient'")
        return {Path(row["file"]).name: row["patient"] for row in reader if row["patient"]}


def patient_of(record: ImageRecord, patients: Mapping[str, str]) -> str | None:
    """The record's patient: from `patients.csv`, else its Kermany file name; None if neither."""
    return patients.get(record.path.name) or patient_id(record.path.name)


def site_folds(
    records: Sequence[ImageRecord],
    n_folds: int = 2,
    seed: int = 0,
    patients: Mapping[str, str] | None = None,
) -> list[list[ImageRecord]]:
    """Split a site's images into `n_folds` folds by patient, each class spread evenly.

    Patients are visited in a seeded random order; each goes to the fold that holds the fewest
    images of its class so far. Records without a patient id are their own group (warned).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, not {n_folds}")
    patients = patients or {}
    groups: dict[str, list[ImageRecord]] = {}
    unknown = 0
    for index, record in enumerate(records):
        patient = patient_of(record, patients)
        if patient is None:
            unknown += 1
            patient = f"image:{index}"
        groups.setdefault(patient, []).append(record)
    if unknown:
        warnings.warn(
            f"{unknown} of {len(records)} image(s) carry no patient id (Kermany file names or a "
            f"{PATIENTS_FILE} with columns file,patient): they are split by image, so one "
            "child's images may land in two folds",
            stacklevel=2,
        )
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    folds: list[list[ImageRecord]] = [[] for _ in range(n_folds)]
    counts = [[0] * len(CLASS_NAMES) for _ in range(n_folds)]
    for patient in order:
        members = groups[patient]
        label = max(range(len(CLASS_NAMES)), key=lambda c: sum(r.label == c for r in members))
        target = min(range(n_folds), key=lambda f: (counts[f][label], sum(counts[f])))
        folds[target].extend(members)
        for record in members:
            counts[target][record.label] += 1
    return folds
