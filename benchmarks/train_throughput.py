"""Training images/s on this machine: stage-1 and stage-2 steps on in-memory tensors, and an
epoch over real images through the DataModule. The ratio epoch / pure-step shows whether data
loading hides behind compute (goal >= 0.95).

Run: `.venv/bin/python benchmarks/train_throughput.py [--backbones resnet50 efficientnet_lite0]
[--batches 12] [--dataset_path ../shared/data/kermany_224]`
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from pneumonia_cxr.config import RunConfig
from pneumonia_cxr.data.datamodule import XrayDataModule
from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.model.backbones import preprocessing_for
from pneumonia_cxr.model.classifier import PneumoniaNet
from pneumonia_cxr.training.module import PneumoniaLitModule


class RandomImages(Dataset):
    """Pre-made tensors: a step with zero data-loading cost."""

    def __init__(self, n: int, size: int) -> None:
        self.images = torch.randn(n, 3, size, size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {
            "image": self.images[index],
            "label": torch.tensor(float(index % 2)),
            "index": index,
        }


def _collate(samples: list[dict]) -> dict:
    batch = torch.utils.data.default_collate(samples)
    batch["skipped"] = torch.empty(0, dtype=torch.long)
    return batch


class EpochTimer(L.Callback):
    """Wall time from the end of the first (warm-up) batch to the end of the last one.

    It includes any wait for data between steps, so loading that is not hidden shows up.
    """

    def __init__(self) -> None:
        self.images, self.first_end, self.last_end = 0, 0.0, 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if batch_idx == 0:
            self.first_end = now
        else:
            self.images += len(batch["label"])
            self.last_end = now

    def rate(self) -> float:
        return self.images / (self.last_end - self.first_end)


def _net(backbone: str, stage: int, unfreeze: int) -> PneumoniaNet:
    net = PneumoniaNet(backbone, weights="none").to(memory_format=torch.channels_last)
    if stage == 1:
        net.freeze_backbone()
    else:
        net.unfreeze_top_layers(unfreeze)
    return net


def _fit(net: PneumoniaNet, loader: DataLoader, batches: int) -> float:
    """Training images/s over `batches` batches (after one warm-up batch)."""
    module = PneumoniaLitModule(net, stage=1, lr=1e-4)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=batches + 1, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer], accelerator="cpu", num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return timer.rate()


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany_224"
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "efficientnet_lite0"])
    parser.add_argument("--dataset_path", type=Path, default=shared)
    parser.add_argument(
        "--batches", type=int, default=12, help="batches per measurement (+1 warm-up)"
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--unfreeze_layers", type=int, default=30)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; image 224, batch {args.batch_size}, "
        f"{args.batches} batches per measurement"
    )
    records = [r for r in list_images(args.dataset_path) if r.split == "train"]
    print(f"{'backbone':<20}{'measurement':<44}{'images/s':>10}")
    for backbone in args.backbones:
        config = RunConfig()
        config.model.backbone = backbone
        for stage in (1, 2):
            n = (args.batches + 1) * args.batch_size
            memory = DataLoader(
                RandomImages(n, 224), batch_size=args.batch_size, collate_fn=_collate
            )
            step_rate = _fit(_net(backbone, stage, args.unfreeze_layers), memory, args.batches)
            dm = XrayDataModule(
                records,
                records[:1],
                config.data,
                preprocessing_for(
                    config.model.backbone, config.data.image_size, config.data.normalization
                ),
            )
            real_loader = dm.train_dataloader()
            epoch_rate = _fit(
                _net(backbone, stage, args.unfreeze_layers), real_loader, args.batches
            )
            label = (
                "stage 1 (frozen backbone)"
                if stage == 1
                else f"stage 2 (top {args.unfreeze_layers} layers)"
            )
            print(f"{backbone:<20}{label + ', pure step':<44}{step_rate:>10.1f}")
            print(f"{backbone:<20}{label + ', real-data epoch':<44}{epoch_rate:>10.1f}")
            print(
                f"{backbone:<20}{label + ', epoch / step ratio':<44}{epoch_rate / step_rate:>10.2f}"
            )


if __name__ == "__main__":
    main()
