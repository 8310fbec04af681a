"""Callbacks: the per-epoch metrics CSV, per-epoch seeding, one progress bar."""

from __future__ import annotations

import csv
import io
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from pneumonia_cxr.data.epoch_seeding import EpochClock, stream_seed
from pneumonia_cxr.faults import kill_if
from pneumonia_cxr.storage import atomic_write_text

METRIC_COLUMNS = ["stage", "epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds"]


class EpochMetricsCSV(L.Callback):
    """Appends a row per finished epoch to run_dir/metrics.csv (rank 0 only)."""

    def __init__(self, path: Path, stage: int) -> None:
        self.path, self.stage = Path(path), stage
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row = {
            "stage": self.stage,
            "epoch": trainer.current_epoch,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - self._started, 2),
        }
        for key in ("train_loss", "val_loss", "val_auc"):
            row[key] = float(metrics[key]) if key in metrics else ""
        _write_rows(self.path, [*_read_rows(self.path), row])


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: list[dict]) -> None:
    """The whole file, atomically: a kill mid-write leaves the previous version."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def drop_rows_from(path: Path, stage: int, epoch: int) -> None:
    """On resume, forget rows the interrupted run wrote at or after the resumed epoch."""
    rows = _read_rows(path)
    kept = [
        r
        for r in rows
        if int(r["stage"]) < stage or (int(r["stage"]) == stage and int(r["epoch"]) < epoch)
    ]
    if rows:
        _write_rows(path, kept)


class TrainingProgressBar(TQDMProgressBar):
    """One bar: the epoch's training bar, with the validation figures in its postfix; the
    separate validation bar that Lightning nests under it is not drawn."""

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, module)
        metrics.pop("v_num", None)  # the logger's folder name, not a figure
        return metrics


class EpochEndCheckpoint(ModelCheckpoint):
    """best.ckpt when the monitor improves, and last.ckpt after every epoch.

    Lightning 2.6 writes last.ckpt only together with a top-k save; written after every epoch,
    a resume re-runs at most the epoch that was in progress. Uses Lightning's own (private)
    `_save_last_checkpoint`, the method its `on_train_epoch_end` calls.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, module)
        if self._last_global_step_saved != trainer.global_step and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class EpochSeeding(L.Callback):
    """Reseeds the main process at each epoch start and moves the clock to the next epoch."""

    def __init__(self, clock: EpochClock) -> None:
        self.clock = clock

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch != self.clock.epoch:
            # Lightning builds the first epoch's loader before this hook: the clock must have
            # been set to the resumed epoch before `fit` (see training.run._run_stage).
            raise RuntimeError(
                f"epoch clock at {self.clock.epoch}, trainer at {trainer.current_epoch}: the "
                "loader of this epoch was built for another epoch"
            )
        seed = stream_seed(
            self.clock.seed, "main", self.clock.stage, self.clock.epoch, trainer.global_rank
        )
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.clock.epoch = trainer.current_epoch + 1  # the next epoch's loader is built later


class KillAtBatch(L.Callback):
    """`stage{S}:epoch{E}:batch{B}` points (added to the trainer only when the variable is set)."""

    def __init__(self, stage: int) -> None:
        self.stage = stage

    def on_train_batch_start(self, trainer: L.Trainer, module, batch, batch_idx: int) -> None:
        kill_if(f"stage{self.stage}:epoch{trainer.current_epoch}:batch{batch_idx}")
