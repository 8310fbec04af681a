"""Patient-level train/validation split of the official train (+ val) images.

Kermany's official val split has 16 images, too few to choose a checkpoint or a threshold, so
validation is carved out of train + val. It is done by patient, never by image (as in
torchxrayvision's ``train_utils.py``): several radiographs of one child on both sides would
leak. Byte-identical files are kept together too, even under different patient names.
The official test split is never touched.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.patients import patient_id
from pneumonia_cxr.storage import atomic_write_text

POOL_SPLITS: tuple[str, ...] = ("train", "val", "site")
"""Official train and val images, or a site's own flat folder (`data.site`); never test."""
CSV_COLUMNS: tuple[str, ...] = (
    "path",
    "official_split",
    "label",
    "class_name",
    "patient",
    "subset",
    "seed",
    "val_fraction",
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PatientSplit:
    """The training and validation images, and how they were drawn."""

    train: list[ImageRecord]
    val: list[ImageRecord]
    seed: int
    val_fraction: float
    n_unrecognised: int
    """Images whose name carries no patient: each is its own group."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks so large DICOMs do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _UnionFind:
    """Disjoint sets over record indices: patients and duplicate files chain into one group."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def _groups(
    records: Sequence[ImageRecord], patients: Mapping[str, str] | None = None
) -> tuple[list[list[int]], int]:
    """Group record indices by patient id and by file content; also count unrecognised names."""
    sets = _UnionFind(len(records))
    first_by_key: dict[str, int] = {}
    n_unrecognised = 0
    for index, record in enumerate(records):
        patient = (patients or {}).get(record.path.name) or patient_id(record.path.name)
        if patient is None:
            n_unrecognised += 1
        keys = [f"sha256:{file_sha256(record.path)}"]
        if patient is not None:
            keys.append(f"patient:{patient}")
        for key in keys:
            sets.union(first_by_key.setdefault(key, index), index)
    members: dict[int, list[int]] = {}
    for index in range(len(records)):
        members.setdefault(sets.find(index), []).append(index)
    return list(members.values()), n_unrecognised


def _cost(val_counts: list[int], targets: list[float]) -> float:
    """Squared relative miss of the per-class validation targets."""
    return sum(((n - t) / max(t, 1.0)) ** 2 for n, t in zip(val_counts, targets, strict=True))


def _choose_val_groups(group_counts: list[list[int]], targets: list[float], seed: int) -> set[int]:
    """Seeded greedy: visit groups in a random order, keep one if it brings val closer to target.

    Visiting in random order makes val a random sample of patients; the many one- or two-image
    groups met late fill the remainder, so each class lands within a few images of its target.
    """
    order = list(range(len(group_counts)))
    random.Random(seed).shuffle(order)
    val_counts = [0] * len(targets)
    chosen: set[int] = set()
    for group in order:
        after = [n + g for n, g in zip(val_counts, group_counts[group], strict=True)]
        if _cost(after, targets) < _cost(val_counts, targets):
            val_counts = after
            chosen.add(group)
    return chosen


def _check_pool(records: Sequence[ImageRecord], val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    if not records:
        raise ValueError("no records to split")
    outside = sorted({record.split for record in records} - set(POOL_SPLITS))
    if outside:
        raise ValueError(
            f"records from split(s) {outside} were passed: only {POOL_SPLITS} images are split; "
            "the official test split is kept for final reporting and never used here"
        )


def _warn_missing_classes(train: list[ImageRecord], val: list[ImageRecord]) -> None:
    for subset_name, subset in (("train", train), ("val", val)):
        labels = {record.label for record in subset}
        missing = [name for index, name in enumerate(CLASS_NAMES) if index not in labels]
        if missing:
            warnings.warn(
                f"the {subset_name} subset has no {', '.join(missing)} image: too few patients "
                "for this val_fraction; validation metrics will be undefined",
                stacklevel=3,
            )


def make_patient_split(
    records: Sequence[ImageRecord],
    val_fraction: float = 0.15,
    seed: int = 42,
    patients: Mapping[str, str] | None = None,
) -> PatientSplit:
    """Split official train + val images into train and validation by patient, per class.

    Args:
        records: Images of the official ``train`` and ``val`` splits (``test`` is refused).
        val_fraction: Share of each class's images that should go to validation.
        seed: Same seed, same split.
        patients: File name -> patient id where the names carry none (a site's patients.csv).

    Raises:
        ValueError: on test records, an empty input or a fraction outside (0, 1).
    """
    _check_pool(records, val_fraction)
    groups, n_unrecognised = _groups(records, patients)
    if n_unrecognised:
        warnings.warn(
            f"{n_unrecognised} file name(s) carry no recognisable patient id; each is kept as "
            "its own group (only identical copies stay together)",
            stacklevel=2,
        )
    group_counts = []
    for members in groups:
        counts = [0] * len(CLASS_NAMES)
        for index in members:
            counts[records[index].label] += 1
        group_counts.append(counts)
    class_totals = [sum(counts[c] for counts in group_counts) for c in range(len(CLASS_NAMES))]
    targets = [val_fraction * total for total in class_totals]
    chosen = _choose_val_groups(group_counts, targets, seed)
    in_val = {index for group in chosen for index in groups[group]}
    train = [record for index, record in enumerate(records) if index not in in_val]
    val = [record for index, record in enumerate(records) if index in in_val]
    _warn_missing_classes(train, val)
    return PatientSplit(
        train=train,
        val=val,
        seed=seed,
        val_fraction=val_fraction,
        n_unrecognised=n_unrecognised,
    )


def official_split(records: Sequence[ImageRecord], seed: int) -> PatientSplit:
    """The official train and val folders as they are (`data.validation = "official"`): what
    the reference early-stops on. Its 16 images (8 per class) share no patient with train,
    but are far too few to choose a checkpoint or a threshold well: kept as published, since
    this split exists to reproduce the reference."""
    _check_pool(records, 0.5)
    train = [record for record in records if record.split == "train"]
    val = [record for record in records if record.split == "val"]
    _warn_missing_classes(train, val)
    return PatientSplit(train=train, val=val, seed=seed, val_fraction=0.0, n_unrecognised=0)


def write_split_csv(split: PatientSplit, path: str | Path) -> None:
    """Save a split so that a run can be audited and repeated with exactly the same images.

    Written atomically: `--resume` reads it back, so a kill mid-write must leave none or all.
    """
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for subset, records in (("train", split.train), ("val", split.val)):
        for record in records:
            writer.writerow(
                {
                    "path": str(record.path),
                    "official_split": record.split,
                    "label": record.label,
                    "class_name": record.class_name,
                    "patient": patient_id(record.path.name) or "",
                    "subset": subset,
                    "seed": split.seed,
                    "val_fraction": split.val_fraction,
                }
            )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, handle.getvalue())


def _record_from_row(row: dict[str, str], path: Path, line: int) -> ImageRecord:
    if row["official_split"] not in POOL_SPLITS:
        raise ValueError(
            f"{path} line {line}: official split {row['official_split']!r} cannot be in a "
            f"train/val split (only {POOL_SPLITS})"
        )
    label = int(row["label"])
    if not 0 <= label < len(CLASS_NAMES) or CLASS_NAMES[label] != row["class_name"]:
        raise ValueError(
            f"{path} line {line}: label {row['label']} does not match class {row['class_name']!r}"
        )
    return ImageRecord(path=Path(row["path"]), split=row["official_split"], label=label)


def read_split_csv(path: str | Path) -> PatientSplit:
    """Read a split written by :func:`write_split_csv`."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a split file: missing column(s) {sorted(missing)}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path} lists no images")
    subsets: dict[str, list[ImageRecord]] = {"train": [], "val": []}
    for line, row in enumerate(rows, start=2):
        if row["subset"] not in subsets:
            raise ValueError(
                f"{path} line {line}: subset must be train or val, not {row['subset']!r}"
            )
        subsets[row["subset"]].append(_record_from_row(row, path, line))
    return PatientSplit(
        train=subsets["train"],
        val=subsets["val"],
        seed=int(rows[0]["seed"]),
        val_fraction=float(rows[0]["val_fraction"]),
        n_unrecognised=sum(1 for row in rows if not row["patient"]),
    )
