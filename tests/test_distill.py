"""Knowledge distillation: teacher probabilities, the split check, soft targets, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from pneumonia_cxr.cli import main
from pneumonia_cxr.data.split import file_sha256
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.model.classifier import PneumoniaNet
from pneumonia_cxr.model.model_file import FINAL_MODEL_NAME, load_model
from pneumonia_cxr.run_folder import TEACHER_FILE
from pneumonia_cxr.training.module import PneumoniaLitModule
from pneumonia_cxr.training.run import train
from tests.tiny_runs import tiny_config


@pytest.fixture(scope="module")
def teacher(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    config = tiny_config(tiny_synthetic, out, "teacher", stage1_epochs=1, stage2_epochs=0)
    config.data.split_seed = 5
    return train(config) / FINAL_MODEL_NAME


def _student(data: Path, out: Path, teacher: Path, name: str = "student", **overrides):
    config = tiny_config(data, out, name, stage1_epochs=1, stage2_epochs=1)
    config.data.split_seed = 5
    config.distill.teacher, config.distill.teacher_sha256 = str(teacher), file_sha256(teacher)
    config.distill.alpha = 0.7
    for key, value in overrides.items():
        setattr(config.data, key, value)
    return config


def test_soft_targets_mix_label_and_teacher() -> None:
    """(1 - a) * BCE(label) + a * BCE(teacher) equals BCE against the mixed target."""
    net = PneumoniaNet("resnet18", weights="none", head_dims=(8, 4))
    teacher = torch.tensor([0.9, 0.2, 0.6])
    module = PneumoniaLitModule(
        net, stage=1, lr=1e-3, teacher_probabilities=teacher, distill_alpha=0.3
    )
    logits, labels = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.0, 0.0])
    batch = {"index": torch.tensor([0, 1, 2])}
    mixed = module._loss(logits, labels, soft_targets=module._teacher_targets(batch))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = 0.7 * bce(logits, labels) + 0.3 * bce(logits, teacher)
    assert torch.allclose(mixed, expected, atol=1e-6)
    plain = PneumoniaLitModule(net, stage=1, lr=1e-3)
    assert plain._teacher_targets(batch) is None


def test_distilled_student_is_an_ordinary_model_file(
    tiny_synthetic: Path, teacher: Path, tmp_path: Path
) -> None:
    run = train(_student(tiny_synthetic, tmp_path, teacher))
    with open(run / TEACHER_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(run / "split.csv", newline="") as handle:
        split_rows = list(csv.DictReader(handle))
    assert len(rows) == sum(row["subset"] == "train" for row in split_rows)
    probabilities = [float(r["probability"]) for r in rows]
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert len(set(probabilities)) > 1  # real teacher scores, not copied labels
    bundle = load_model(run / FINAL_MODEL_NAME)
    assert bundle.config["distill"]["teacher"] == str(teacher)
    assert bundle.config["distill"]["alpha"] == 0.7
    assert 0.0 < bundle.threshold < 1.0


def test_teacher_with_another_split_is_refused(
    tiny_synthetic: Path, teacher: Path, tmp_path: Path
) -> None:
    config = _student(tiny_synthetic, tmp_path, teacher, split_seed=6)
    with pytest.raises(ModelFileError, match="patient-level split"):
        train(config)


def test_changed_teacher_file_is_refused(
    tiny_synthetic: Path, teacher: Path, tmp_path: Path
) -> None:
    config = _student(tiny_synthetic, tmp_path, teacher)
    config.distill.teacher_sha256 = "0" * 64
    with pytest.raises(ModelFileError, match="sha256"):
        train(config)


def test_distill_command_inherits_the_teachers_split(
    tiny_synthetic: Path, teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(
        [
            "distill",
            "--teacher",
            str(teacher),
            "--dataset_path",
            str(tiny_synthetic),
            "--backbone",
            "resnet18",
            "--weights",
            "none",
            "--image_size",
            "48",
            "--batch_size",
            "16",
            "--num_workers",
            "0",
            "--stage1_epochs",
            "1",
            "--stage2_epochs",
            "0",
            "--output_dir",
            str(tmp_path),
            "--run_name",
            "cli_student",
        ]
    )
    assert code == 0
    saved = json.loads((tmp_path / "cli_student" / "config.json").read_text())
    assert saved["data"]["split_seed"] == 5
    assert saved["data"]["val_fraction"] == 0.25
    assert saved["distill"]["teacher_sha256"] == file_sha256(teacher)


def test_scoring_the_teacher_leaves_the_random_stream_alone(
    tiny_synthetic: Path, teacher: Path, tmp_path: Path
) -> None:
    """A fresh run scores the teacher, a resumed one reads the file: the network's initial
    weights, drawn next, must be the same either way (exact resume)."""
    from pneumonia_cxr.data.discovery import list_images
    from pneumonia_cxr.data.split import make_patient_split
    from pneumonia_cxr.run_folder import RunPaths
    from pneumonia_cxr.training.run import _teacher

    config = _student(tiny_synthetic, tmp_path, teacher)
    records = [r for r in list_images(tiny_synthetic) if r.split != "test"]
    split = make_patient_split(records, 0.25, 5)
    paths = RunPaths(tmp_path)
    torch.manual_seed(0)
    scored = _teacher(config, split, paths)
    after_scoring = torch.rand(3)
    torch.manual_seed(0)
    read_back = _teacher(config, split, paths)
    assert torch.equal(torch.rand(3), after_scoring)
    assert torch.equal(scored, read_back)
