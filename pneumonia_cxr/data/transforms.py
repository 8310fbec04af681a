"""Training's transforms: the model's deterministic input steps in PyTorch (the contract
`data.preprocess` implements in numpy for scoring) with torchvision's random ones around them.

The deterministic steps equal, bit for bit, torchvision's `Resize`, `JPEG`, `ToDtype`, `RGB` and
`Normalize`, which the models shipped so far were fitted through, where torchvision resizes
uint8 natively (AVX2, AVX-512 and ARM CPUs); elsewhere torchvision took a float path one grey
level off on some pixels, while PyTorch's uint8 kernel used here gives the same bits on every
CPU. tests/test_preprocess.py holds the two implementations to the same golden vectors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pneumonia_cxr.config import AugmentConfig, Preprocessing
from pneumonia_cxr.data import preprocess

TensorStep = Callable[[torch.Tensor], torch.Tensor]


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """(..., C, H, W) uint8 on the CPU -> (..., C, size, size), bilinear and antialiased,
    aspect ratio not kept ("squash"): PyTorch's uint8 kernel, the one torchvision's `Resize`
    calls on AVX2, AVX-512 and ARM CPUs."""
    if image.shape[-2:] == (size, size):
        return image
    flat = image.reshape(-1, *image.shape[-3:])
    out = torch.nn.functional.interpolate(
        flat, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out.reshape(*image.shape[:-2], size, size)


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """`preprocess.jpeg_roundtrip` on a (1, H, W) uint8 tensor (one Pillow codec for both)."""
    if image.dtype != torch.uint8:
        raise ValueError(f"expected a (1, H, W) uint8 gray image, got {image.dtype}")
    return torch.from_numpy(preprocess.jpeg_roundtrip(image.numpy(), quality))


def to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1] (torchvision's `ToDtype(float32, scale=True)` arithmetic)."""
    if image.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {image.dtype}")
    return image.to(torch.float32).mul_(1.0 / 255)


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., 1, H, W) -> (..., `channels`, H, W): gray replicated for RGB backbones (a view)."""
    if image.shape[-3] == channels:
        return image
    return image.expand(*image.shape[:-3], channels, *image.shape[-2:])


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel (torchvision's `Normalize` arithmetic)."""
    channels = image.shape[-3]
    mean_t = torch.as_tensor(mean[:channels], dtype=image.dtype, device=image.device)
    std_t = torch.as_tensor(std[:channels], dtype=image.dtype, device=image.device)
    return image.sub(mean_t.view(-1, 1, 1)).div_(std_t.view(-1, 1, 1))


def _output_steps(preprocessing: Preprocessing) -> list[TensorStep]:
    return [
        functools.partial(to_channels, channels=preprocessing.channels),
        functools.partial(normalize, mean=preprocessing.mean, std=preprocessing.std),
    ]


def from_array(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The loader's numpy pixels as a tensor (shared memory); a tensor passes through."""
    return torch.from_numpy(image) if isinstance(image, np.ndarray) else image


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
    exact = _step(functools.partial(resize, size=preprocessing.image_size))
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
    `augment=None` gives the deterministic evaluation pipeline, `preprocess.evaluation_stages`'
    steps in PyTorch. A numpy image (the loader's) is taken as a tensor first.
    """
    steps = _pixel_steps(preprocessing, augment) + _tensor_steps(preprocessing, augment)
    return v2.Compose([v2.Lambda(from_array, np.ndarray), *steps])


def _pixel_steps(preprocessing: Preprocessing, augment: AugmentConfig | None) -> list[v2.Transform]:
    steps: list[v2.Transform] = [_resize(preprocessing, augment)]
    if augment is not None and augment.jpeg_quality_min:
        # Re-encode at a random quality: the shared 224-px copies are JPEG q75, originals are not.
        # In training it replaces the model's fixed step below (its quality lies in the range).
        steps.append(v2.JPEG(quality=(augment.jpeg_quality_min, 100)))
    elif quality := preprocessing.jpeg_quality:
        # The model's own compression step (deterministic): originals look like the copies.
        steps.append(_step(functools.partial(jpeg_roundtrip, quality=quality)))
    if augment is not None:
        steps += _geometric(augment, (preprocessing.image_size, preprocessing.image_size))
    return steps


def _tensor_steps(
    preprocessing: Preprocessing, augment: AugmentConfig | None
) -> list[v2.Transform]:
    steps: list[v2.Transform] = [_step(to_unit_float)]
    if augment is not None:
        steps += _intensity(augment)
    return steps + [_step(step) for step in _output_steps(preprocessing)]


def _step(step: TensorStep) -> v2.Transform:
    """One of the model's own steps inside a v2 pipeline; applied to tensors only, so a label
    passed along with the image is left alone."""
    return v2.Lambda(step, torch.Tensor)
