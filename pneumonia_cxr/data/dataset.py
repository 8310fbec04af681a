"""A dataset that skips unreadable images loudly instead of inventing pixels or labels."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from pneumonia_cxr.data.epoch_seeding import EpochClock, seeded_transform
from pneumonia_cxr.data.loader import load_xray
from pneumonia_cxr.errors import ImageLoadError


class XrayDataset(Dataset):
    """(path, label) pairs -> transformed image tensors; a bad file yields a skip marker."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int] | None,
        transform: Callable[[torch.Tensor], torch.Tensor],
        min_side: int | None = None,
        clock: EpochClock | None = None,
        types: Sequence[int] | None = None,
    ) -> None:
        """`clock` (training only): seed each sample's augmentation per (epoch, index).
        `types`: each image's pneumonia type (0 BACTERIAL, 1 VIRAL, -1 unknown or NORMAL)."""
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        if len(self.labels) != len(self.paths):
            raise ValueError("paths and labels differ in length")
        self.types = list(types) if types is not None else [-1] * len(self.paths)
        if len(self.types) != len(self.paths):
            raise ValueError("paths and types differ in length")
        self.transform = transform
        self.min_side = min_side
        self.clock = clock

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int) -> dict[str, Any]:
        """`key` is an index, or an `EpochSampler` key (index + n * k) for repeated draws."""
        index = key % len(self.paths)
        try:
            image = torch.from_numpy(load_xray(self.paths[index], min_side=self.min_side))
        except ImageLoadError as error:
            warnings.warn(f"skipping unreadable image {error}", stacklevel=2)
            return {"index": index, "error": str(error)}
        if self.clock is not None:
            image = seeded_transform(self.clock, key, self.transform, image)
        else:
            image = self.transform(image)
        return {
            "image": image,
            "label": torch.tensor(float(self.labels[index])),
            "type": torch.tensor(int(self.types[index])),
            "index": index,
        }


def collate_skipping_bad(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good samples; report the skipped indices so the run summary can count them."""
    good = [s for s in samples if "image" in s]
    skipped = [s["index"] for s in samples if "image" not in s]
    batch: dict[str, Any] = (
        default_collate(good)
        if good
        else {
            "image": torch.empty(0),
            "label": torch.empty(0),
            "type": torch.empty(0, dtype=torch.long),
            "index": torch.empty(0, dtype=torch.long),
        }
    )
    batch["skipped"] = torch.tensor(skipped, dtype=torch.long)
    return batch
