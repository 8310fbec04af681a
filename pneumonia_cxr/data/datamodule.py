"""The Lightning DataModule: one loader, one set of transforms, for every stage of a run."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from pneumonia_cxr.config import DataConfig, Preprocessing
from pneumonia_cxr.data.dataset import XrayDataset, collate_skipping_bad
from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.epoch_seeding import EpochClock, EpochSampler
from pneumonia_cxr.data.transforms import build_transforms
from pneumonia_cxr.data.workers import worker_init


def balanced_class_weights(labels: Sequence[int]) -> tuple[float, float]:
    """sklearn's "balanced" formula n / (2 * n_c): each class contributes equally to the loss."""
    n = len(labels)
    n_pos = sum(1 for y in labels if y == 1)
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the training split needs images of both classes")
    return n / (2 * n_neg), n / (2 * n_pos)


def records_dataset(
    records: Sequence[ImageRecord],
    preprocessing: Preprocessing,
    augment=None,
    clock: EpochClock | None = None,
    types: Sequence[int] | None = None,
) -> XrayDataset:
    """Dataset over ImageRecords with transforms from the model's preprocessing."""
    return XrayDataset(
        [r.path for r in records],
        [r.label for r in records],
        build_transforms(preprocessing, augment),
        min_side=preprocessing.image_size,
        clock=clock,
        types=types,
    )


class XrayDataModule(L.LightningDataModule):
    """Train/val (patient-level split of official train+val) and optionally the test split."""

    def __init__(
        self,
        train: Sequence[ImageRecord],
        val: Sequence[ImageRecord],
        config: DataConfig,
        preprocessing: Preprocessing,
        test: Sequence[ImageRecord] = (),
        seed: int = 42,
        types: tuple[Sequence[int], Sequence[int]] | None = None,
    ) -> None:
        """`types`: (train, val) pneumonia types (`data.pneumonia_types`) for a type head."""
        super().__init__()
        self.train_records, self.val_records, self.test_records = list(train), list(val), list(test)
        self.config, self.preprocessing, self.seed = config, preprocessing, seed
        self.clock = EpochClock(seed)
        """(stage, epoch) of the training loader: order and augmentation derive from it."""
        self.train_types, self.val_types = types if types is not None else (None, None)
        self.train_set = records_dataset(
            self.train_records, preprocessing, config.augment, self.clock, self.train_types
        )
        self.val_set = records_dataset(self.val_records, preprocessing, types=self.val_types)
        self.test_set = records_dataset(self.test_records, preprocessing)

    def class_weights(self) -> tuple[float, float]:
        return balanced_class_weights([r.label for r in self.train_records])

    def type_weights(self) -> tuple[float, float]:
        """Balanced weights of BACTERIAL and VIRAL among the typed training images."""
        return balanced_class_weights([t for t in self.train_types or () if t >= 0])

    def _loader(self, dataset: XrayDataset, shuffle: bool, sampler=None) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
            collate_fn=collate_skipping_bad,
            worker_init_fn=worker_init() if workers > 0 else None,
            # Its own generator: creating an iterator never draws from the global RNG, which
            # drives dropout in the main process (reseeded per epoch by EpochSeeding).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _sampler(self) -> EpochSampler:
        """A shuffle per epoch, or a class-balanced draw, both seeded by the epoch clock."""
        weights = None
        if self.config.balanced_sampler:
            labels = [r.label for r in self.train_records]
            counts = {c: labels.count(c) for c in (0, 1)}
            weights = [1.0 / counts[y] for y in labels]
        return EpochSampler(self.clock, len(self.train_records), weights)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=False, sampler=self._sampler())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
