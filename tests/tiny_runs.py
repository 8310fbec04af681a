"""Tiny, seconds-long training runs on the synthetic set, shared by several test modules."""

from __future__ import annotations

from pathlib import Path

from pneumonia_cxr.config import RunConfig
from pneumonia_cxr.model.model_file import FINAL_MODEL_NAME
from pneumonia_cxr.training.run import train


def tiny_config(data: Path, out: Path, name: str, **train_overrides) -> RunConfig:
    """resnet18 without pretrained weights, 48 px, a small head; 2 + 1 epochs by default."""
    config = RunConfig()
    config.data.dataset_path = str(data)
    config.data.image_size, config.data.batch_size, config.data.num_workers = 48, 16, 0
    config.data.val_fraction = 0.25
    config.model.backbone, config.model.weights = "resnet18", "none"
    config.model.head_dims = (32, 16)
    config.train.stage1_epochs, config.train.stage2_epochs = 2, 1
    config.train.output_dir, config.train.run_name = str(out), name
    for key, value in train_overrides.items():
        setattr(config.train, key, value)
    return config


def train_tiny_model(data: Path, out: Path) -> Path:
    """One stage-1 epoch: a usable model file in seconds on a CPU."""
    config = tiny_config(data, out, "tiny", stage1_epochs=1, stage2_epochs=0)
    return train(config) / FINAL_MODEL_NAME
