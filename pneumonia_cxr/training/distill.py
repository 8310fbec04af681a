"""The teacher's side of knowledge distillation: its probabilities for the training images.

They are computed once, on unaugmented images through the one inference path (the teacher's
own preprocessing, threshold-free), and written to the run folder, so a resumed student reads
the same numbers back instead of re-scoring (exact resume, and no need for the teacher file
any more). Augmented views share their image's teacher probability ("offline" distillation):
scoring every augmented batch with a four-network teacher would cost four forward passes per
step on a CPU.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.fingerprint import records_fingerprint
from pneumonia_cxr.data.split import POOL_SPLITS, PatientSplit, file_sha256, make_patient_split
from pneumonia_cxr.errors import ModelFileError, RunFolderError
from pneumonia_cxr.model.model_file import ModelBundle, load_model
from pneumonia_cxr.storage import atomic_write_text

log = logging.getLogger(__name__)

TEACHER_COLUMNS = ("path", "probability")


def teacher_split_settings(teacher: ModelBundle, path: str | Path) -> tuple[int, float]:
    """(split seed, validation fraction) the teacher was trained with, from its config."""
    data = teacher.config.get("data", {})
    seed = data.get("split_seed")
    if seed is None:
        seed = teacher.config.get("train", {}).get("seed")
    if seed is None or "val_fraction" not in data:
        raise ModelFileError(
            f"{path}: the teacher model file does not record its patient-level split (no "
            "data.split_seed/"
            "train.seed or val_fraction in its config); distil from a model trained by "
            "`pneumonia-cxr train` or `ensemble`"
        )
    return int(seed), float(data["val_fraction"])


def _key(record: ImageRecord) -> str:
    return f"{record.split}/{record.class_name}/{record.path.name}"


def check_same_split(teacher: ModelBundle, teacher_path: str | Path, split: PatientSplit) -> None:
    """Refuse a teacher trained on another patient-level split (or other images).

    Its validation images would be the student's training images or the reverse: the student
    would learn the teacher's answers on images the student is validated on, and the two
    validation AUCs the selection compares would be measured on different images.
    """
    # The listing order (`list_images`, `list_site_images`), which the greedy draw depends on.
    records = sorted(
        [*split.train, *split.val],
        key=lambda r: (POOL_SPLITS.index(r.split), r.label, r.path.name),
    )
    fingerprint = records_fingerprint(records, "trainval")
    if teacher.data_fingerprint and teacher.data_fingerprint != fingerprint:
        raise ModelFileError(
            f"{teacher_path}: the teacher was trained on other train/validation images "
            f"(data fingerprint {teacher.data_fingerprint}, the student's {fingerprint}); "
            "distil on the teacher's data set"
        )
    seed, fraction = teacher_split_settings(teacher, teacher_path)
    teacher_val = {_key(r) for r in make_patient_split(records, fraction, seed).val}
    if teacher_val != {_key(r) for r in split.val}:
        raise ModelFileError(
            f"{teacher_path}: the teacher's patient-level split (split seed {seed}, validation "
            f"fraction {fraction}) differs from the student's ({split.seed}, "
            f"{split.val_fraction}); leave --split_seed and --val_fraction unset to inherit "
            "the teacher's"
        )


def _read(path: Path, records: Sequence[ImageRecord]) -> torch.Tensor:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = {row["path"]: float(row["probability"]) for row in csv.DictReader(handle)}
    except (KeyError, ValueError, UnicodeDecodeError) as error:
        raise RunFolderError(
            f"{path}: damaged ({type(error).__name__}: {error}); delete it and resume to score "
            "the training images with the teacher again"
        ) from error
    missing = [str(r.path) for r in records if str(r.path) not in rows]
    if missing:
        raise RunFolderError(
            f"{path}: no teacher probability for {len(missing)} training image(s), e.g. "
            f"{missing[0]}; delete the file and resume to score them again"
        )
    return torch.tensor([rows[str(r.path)] for r in records], dtype=torch.float32)


def teacher_probabilities(
    teacher_path: str | Path,
    expected_sha256: str,
    split: PatientSplit,
    output: Path,
    *,
    batch_size: int = 32,
    device: str | None = None,
) -> torch.Tensor:
    """P(PNEUMONIA) of the teacher for each training record, in `split.train` order.

    Read back from `output` when a previous attempt wrote it; otherwise the teacher (checked
    against `expected_sha256` and against the split) scores every training image once.
    An unreadable training image gets its label as target (the student skips it anyway).
    """
    if output.is_file():
        return _read(output, split.train)
    from pneumonia_cxr.inference.predictor import Predictor

    teacher_path = Path(teacher_path)
    if not teacher_path.is_file():
        raise ModelFileError(f"{teacher_path}: teacher model file not found")
    actual = file_sha256(teacher_path)
    if expected_sha256 and actual != expected_sha256:
        raise ModelFileError(
            f"{teacher_path}: sha256 {actual[:12]}... is not the teacher this run was started "
            f"with ({expected_sha256[:12]}...)"
        )
    bundle = load_model(teacher_path)
    check_same_split(bundle, teacher_path, split)
    predictor = Predictor.from_bundle(bundle, device, teacher_path, engine="auto")
    log.info("teacher %s scores %d training images", teacher_path, len(split.train))
    scored = predictor.score_records(split.train, batch_size=batch_size)
    by_path = {
        str(r.path): float(p) for r, p in zip(scored.kept, scored.scores.probabilities, strict=True)
    }
    for index, error in scored.errors.items():
        log.warning("teacher could not read %s (%s)", split.train[index].path, error)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(TEACHER_COLUMNS)
    for record in split.train:
        writer.writerow([str(record.path), repr(by_path.get(str(record.path), record.label))])
    atomic_write_text(output, buffer.getvalue())
    return _read(output, split.train)
