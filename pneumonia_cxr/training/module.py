"""The LightningModule: weighted BCE on one logit, validation AUC, plateau LR, exact resume."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from pneumonia_cxr.model.classifier import PneumoniaNet


class PneumoniaLitModule(L.LightningModule):
    """One training stage of a PneumoniaNet; the stage's freezing is set up by the caller."""

    def __init__(
        self,
        net: PneumoniaNet,
        *,
        stage: int,
        lr: float,
        class_weights: tuple[float, float] | None = None,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        lr_patience: int = 1,
        lr_factor: float = 0.2,
        teacher_probabilities: torch.Tensor | None = None,
        distill_alpha: float = 0.0,
    ) -> None:
        """`teacher_probabilities[i]`: the teacher's P(PNEUMONIA) for training record i; each
        training target becomes (1 - distill_alpha) * label + distill_alpha * that."""
        super().__init__()
        self.net = net
        self.stage, self.lr, self.weight_decay = stage, lr, weight_decay
        self.label_smoothing = label_smoothing
        self.lr_patience, self.lr_factor = lr_patience, lr_factor
        weights = torch.tensor(class_weights if class_weights else (1.0, 1.0), dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        # Not part of the checkpoint: the run folder keeps the teacher's probabilities.
        self.register_buffer("teacher_probabilities", teacher_probabilities, persistent=False)
        self.distill_alpha = distill_alpha if teacher_probabilities is not None else 0.0
        self.skipped_files: set[int] = set()
        self._val_outputs: list[torch.Tensor] = []
        self._pending_plateau: dict[str, Any] | None = None
        self._pending_should_stop = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)

    def _loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        smoothing: float = 0.0,
        soft_targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # The epoch-end validation loss is computed on CPU rows while the buffer sits on the GPU.
        weight = self.class_weights.to(labels.device)[labels.long()]
        targets = labels * (1.0 - smoothing) + smoothing / 2
        if soft_targets is not None:
            # BCE is linear in its target: this is (1 - a) * BCE(label) + a * BCE(teacher).
            targets = (1.0 - self.distill_alpha) * targets + self.distill_alpha * soft_targets
        return F.binary_cross_entropy_with_logits(logits.float(), targets, weight=weight)

    def _teacher_targets(self, batch: dict[str, Any]) -> torch.Tensor | None:
        if self.teacher_probabilities is None:
            return None
        return self.teacher_probabilities[batch["index"].to(self.teacher_probabilities.device)]

    def _note_skipped(self, batch: dict[str, Any]) -> None:
        self.skipped_files.update(int(i) for i in batch["skipped"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self._note_skipped(batch)
        if batch["image"].numel() == 0:
            return None  # every file of the batch was unreadable: skip the step
        images = batch["image"].contiguous(memory_format=torch.channels_last)
        loss = self._loss(
            self(images), batch["label"], self.label_smoothing, self._teacher_targets(batch)
        )
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["label"]),
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["image"].numel() == 0:
            return
        images = batch["image"].contiguous(memory_format=torch.channels_last)
        logits = self(images).float()
        rows = torch.stack([batch["index"].float(), batch["label"], logits], dim=1)
        self._val_outputs.append(rows)

    def on_validation_epoch_end(self) -> None:
        rows = (
            torch.cat(self._val_outputs)
            if self._val_outputs
            else torch.empty(0, 3, device=self.device)
        )
        self._val_outputs.clear()
        gathered = self.all_gather(rows)
        rows = gathered.reshape(-1, 3) if gathered.dim() == 3 else gathered
        # DistributedSampler pads with repeats: keep each image once.
        unique_rows = {int(r[0]): r for r in rows.cpu()}
        table = torch.stack(list(unique_rows.values())) if unique_rows else torch.empty(0, 3)
        labels, logits = table[:, 1], table[:, 2]
        loss = self._loss(logits, labels) if len(labels) else torch.tensor(float("nan"))
        auc = (
            float(roc_auc_score(labels.numpy(), logits.numpy()))
            if len(torch.unique(labels)) == 2
            else float("nan")
        )
        self.log_dict({"val_loss": float(loss), "val_auc": auc}, prog_bar=True, sync_dist=False)
        if not self.trainer.sanity_checking and np.isfinite(auc):
            # Stepped here, before the epoch's checkpoint is written, so resume is exact.
            self.plateau.step(auc)
        self.log("lr", self.optimizer_lr(), prog_bar=False)

    def optimizer_lr(self) -> float:
        return float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=self.lr_factor, patience=self.lr_patience
        )
        if self._pending_plateau is not None:
            self.plateau.load_state_dict(self._pending_plateau)
        return optimizer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # No RNG state: every random stream of an epoch derives from (seed, stage, epoch).
        checkpoint["pneumonia_cxr"] = {
            "stage": self.stage,
            # Early stopping decided at this epoch's end: a resume must not run another epoch.
            "should_stop": bool(self.trainer.should_stop),
            "plateau": self.plateau.state_dict(),
            "skipped_files": sorted(self.skipped_files),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint["pneumonia_cxr"]
        self._pending_plateau = extra["plateau"]
        self._pending_should_stop = bool(extra.get("should_stop", False))
        self.skipped_files.update(extra["skipped_files"])

    def on_train_start(self) -> None:
        if self._pending_should_stop:
            self.trainer.should_stop = True
