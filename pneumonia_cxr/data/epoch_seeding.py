"""Every random stream of an epoch derived from (seed, stage, epoch): an epoch re-run from its
start after a crash (SIGKILL, OOM killer, preemption) draws exactly what the first run drew.

- sample order: `EpochSampler`, a permutation (or a class-balanced draw) seeded per epoch;
- augmentation: each training sample's transforms run under a seed of (seed, stage, epoch,
  index), so they do not depend on which loader worker loads it, nor on worker seeds;
- the main process (dropout): reseeded at the start of every epoch by
  `training.callbacks.EpochSeeding`.

No random state needs saving; a checkpoint written at the end of an epoch is enough.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler


def stream_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for one named random stream; unrelated keys give unrelated streams."""
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class EpochClock:
    """Which (stage, epoch) the training loader is producing; shared by sampler and dataset.

    Set before the epoch's loader iterator exists (worker processes copy it when they start).
    """

    seed: int
    stage: int = 1
    epoch: int = 0

    def generator(self, *keys: int | str) -> torch.Generator:
        return torch.Generator().manual_seed(stream_seed(self.seed, *keys, self.stage, self.epoch))


class EpochSampler(Sampler[int]):
    """A shuffled order per epoch, or, with `weights`, a class-balanced draw with replacement.

    A draw is a key `index + n * k` for the k-th draw of `index` in the epoch (k = 0 without
    replacement), so an image drawn twice gets two different augmentations; `XrayDataset`
    reads the image at `key % n` and seeds its augmentation with the key.
    """

    def __init__(self, clock: EpochClock, n: int, weights: Sequence[float] | None = None) -> None:
        self.clock, self.n = clock, n
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = self.clock.generator("order")
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator)
            return iter(order.tolist())
        order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        seen: dict[int, int] = {}
        keys = []
        for index in order.tolist():
            keys.append(index + self.n * seen.get(index, 0))
            seen[index] = seen.get(index, 0) + 1
        return iter(keys)


def seeded_transform(clock: EpochClock, index: int, transform, image: torch.Tensor):
    """`transform(image)` with the torch RNG seeded for this (epoch, sample); the caller's RNG
    state is restored afterwards (in the main process it also drives dropout)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(clock.seed, "sample", clock.stage, clock.epoch, index))
        return transform(image)
