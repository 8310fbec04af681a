"""Training's transforms: the model's own deterministic steps (`data.preprocess`, which inference
uses alone) with torchvision's random ones around them, so training and inference cannot drift."""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pneumonia_cxr.config import AugmentConfig, Preprocessing
from pneumonia_cxr.data import preprocess


class RandomGamma(v2.Transform):
    """Gamma in [1 - g, 1 + g] on a float image in [0, 1]: the exposure curve differs between
    X-ray machines and hospitals, which brightness and contrast alone do not model."""

    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.low, self.high = 1.0 - gamma, 1.0 + gamma

    def make_params(self, flat_inputs: list) -> dict[str, float]:
        return {"gamma": float(torch.empty(1).uniform_(self.low, self.high))}

    def transform(self, inpt, params: dict[str, float]):
        return TF.adjust_gamma(inpt, params["gamma"])


class RandomFrameFill(v2.Transform):
    """With probability `p`, fill a band along each edge (each side its own random width, up to
    `max_width` of that dimension) with the image's mean, on a float image: the frame of a chest
    X-ray (laterality letters, collimation, shoulders, abdomen) carries shortcuts."""

    def __init__(self, p: float, max_width: float) -> None:
        super().__init__()
        self.p, self.max_width = p, max_width

    def make_params(self, flat_inputs: list) -> dict[str, object]:
        apply = bool(torch.rand(1) < self.p)
        return {"apply": apply, "widths": (torch.rand(4) * self.max_width).tolist()}

    def transform(self, inpt, params: dict[str, object]):
        if not params["apply"]:
            return inpt
        top, bottom, left, right = params["widths"]
        height, width = inpt.shape[-2:]
        out = inpt.clone()
        fill = inpt.mean()
        out[..., : round(top * height), :] = fill
        out[..., height - round(bottom * height) :, :] = fill
        out[..., :, : round(left * width)] = fill
        out[..., :, width - round(right * width) :] = fill
        return out


def _resize(preprocessing: Preprocessing, augment: AugmentConfig | None) -> v2.Transform:
    """The evaluation resize (bilinear, antialiased); with `resample_jitter`, one of several
    filters, so the model does not learn one resampler's fingerprint (originals vs copies)."""
    exact = _step(preprocess.resize_step(preprocessing))
    size = (preprocessing.image_size, preprocessing.image_size)
    if augment is None or not augment.resample_jitter:
        return exact
    modes = (v2.InterpolationMode.NEAREST, v2.InterpolationMode.BICUBIC)
    return v2.RandomChoice([exact, *(v2.Resize(size, mode, antialias=True) for mode in modes)])


def _geometric(augment: AugmentConfig, size: tuple[int, int]) -> list[v2.Transform]:
    """Keras ImageDataGenerator-style ranges, as the reference uses, plus optional crops."""
    steps: list[v2.Transform] = []
    if augment.crop_scale_min < 1.0:
        steps.append(
            v2.RandomResizedCrop(size, scale=(augment.crop_scale_min, 1.0), ratio=(0.85, 1.18))
        )
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


def _intensity(augment: AugmentConfig) -> list[v2.Transform]:
    """Exposure and acquisition changes on the float image; no hue/saturation on X-rays."""
    steps: list[v2.Transform] = []
    if augment.brightness or augment.contrast:
        steps.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
    if augment.gamma:
        steps.append(RandomGamma(augment.gamma))
    if augment.blur_prob:
        steps.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=augment.blur_prob))
    if augment.noise_std:
        steps.append(v2.GaussianNoise(sigma=augment.noise_std, clip=True))
    if augment.frame_fill_prob:
        steps.append(RandomFrameFill(augment.frame_fill_prob, augment.frame_fill_max))
    return steps


def build_transforms(
    preprocessing: Preprocessing, augment: AugmentConfig | None = None
) -> v2.Compose:
    """Turn the loader's uint8 (1, H, W) gray tensor into normalized float (3, S, S) input.

    Resizing happens first, on uint8, so augmentation always works on the small image.
    `augment=None` gives the deterministic evaluation pipeline: `preprocess.evaluation_stages`'
    steps one after the other.
    """
    return v2.Compose(_pixel_steps(preprocessing, augment) + _tensor_steps(preprocessing, augment))


def _pixel_steps(preprocessing: Preprocessing, augment: AugmentConfig | None) -> list[v2.Transform]:
    steps: list[v2.Transform] = [_resize(preprocessing, augment)]
    if augment is not None and augment.jpeg_quality_min:
        # Re-encode at a random quality: the shared 224-px copies are JPEG q75, originals are not.
        # In training it replaces the model's fixed step below (its quality lies in the range).
        steps.append(v2.JPEG(quality=(augment.jpeg_quality_min, 100)))
    elif (fixed := preprocess.jpeg_step(preprocessing)) is not None:
        # The model's own compression step (deterministic): originals look like the copies.
        steps.append(_step(fixed))
    if augment is not None:
        steps += _geometric(augment, (preprocessing.image_size, preprocessing.image_size))
    return steps


def _tensor_steps(
    preprocessing: Preprocessing, augment: AugmentConfig | None
) -> list[v2.Transform]:
    steps: list[v2.Transform] = [_step(preprocess.to_unit_float)]
    if augment is not None:
        steps += _intensity(augment)
    return steps + [_step(step) for step in preprocess.output_steps(preprocessing)]


def _step(step: preprocess.Step) -> v2.Transform:
    """One of the model's own steps inside a v2 pipeline; applied to tensors only, so a label
    passed along with the image is left alone."""
    return v2.Lambda(step, torch.Tensor)
