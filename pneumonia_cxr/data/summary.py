"""What is in a dataset folder, and what in it could bias training or evaluation.

Run before training (``pneumonia-cxr data --dataset_path P``): counts per split and class,
patients, byte-identical duplicates, patients or files shared between official splits (a
leak into the test figures), and files the project's loader cannot read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path
from typing import Any

from pneumonia_cxr import CLASS_NAMES, TYPE_NAMES
from pneumonia_cxr.data.discovery import SPLITS, ImageRecord, find_layout_root, list_images
from pneumonia_cxr.data.loader import load_xray
from pneumonia_cxr.data.patients import patient_id, pneumonia_type
from pneumonia_cxr.data.pneumonia_types import UNKNOWN, read_labels_csv, type_labels
from pneumonia_cxr.data.split import file_sha256
from pneumonia_cxr.errors import ImageLoadError

MAX_EXAMPLES = 5
"""How many example names or groups a summary lists where the full list would be long."""


def _pair_key(a: str, b: str) -> str:
    return f"{a}/{b}"


def _identical_groups(records: list[ImageRecord]) -> list[list[ImageRecord]]:
    """Groups of two or more byte-identical files, in dataset order."""
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_hash[file_sha256(record.path)].append(record)
    return [group for group in by_hash.values() if len(group) > 1]


def _unreadable(records: Iterable[ImageRecord], root: Path) -> list[dict[str, str]]:
    """Every file the project's one loader refuses, with its reason."""
    failures = []
    for record in records:
        try:
            load_xray(record.path)
        except ImageLoadError as error:
            failures.append(
                {
                    "path": record.path.relative_to(root).as_posix(),
                    "error": f"{type(error).__name__}: {error.reason}",
                }
            )
    return failures


def _cross_split_patients(records: list[ImageRecord]) -> tuple[dict, dict]:
    """Patient ids shared by two official splits: all of them, and those of the same type.

    "Same type" means the id is seen with the same pneumonia type (bacteria/virus) on both
    sides, or is a NORMAL id. Kermany numbers bacterial and viral cases in separate series, so
    ``person1`` with bacteria in train and with a virus in test is most likely two children.
    """
    kinds: dict[str, dict[str, set[str | None]]] = {split: defaultdict(set) for split in SPLITS}
    for record in records:
        patient = patient_id(record.path.name)
        if patient is not None:
            kinds[record.split][patient].add(pneumonia_type(record.path.name))
    shared, same_type = {}, {}
    for a, b in combinations(SPLITS, 2):
        common = sorted(kinds[a].keys() & kinds[b].keys())
        shared[_pair_key(a, b)] = common
        same_type[_pair_key(a, b)] = [p for p in common if kinds[a][p] & kinds[b][p]]
    return shared, same_type


def summarize_dataset(root: str | Path, *, check_readable: bool = True) -> dict[str, Any]:
    """Describe a dataset folder as a JSON-serialisable dict.

    Args:
        root: The layout root, or a folder above it (as for :func:`find_layout_root`).
        check_readable: Decode every file with the project's loader (takes seconds per
            thousand images) so that a broken file is found now rather than mid-training.
    """
    root = find_layout_root(root)
    records = list_images(root)

    def rel(record: ImageRecord) -> str:
        return record.path.relative_to(root).as_posix()

    counts = {split: dict.fromkeys(CLASS_NAMES, 0) for split in SPLITS}
    patients: dict[str, set[str]] = {split: set() for split in SPLITS}
    unrecognised = []
    for record in records:
        counts[record.split][record.class_name] += 1
        patient = patient_id(record.path.name)
        if patient is None:
            unrecognised.append(rel(record))
        else:
            patients[record.split].add(patient)

    identical = _identical_groups(records)
    cross_patients, cross_same_type = _cross_split_patients(records)
    types = {split: {**dict.fromkeys(TYPE_NAMES, 0), "unknown": 0} for split in SPLITS}
    for record, kind in zip(records, type_labels(records, read_labels_csv(root)), strict=True):
        if record.label == 1:
            types[record.split][TYPE_NAMES[kind] if kind != UNKNOWN else "unknown"] += 1
    return {
        "pneumonia_types": types,
        "root": str(root),
        "counts": counts,
        "class_totals": {name: sum(counts[s][name] for s in SPLITS) for name in CLASS_NAMES},
        "total_images": len(records),
        "patients": {split: len(ids) for split, ids in patients.items()},
        "unrecognised_names": {"count": len(unrecognised), "examples": unrecognised[:MAX_EXAMPLES]},
        "duplicate_groups": {
            "count": len(identical),
            "files": sum(len(group) for group in identical),
            "examples": [[rel(r) for r in group] for group in identical[:MAX_EXAMPLES]],
            "across_patients": [
                [rel(r) for r in group]
                for group in identical
                if len({patient_id(r.path.name) for r in group}) > 1
            ],
        },
        "duplicate_label_conflicts": [
            [rel(r) for r in group] for group in identical if len({r.label for r in group}) > 1
        ],
        "cross_split_patients": cross_patients,
        "cross_split_patient_counts": {pair: len(ids) for pair, ids in cross_patients.items()},
        "cross_split_patients_same_type": cross_same_type,
        "cross_split_duplicates": [
            [rel(r) for r in group] for group in identical if len({r.split for r in group}) > 1
        ],
        "readability_checked": check_readable,
        "unreadable": _unreadable(records, root) if check_readable else [],
    }


def _counts_table(summary: dict[str, Any]) -> list[str]:
    positive = CLASS_NAMES[1]
    header = f"  {'split':<6}" + "".join(f"{name:>11}" for name in CLASS_NAMES)
    lines = [header + f"{'total':>8}{'% ' + positive:>14}{'patients':>10}"]
    rows = [(split, summary["counts"][split], summary["patients"].get(split)) for split in SPLITS]
    rows.append(("total", summary["class_totals"], None))
    for name, by_class, n_patients in rows:
        total = sum(by_class.values())
        share = f"{100 * by_class[positive] / total:.1f}" if total else "-"
        patients = "" if n_patients is None else str(n_patients)
        row = f"  {name:<6}" + "".join(f"{by_class[c]:>11}" for c in CLASS_NAMES)
        lines.append(f"{row}{total:>8}{share:>14}{patients:>10}".rstrip())
    return lines


def _group_lines(groups: list[list[str]], limit: int = MAX_EXAMPLES) -> list[str]:
    lines = [f"    {' = '.join(group)}" for group in groups[:limit]]
    if len(groups) > limit:
        lines.append(f"    ... and {len(groups) - limit} more (see --json)")
    return lines


def _cross_patient_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["", "Patient ids in more than one official split:", "  pair        ids  same type"]
    only_across_types = 0
    for pair, ids in summary["cross_split_patients"].items():
        same = summary["cross_split_patients_same_type"][pair]
        only_across_types += len(ids) - len(same)
        shown = ", ".join(same[:MAX_EXAMPLES]) + (", ..." if len(same) > MAX_EXAMPLES else "")
        lines.append(f"  {pair:<11}{len(ids):>4}{len(same):>11}" + (f"  ({shown})" if same else ""))
    if only_across_types:
        lines += [
            f"  {only_across_types} shared id(s) pair a bacterial with a viral case: Kermany",
            "  numbers the two in separate series, so these are most likely different children",
            "  (the train/val split keeps such ids together anyway).",
        ]
    return lines


def _issues(summary: dict[str, Any]) -> list[str]:
    issues = []
    leaks = {pair: ids for pair, ids in summary["cross_split_patients_same_type"].items() if ids}
    if leaks:
        shown = ", ".join(f"{pair}: {len(ids)}" for pair, ids in leaks.items())
        issues.append(f"patients in more than one official split ({shown})")
    if summary["cross_split_duplicates"]:
        issues.append(f"{len(summary['cross_split_duplicates'])} identical file(s) across splits")
    if summary["duplicate_label_conflicts"]:
        issues.append(
            f"{len(summary['duplicate_label_conflicts'])} identical file(s) with different labels"
        )
    if summary["unreadable"]:
        issues.append(f"{len(summary['unreadable'])} unreadable file(s)")
    if summary["unrecognised_names"]["count"]:
        issues.append(
            f"{summary['unrecognised_names']['count']} file name(s) without a patient id "
            "(split as single images)"
        )
    return issues


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text report of :func:`summarize_dataset`, to read before training."""
    lines = [f"Dataset: {summary['root']}", "", "Images per official split and class:"]
    lines += _counts_table(summary)
    lines.append(f"  total images: {summary['total_images']}")
    lines += [
        "",
        "Pneumonia type of the PNEUMONIA images (unknown: they train the pneumonia "
        "question only, not the type head):",
    ]
    for split, kinds in summary["pneumonia_types"].items():
        lines.append(f"  {split:<6}" + ", ".join(f"{n} {name}" for name, n in kinds.items()))

    unrecognised = summary["unrecognised_names"]
    lines += ["", f"File names without a patient id: {unrecognised['count']}"]
    lines += [f"    {name}" for name in unrecognised["examples"]]

    duplicates = summary["duplicate_groups"]
    lines += [
        "",
        f"Byte-identical groups: {duplicates['count']} ({duplicates['files']} files); "
        "kept together by the patient split",
    ]
    lines += _group_lines(duplicates["examples"], limit=len(duplicates["examples"]))
    if duplicates["count"] > len(duplicates["examples"]):
        lines.append(f"    ... and {duplicates['count'] - len(duplicates['examples'])} more")
    if duplicates["across_patients"]:
        lines.append("  identical files under different patient ids (split as one patient):")
        lines += _group_lines(duplicates["across_patients"])
    if summary["duplicate_label_conflicts"]:
        lines.append("  identical files with different labels:")
        lines += _group_lines(summary["duplicate_label_conflicts"])

    lines += _cross_patient_lines(summary)
    lines += [
        "",
        f"Identical files across official splits: {len(summary['cross_split_duplicates'])}",
    ]
    lines += _group_lines(summary["cross_split_duplicates"])

    lines.append("")
    if not summary["readability_checked"]:
        lines.append("Readability: not checked")
    else:
        lines.append(
            f"Unreadable files: {len(summary['unreadable'])} "
            f"(every file decoded with the project's loader)"
        )
        lines += [f"    {item['path']}: {item['error']}" for item in summary["unreadable"]]

    issues = _issues(summary)
    lines += ["", "Issues to know before training:" if issues else "No issues found."]
    lines += [f"  - {issue}" for issue in issues]
    return "\n".join(lines)
