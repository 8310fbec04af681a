"""Transforms built from the model's own preprocessing, so training and inference cannot drift."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from pneumonia_cxr.config import AugmentConfig, Preprocessing


def _augmentations(augment: AugmentConfig) -> list[v2.Transform]:
    """Keras ImageDataGenerator-style ranges, as the reference uses; no colour jitter on X-rays."""
    steps: list[v2.Transform] = []
    translate = (augment.width_shift, augment.height_shift)
    scale = (1.0 - augment.zoom, 1.0 + augment.zoom)
    if augment.rotation_degrees or any(translate) or augment.zoom:
        steps.append(
            v2.RandomAffine(
                degrees=augment.rotation_degrees,
                translate=translate if any(translate) else None,
                scale=scale if augment.zoom else None,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    if augment.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return steps


def build_transforms(
    preprocessing: Preprocessing, augment: AugmentConfig | None = None
) -> v2.Compose:
    """Turn the loader's uint8 (1, H, W) gray tensor into normalized float (3, S, S) input.

    Resizing happens first, on uint8, so augmentation always works on the small image.
    `augment=None` gives the deterministic evaluation pipeline.
    """
    size = (preprocessing.image_size, preprocessing.image_size)
    steps: list[v2.Transform] = [v2.Resize(size, antialias=True)]
    if augment is not None:
        steps += _augmentations(augment)
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.RGB() if preprocessing.channels == 3 else v2.Identity(),
        v2.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std)),
    ]
    return v2.Compose(steps)
