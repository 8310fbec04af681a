"""The LightningModule: weighted BCE on one logit (plus, with a type head, a weighted BCE on the
type logit of the typed pneumonia images), validation AUCs, plateau LR, exact resume."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from pneumonia_cxr.config import monitor_mode
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
        type_loss_weight: float = 0.0,
        type_class_weights: tuple[float, float] | None = None,
        monitor: str = "val_auc",
    ) -> None:
        """`teacher_probabilities[i]`: the teacher's P(PNEUMONIA) for training record i; each
        training target becomes (1 - distill_alpha) * label + distill_alpha * that. The type
        head (when the network has one) learns from hard labels only: no teacher has one.
        `monitor` is the metric the LR plateau follows (the checkpoint's and early stopping's)."""
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
        self.typed = net.has_type_head and type_loss_weight > 0
        self.type_loss_weight = type_loss_weight
        type_weights = torch.tensor(type_class_weights or (1.0, 1.0), dtype=torch.float32)
        self.register_buffer("type_class_weights", type_weights, persistent=False)
        self.monitor = monitor
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

    def _type_loss(self, type_logits: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Weighted BCE over the images of known type (-1: NORMAL or unknown, left out)."""
        known = types >= 0
        if not bool(known.any()):
            return type_logits.sum() * 0.0  # keeps the head in the graph (DDP)
        kinds = types[known].float()
        weight = self.type_class_weights.to(types.device)[types[known]]
        return F.binary_cross_entropy_with_logits(type_logits[known].float(), kinds, weight=weight)

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
        logits, type_logits = self.net.both_logits(images)
        loss = self._loss(
            logits.squeeze(1), batch["label"], self.label_smoothing, self._teacher_targets(batch)
        )
        if self.typed:
            loss = loss + self.type_loss_weight * self._type_loss(
                type_logits.squeeze(1), batch["type"]
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
        logits, type_logits = self.net.both_logits(images)
        logits = logits.squeeze(1).float()
        kinds = (
            type_logits.squeeze(1).float() if type_logits is not None else torch.zeros_like(logits)
        )
        types = batch.get("type", torch.full_like(batch["index"], -1)).float()
        rows = torch.stack([batch["index"].float(), batch["label"], logits, types, kinds], dim=1)
        self._val_outputs.append(rows)

    def on_validation_epoch_end(self) -> None:
        rows = (
            torch.cat(self._val_outputs)
            if self._val_outputs
            else torch.empty(0, 5, device=self.device)
        )
        self._val_outputs.clear()
        gathered = self.all_gather(rows)
        rows = gathered.reshape(-1, 5) if gathered.dim() == 3 else gathered
        # DistributedSampler pads with repeats: keep each image once.
        unique_rows = {int(r[0]): r for r in rows.cpu()}
        table = torch.stack(list(unique_rows.values())) if unique_rows else torch.empty(0, 5)
        labels, logits = table[:, 1], table[:, 2]
        loss = self._loss(logits, labels) if len(labels) else torch.tensor(float("nan"))
        auc = _auc(labels, logits)
        metrics = {"val_loss": float(loss), "val_auc": auc}
        if self.typed:
            known = table[:, 3] >= 0
            type_auc = _auc(table[known, 3], table[known, 4])
            # Both questions count equally: the pneumonia AUC is near its ceiling (~0.995), so
            # the mean moves with the type's AUC unless the pneumonia question slips.
            metrics.update(val_type_auc=type_auc, val_mean_auc=(auc + type_auc) / 2)
        self.log_dict(metrics, prog_bar=True, sync_dist=False)
        watched = metrics.get(self.monitor, auc)
        if not self.trainer.sanity_checking and np.isfinite(watched):
            # Stepped here, before the epoch's checkpoint is written, so resume is exact.
            self.plateau.step(watched)
        self.log("lr", self.optimizer_lr(), prog_bar=False)

    def optimizer_lr(self) -> float:
        return float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=monitor_mode(self.monitor),
            factor=self.lr_factor,
            patience=self.lr_patience,
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


def _auc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """ROC AUC, NaN unless both classes are present."""
    if len(torch.unique(labels)) != 2:
        return float("nan")
    return float(roc_auc_score(labels.numpy(), scores.numpy()))
