"""Callbacks: one per-epoch metrics CSV for the whole two-stage run."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

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
        write_header = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            if write_header:
                writer.writeheader()
            writer.writerow(row)


def drop_rows_from(path: Path, stage: int, epoch: int) -> None:
    """On resume, forget rows the interrupted run wrote at or after the resumed epoch."""
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [
        r
        for r in rows
        if int(r["stage"]) < stage or (int(r["stage"]) == stage and int(r["epoch"]) < epoch)
    ]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(kept)


class TrainingProgressBar(TQDMProgressBar):
    """One bar: the epoch's training bar, with the validation figures in its postfix; the
    separate validation bar that Lightning nests under it is not drawn."""

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)
