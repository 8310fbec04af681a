"""The model's deterministic input steps in numpy and Pillow: gray uint8 -> model input.

Scoring (`inference.predictor`: predict, the service, the Python API, the `web` export's golden
vectors) builds its input from this module alone, so it runs without PyTorch: the light install
(`pip install ".[score]"`) has none. Training's transforms (`data.transforms`) implement the
same contract in PyTorch around their random steps; the browser's page implements it in
JavaScript from the model's metadata. The three agree (tests/test_preprocess.py, golden vectors
of real images): exactly where no resize is needed (the shared 224-px copies, the JPEG step,
scaling, normalisation), and within one grey level on a few pixels per thousand where an image
is resized (Pillow's and PyTorch's antialiased bilinear kernels round differently).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from pneumonia_cxr.config import Preprocessing

Step = Callable[[np.ndarray], np.ndarray]


class Steps:
    """Steps applied one after the other; picklable (loader workers receive a copy) as long as
    each step is a module-level function or a `functools.partial` of one."""

    def __init__(self, *parts: Sequence[Step]) -> None:
        self.steps = tuple(step for part in parts for step in part)

    def __call__(self, image: np.ndarray) -> np.ndarray:
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


def _check_gray(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != 1:
        raise ValueError(
            f"expected a (1, H, W) uint8 gray image, got {tuple(image.shape)} {image.dtype}"
        )


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """(1, H, W) uint8 -> (1, size, size), bilinear and antialiased, aspect ratio not kept
    ("squash"): Pillow's kernel, the one PyTorch's uint8 kernel was derived from."""
    _check_gray(image)
    if image.shape[-2:] == (size, size):
        return image
    resized = Image.fromarray(image[0]).resize((size, size), Image.Resampling.BILINEAR)
    return np.array(resized)[None]


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """(1, H, W) gray uint8 -> the same image encoded as a JPEG at `quality` and decoded again:
    the compression of the shared 224-px copies, which a model stores as its `jpeg_quality`
    step so that originals look like the copies it was fitted on (Pillow's libjpeg-turbo: the
    standard tables and integer DCT, the bytes torchvision's encoder gives)."""
    _check_gray(image)
    encoded = io.BytesIO()
    Image.fromarray(image[0]).save(encoded, format="JPEG", quality=quality)
    with Image.open(encoded) as decoded:
        return np.array(decoded)[None]


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] (x * (1/255) in float32, as torchvision's `ToDtype`)."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {image.dtype}")
    return image.astype(np.float32) * np.float32(1.0 / 255)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(..., 1, H, W) -> (..., `channels`, H, W): gray replicated for RGB backbones; a view
    (the normalisation after it writes a new array)."""
    if image.shape[-3] == channels:
        return image
    return np.broadcast_to(image, (*image.shape[:-3], channels, *image.shape[-2:]))


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(x - mean) / std per channel in float32, with as many of the stored per-channel values
    as the image has channels (one for a gray model)."""
    channels = image.shape[-3]
    mean_a = np.asarray(mean[:channels], dtype=np.float32).reshape(-1, 1, 1)
    std_a = np.asarray(std[:channels], dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((image - mean_a) / std_a, dtype=np.float32)


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
    """The model input in two parts: per image on uint8 (resize, the JPEG step), then on a
    stacked float batch (scale, channels, normalisation: the same arithmetic per element).
    Scoring many files applies the second part once per batch; one image runs both in a row."""
    per_image = [resize_step(preprocessing), jpeg_step(preprocessing)]
    per_batch = [to_unit_float, *output_steps(preprocessing)]
    return Steps([s for s in per_image if s is not None]), Steps(per_batch)


def evaluation_transform(preprocessing: Preprocessing) -> Steps:
    """Both stages in a row: one decoded gray image -> its model input."""
    return Steps(*evaluation_stages(preprocessing))
