"""The model's deterministic input steps, with PyTorch and Pillow only: gray uint8 -> input.

Inference (`inference.predictor`) builds its input from this module alone, so `predict` and the
service, on a CPU engine with an exported or cached model and without Grad-CAM, never import
torchvision: its import costs 1.2-1.7 s at every start here (its detection ops import
`torch._dynamo`), as much as the rest of a `predict` on one image. (Building a network, timm
and Grad-CAM still import it.) Training's transforms (`data.transforms`) put their random steps
around these same functions, so training and inference cannot drift.

Where torchvision resizes uint8 natively (AVX2, AVX-512 and ARM CPUs: every machine this
project has run on), the results equal those of torchvision's `Resize`, `JPEG`, `ToDtype`, `RGB`
and `Normalize`, which the models shipped so far were fitted through, bit for bit
(tests/test_preprocess.py, on the shared data). Elsewhere torchvision took a float path that
differs by one grey level on some pixels; PyTorch's uint8 kernel used here gives the same bits
on every CPU.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from pneumonia_cxr.config import Preprocessing

Step = Callable[[torch.Tensor], torch.Tensor]


class Steps:
    """Steps applied one after the other; picklable (loader workers receive a copy) as long as
    each step is a module-level function or a `functools.partial` of one."""

    def __init__(self, *parts: Sequence[Step]) -> None:
        self.steps = tuple(step for part in parts for step in part)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            image = step(image)
        return image

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __repr__(self) -> str:
        return f"Steps({', '.join(_step_name(step) for step in self.steps)})"


def _step_name(step: Step) -> str:
    if isinstance(step, functools.partial):
        arguments = ", ".join(f"{k}={v!r}" for k, v in step.keywords.items())
        return f"{step.func.__name__}({arguments})"
    return getattr(step, "__name__", repr(step))


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
    """(1, H, W) gray uint8 -> the same image encoded as a JPEG at `quality` and decoded again:
    the compression of the shared 224-px copies, which a model stores as its `jpeg_quality`
    step so that originals look like the copies it was fitted on. Pillow built with
    libjpeg-turbo (its wheels are) gives the bytes torchvision's encoder gives: the same
    standard tables and integer DCT."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 1:
        shape = tuple(image.shape)
        raise ValueError(f"expected a (1, H, W) uint8 gray image, got {shape} {image.dtype}")
    encoded = io.BytesIO()
    Image.fromarray(image[0].numpy()).save(encoded, format="JPEG", quality=quality)
    with Image.open(encoded) as decoded:
        return torch.from_numpy(np.array(decoded))[None]


def to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1] (torchvision's `ToDtype(float32, scale=True)` arithmetic)."""
    if image.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {image.dtype}")
    return image.to(torch.float32).mul_(1.0 / 255)


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., 1, H, W) -> (..., `channels`, H, W): gray replicated for RGB backbones; a view
    (the normalisation after it writes a new tensor)."""
    if image.shape[-3] == channels:
        return image
    return image.expand(*image.shape[:-3], channels, *image.shape[-2:])


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel (torchvision's `Normalize` arithmetic), with as many of the
    stored per-channel values as the image has channels (one for a gray model)."""
    channels = image.shape[-3]
    mean_t = torch.as_tensor(mean[:channels], dtype=image.dtype, device=image.device)
    std_t = torch.as_tensor(std[:channels], dtype=image.dtype, device=image.device)
    return image.sub(mean_t.view(-1, 1, 1)).div_(std_t.view(-1, 1, 1))


def resize_step(preprocessing: Preprocessing) -> Step:
    """The model's resize, as one step (picklable)."""
    return functools.partial(resize, size=preprocessing.image_size)


def jpeg_step(preprocessing: Preprocessing) -> Step | None:
    """The model's fixed compression step, or None when it has none (jpeg_quality 0)."""
    quality = preprocessing.jpeg_quality
    return functools.partial(jpeg_roundtrip, quality=quality) if quality else None


def output_steps(preprocessing: Preprocessing) -> list[Step]:
    """After the float steps: channels, then normalisation."""
    return [
        functools.partial(to_channels, channels=preprocessing.channels),
        functools.partial(normalize, mean=preprocessing.mean, std=preprocessing.std),
    ]


def evaluation_stages(preprocessing: Preprocessing) -> tuple[Steps, Steps]:
    """The evaluation input in two parts: per image on uint8 (resize, the JPEG step), then on a
    stacked float batch (scale, channels, normalisation: the same arithmetic per element).
    Scoring many files applies the second part once per batch: a quarter of the memory to
    stack, no per-image Python overhead. One image runs both in a row."""
    per_image = [resize_step(preprocessing), jpeg_step(preprocessing)]
    per_batch = [to_unit_float, *output_steps(preprocessing)]
    return Steps([s for s in per_image if s is not None]), Steps(per_batch)


def evaluation_transform(preprocessing: Preprocessing) -> Steps:
    """Both stages in a row: one decoded gray image -> its model input."""
    return Steps(*evaluation_stages(preprocessing))
