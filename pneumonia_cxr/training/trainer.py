"""The Lightning Trainer of one stage: callbacks, loggers, precision, Slurm, quiet output."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from pneumonia_cxr.config import RunConfig, monitor_mode
from pneumonia_cxr.data.epoch_seeding import EpochClock
from pneumonia_cxr.faults import FAULT_ENV
from pneumonia_cxr.run_folder import RunPaths
from pneumonia_cxr.training.callbacks import (
    EpochEndCheckpoint,
    EpochMetricsCSV,
    EpochSeeding,
    KillAtBatch,
    TrainingProgressBar,
)
from pneumonia_cxr.training.checkpointing import AtomicCheckpointIO


def _precision(config: RunConfig) -> str:
    if config.train.precision != "auto":
        return config.train.precision
    if torch.cuda.is_available() and config.train.accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _devices(value: str) -> int | str:
    return int(value) if str(value).isdigit() else value


def make_trainer(
    config: RunConfig,
    paths: RunPaths,
    stage: int,
    epochs: int,
    extra_callbacks: list,
    clock: EpochClock,
) -> L.Trainer:
    train = config.train
    checkpoint = EpochEndCheckpoint(
        dirpath=paths.stage_checkpoints(stage),
        filename="best",
        monitor=train.monitor,
        mode=monitor_mode(train.monitor),
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
        # Written once the epoch (validation included) is over: "epoch done" and "its
        # checkpoint written" are one fact, so a resume never runs an epoch twice.
        save_on_train_epoch_end=True,
    )
    early_stopping = EarlyStopping(
        monitor=train.monitor,
        mode=monitor_mode(train.monitor),
        patience=train.early_stopping_patience,
    )
    loggers = [  # a new CSV folder per invocation: a resume never deletes earlier logs
        CSVLogger(paths.root / "logs", name=f"stage{stage}", version=_attempt(paths, stage)),
        TensorBoardLogger(paths.root / "logs", name="tensorboard", version=f"stage{stage}"),
    ]
    if os.environ.get(FAULT_ENV):
        extra_callbacks = [*extra_callbacks, KillAtBatch(stage)]
    return L.Trainer(
        max_epochs=epochs,
        accelerator=train.accelerator,
        devices=_devices(train.devices),
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=_precision(config),
        callbacks=[
            TrainingProgressBar(),
            EpochSeeding(clock),
            checkpoint,
            early_stopping,
            EpochMetricsCSV(paths.metrics, stage),
            *extra_callbacks,
        ],
        logger=loggers,
        plugins=[AtomicCheckpointIO(), *_slurm_plugins()],
        default_root_dir=paths.root,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        limit_train_batches=train.limit_train_batches,
        limit_val_batches=train.limit_val_batches,
        enable_model_summary=False,
    )


def _slurm_plugins() -> list:
    """Under Slurm, no mid-epoch `hpc_ckpt` on SIGUSR1 and no automatic resume from one: a
    requeued job resumes from its epoch-end checkpoints (`--resume`), as everywhere else."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def _attempt(paths: RunPaths, stage: int) -> str:
    folder = paths.root / "logs" / f"stage{stage}"
    return f"attempt{len(list(folder.glob('attempt*'))) if folder.is_dir() else 0}"


_LIBRARY_NOISE = (
    r"Found \d+ module\(s\) in eval mode",  # frozen BatchNorm stays in eval mode on purpose
    r".*is smaller than the logging interval",
    r".*treespec.*deprecated",
    r".*LeafSpec.*deprecated",
    r"Checkpoint directory .* exists and is not empty",  # a resume writes there on purpose
)


_LIBRARY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Training output a user can read: Lightning's tips, start-up banners and warnings about
    choices made on purpose are dropped (errors and our own messages still show), and its
    logger stops repeating each line through the root handler."""
    # lightning.pytorch and lightning.fabric carry their own level and handler, so quieting
    # the parent "lightning" alone is not enough.
    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    with warnings.catch_warnings():
        for pattern in _LIBRARY_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            yield
        finally:
            for logger, (level, propagate) in zip(loggers, saved, strict=True):
                logger.setLevel(level)
                logger.propagate = propagate
