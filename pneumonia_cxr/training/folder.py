"""The run folder over time: its name, progress, intact checkpoints and the latest-run link."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only

from pneumonia_cxr.config import RunConfig
from pneumonia_cxr.errors import RunFolderError
from pneumonia_cxr.run_folder import FINAL_MODEL_NAME, RunPaths
from pneumonia_cxr.storage import atomic_write_text

log = logging.getLogger(__name__)


def read_progress(paths: RunPaths) -> dict[str, Any]:
    return json.loads(paths.progress.read_text()) if paths.progress.exists() else {}


def write_progress(paths: RunPaths, progress: dict[str, Any]) -> None:
    atomic_write_text(paths.progress, json.dumps(progress, indent=2))


def _checkpoint_epoch(path: Path) -> int:
    """The finished epoch a checkpoint holds; ValueError when the file is damaged."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        epoch = int(checkpoint["epoch"])
        if "state_dict" not in checkpoint or "pneumonia_cxr" not in checkpoint:
            raise KeyError("state_dict or pneumonia_cxr")
    except Exception as error:  # truncated zip, random bytes, a foreign file
        raise ValueError(f"{type(error).__name__}: {str(error)[:120]}") from error
    return epoch


def intact_checkpoint(paths: RunPaths, stage: int) -> tuple[Path | None, int]:
    """Where a stage resumes: last.ckpt, else (damaged) best.ckpt, with the finished epoch.

    (None, -1) when the stage never wrote a checkpoint (it starts from its beginning). Every
    epoch's random streams derive from (seed, stage, epoch), so resuming from an older intact
    checkpoint re-runs the later epochs identically.

    Raises:
        RunFolderError: checkpoints exist but none can be read: never a silent restart.
    """
    folder = paths.stage_checkpoints(stage)
    for stale in [*folder.glob(".*.tmp"), *paths.root.glob(".*.tmp")]:
        stale.unlink(missing_ok=True)  # half-written files of a killed run (never renamed)
    present = [folder / name for name in ("last.ckpt", "best.ckpt") if (folder / name).exists()]
    problems = []
    for path in present:
        try:
            epoch = _checkpoint_epoch(path)
        except ValueError as error:
            log.warning("%s is damaged (%s); trying the next checkpoint", path, error)
            problems.append(f"{path.name}: {error}")
            continue
        if problems:
            log.warning("resuming stage %d from %s (epoch %d)", stage, path, epoch)
        return path, epoch
    if present:
        raise RunFolderError(
            f"every checkpoint of stage {stage} in {folder} is damaged ({'; '.join(problems)}). "
            f"To redo stage {stage} from its start: rm -r {folder} && pneumonia-cxr train "
            f"--resume {paths.root}"
        )
    return None, -1


RUN_NAME_ENV = "PNEUMONIA_CXR_RUN_NAME"


@contextlib.contextmanager
def workers_join(paths: RunPaths) -> Iterator[None]:
    """DDP workers that Lightning launches re-run this command line: name the folder for them."""
    previous = os.environ.get(RUN_NAME_ENV)
    os.environ[RUN_NAME_ENV] = paths.root.name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_NAME_ENV, None)
        else:
            os.environ[RUN_NAME_ENV] = previous


def new_run_dir(config: RunConfig) -> Path:
    """Every DDP rank must land in the same folder: rank 0 hands its choice to the workers it
    launches through the environment (`workers_join`); under Slurm the job id names it."""
    stamp = os.environ.get("SLURM_JOB_ID") or datetime.now().strftime("%Y%m%d-%H%M%S")
    name = (
        config.train.run_name or os.environ.get(RUN_NAME_ENV) or f"{config.model.backbone}-{stamp}"
    )
    return Path(config.train.output_dir) / name


def is_rank_zero() -> bool:
    """False in the processes a DDP launcher (Lightning, srun, torchrun) starts for ranks > 0."""
    return rank_zero_only.rank == 0


def link_latest(paths: RunPaths) -> None:
    """`<output_dir>/final_pneumonia_model.pt` -> the latest run's model file, so the reference's
    command sequence (`scripts/evaluate.py --model_path outputs/final_pneumonia_model.pt`) works.
    A relative symlink, swapped in atomically."""
    latest = paths.root.parent / FINAL_MODEL_NAME
    tmp = latest.with_name(f".{FINAL_MODEL_NAME}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(paths.root.name) / FINAL_MODEL_NAME)
    os.replace(tmp, latest)
