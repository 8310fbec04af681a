"""`make demo`: synthetic data -> two-stage training -> evaluation, with the config's preset."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pneumonia_cxr.config import demo_config
from pneumonia_cxr.data.synthetic import generate_synthetic_dataset
from pneumonia_cxr.evaluation.evaluate import EvaluationResult, evaluate_model
from pneumonia_cxr.run_folder import FINAL_MODEL_NAME
from pneumonia_cxr.training.run import train

DEMO_RUN_NAME = "demo"


@dataclass
class DemoResult:
    data_dir: Path
    run_dir: Path
    model_path: Path
    evaluation: EvaluationResult


def _run_name(output_dir: Path, overwrite: bool) -> str:
    """ "demo", or a new dated name when a previous demo run is there: never deleted unasked."""
    previous = output_dir / DEMO_RUN_NAME
    if not previous.exists():
        return DEMO_RUN_NAME
    if overwrite:
        shutil.rmtree(previous)
        return DEMO_RUN_NAME
    return f"{DEMO_RUN_NAME}-{datetime.now():%Y%m%d-%H%M%S}"


def run_demo(output_dir: str | Path = "outputs", *, overwrite: bool = False) -> DemoResult:
    output_dir = Path(output_dir)
    data_dir = generate_synthetic_dataset(output_dir / "synthetic_cxr_demo")
    config = demo_config(data_dir, str(output_dir), _run_name(output_dir, overwrite))
    run_dir = train(config)
    model_path = run_dir / FINAL_MODEL_NAME
    evaluation = evaluate_model(model_path, data_dir, split="test")
    return DemoResult(data_dir, run_dir, model_path, evaluation)
