"""The files of a run folder, named once for training, evaluation and resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pneumonia_cxr.model.model_file import FINAL_MODEL_NAME

CONFIG_FILE, SPLIT_FILE, PROGRESS_FILE = "config.json", "split.csv", "progress.json"
METRICS_FILE, SUMMARY_FILE = "metrics.csv", "run_summary.json"
TEACHER_FILE = "teacher_probabilities.csv"


@dataclass
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def split(self) -> Path:
        return self.root / SPLIT_FILE

    @property
    def progress(self) -> Path:
        return self.root / PROGRESS_FILE

    @property
    def teacher_probabilities(self) -> Path:
        return self.root / TEACHER_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    def stage_checkpoints(self, stage: int) -> Path:
        return self.root / "checkpoints" / f"stage{stage}"

    @property
    def final_model(self) -> Path:
        return self.root / FINAL_MODEL_NAME
