"""Two-stage training on synthetic data: learning, exact resume, bad files, DDP."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny_runs import tiny_config

from pneumonia_cxr.config import RunConfig
from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.data.split import make_patient_split, read_split_csv
from pneumonia_cxr.model.model_file import load_model
from pneumonia_cxr.training.run import train


class CrashAfterFirstEpoch(L.Callback):
    """Simulates a job killed during its second epoch, after the first epoch's checkpoint."""

    def on_train_batch_start(self, trainer: L.Trainer, module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_model(run_dir / "final_pneumonia_model.pt").model.state_dict()


def test_resumed_run_ends_with_the_same_weights(tiny_synthetic: Path, tmp_path: Path) -> None:
    unbroken = train(tiny_config(tiny_synthetic, tmp_path, "unbroken"))
    config = tiny_config(tiny_synthetic, tmp_path, "broken")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, extra_callbacks=[CrashAfterFirstEpoch()])
    broken = tmp_path / "broken"
    assert (broken / "checkpoints" / "stage1" / "last.ckpt").exists()
    assert not (broken / "final_pneumonia_model.pt").exists()
    train(resume=broken)
    expected, resumed = _weights(unbroken), _weights(broken)
    for key, value in expected.items():
        assert torch.allclose(value.float(), resumed[key].float(), atol=1e-5), key
    rows = (broken / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # header + 2 stage-1 epochs + 1 stage-2 epoch, no duplicates


def test_run_folder_is_complete(tiny_synthetic: Path, tmp_path: Path) -> None:
    run_dir = train(tiny_config(tiny_synthetic, tmp_path, "complete"))
    expected = ["config.json", "split.csv", "metrics.csv", "run_summary.json", "progress.json"]
    for name in [*expected, "learning_curves.png"]:
        assert (run_dir / name).is_file(), name
    assert RunConfig.load(run_dir / "config.json").model.backbone == "resnet18"
    bundle = load_model(run_dir / "final_pneumonia_model.pt")
    assert 0.0 <= bundle.threshold <= 1.0
    assert bundle.threshold_rule == "max_specificity_at_sensitivity"
    assert bundle.data_fingerprint and bundle.config["train"]["seed"] == 42
    assert any((run_dir / "logs").rglob("events.out.tfevents*"))


def test_corrupt_training_image_is_skipped_and_counted(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_synthetic, data)
    config = tiny_config(data, tmp_path / "runs", "corrupt", stage2_epochs=0)
    # The victim is a PNEUMONIA image of the training subset (the split depends on the file
    # names and labels, not on the bytes), so its skip must be counted.
    pool = [r for r in list_images(data) if r.split in ("train", "val")]
    split = make_patient_split(pool, config.data.val_fraction, config.train.seed)
    victim = sorted(r.path for r in split.train if r.class_name == "PNEUMONIA")[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match=victim.name):
        run_dir = train(config)
    assert victim in {r.path for r in read_split_csv(run_dir / "split.csv").train}
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert [Path(p).name for p in summary["skipped_train_files"]] == [victim.name]
    assert summary["train_images"] == len(split.train)  # skipped per batch, still listed
    assert (run_dir / "final_pneumonia_model.pt").exists()


@pytest.mark.slow
def test_both_stages_learn_on_synthetic_data(tmp_path: Path) -> None:
    from pneumonia_cxr.data.synthetic import SyntheticSpec, generate_synthetic_dataset

    spec = SyntheticSpec(image_size=96, train_per_class=80, val_per_class=4, test_per_class=4)
    data = generate_synthetic_dataset(tmp_path / "data", spec)
    config = tiny_config(data, tmp_path, "learn", stage1_epochs=3, stage2_epochs=3)
    config.data.val_fraction, config.data.image_size = 0.3, 96
    config.model.backbone, config.model.weights = "efficientnet_lite0", "imagenet"
    config.model.head_dims, config.model.unfreeze_layers = (512, 256), -1
    config.train.stage1_lr, config.train.stage2_lr = 3e-3, 1e-3
    run_dir = train(config)
    progress = json.loads((run_dir / "progress.json").read_text())
    # Validation AUC (about 50 images) above chance after the head-only stage, and high
    # after fine-tuning; the training loss falls in both stages.
    assert progress["stage1"]["best_score"] > 0.65
    assert progress["stage2"]["best_score"] > 0.85
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    for stage in ("1", "2"):
        losses = [float(r["train_loss"]) for r in rows if r["stage"] == stage]
        assert losses[-1] < losses[0], (stage, losses)


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tiny_synthetic: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "pneumonia_cxr.cli", "train",
        "--dataset_path", str(tiny_synthetic), "--backbone", "resnet18", "--weights", "none",
        "--stage1_epochs", "1", "--stage2_epochs", "0", "--image_size", "48",
        "--batch_size", "8", "--num_workers", "0", "--accelerator", "cpu", "--devices", "2",
        "--strategy", "ddp", "--output_dir", str(tmp_path),
    ]  # fmt: skip
    # No --run_name: the worker process must still join the time-stamped folder rank 0 named.
    env = {k: v for k, v in os.environ.items() if k != "PNEUMONIA_CXR_RUN_NAME"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert (run_dir / "final_pneumonia_model.pt").exists()
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["stage1"]["done"]


def test_reference_command_sequence_finds_the_latest_model_and_output_is_quiet(
    tiny_synthetic: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from pneumonia_cxr.cli import main
    from pneumonia_cxr.model.model_file import FINAL_MODEL_NAME

    for name in ("first", "second"):
        config = tiny_config(tiny_synthetic, tmp_path, name, stage1_epochs=1, stage2_epochs=0)
        latest_run = train(config)
    output = capfd.readouterr()
    text = output.out + output.err
    assert "Trainer.fit` stopped" not in text and "Tip" not in text
    assert "Validation DataLoader" not in text and "DeprecationWarning" not in text
    latest = tmp_path / FINAL_MODEL_NAME  # scripts/evaluate.py --model_path outputs/final_...
    assert latest.is_symlink() and latest.resolve() == (latest_run / FINAL_MODEL_NAME).resolve()
    args = ["evaluate", "--model_path", str(latest), "--dataset_path", str(tiny_synthetic)]
    assert main([*args, "--explain_images", "0", "--n_resamples", "50"]) == 0
    assert (latest_run / "eval_test" / "metrics.json").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_a_gpu_with_class_weights(tiny_synthetic: Path, tmp_path: Path) -> None:
    """The epoch-end validation loss mixes CPU rows with the GPU's class-weight buffer: this
    broke every GPU training once (study 2's first run on a lent H200)."""
    config = tiny_config(tiny_synthetic, tmp_path, "gpu", stage1_epochs=1, stage2_epochs=1)
    config.train.accelerator = "gpu"
    assert (train(config) / "final_pneumonia_model.pt").is_file()
