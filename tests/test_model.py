"""Backbone registry, stage-wise freezing and the model file format."""

from __future__ import annotations

import subprocess
import sys
import urllib.error

import pytest
import torch
from torch import nn

from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.errors import ModelFileError, WeightsUnavailableError
from pneumonia_cxr.model.backbones import backbone_names, get_backbone
from pneumonia_cxr.model.classifier import PneumoniaNet, parameter_layers
from pneumonia_cxr.model.model_file import ModelBundle, load_model, save_model


def _step(net: PneumoniaNet, images: torch.Tensor) -> None:
    net.train()
    net.zero_grad(set_to_none=True)
    net(images).sum().backward()


def test_registry_lists_valid_names_on_unknown() -> None:
    with pytest.raises(ValueError, match="resnet50.*resnet18|densenet121"):
        get_backbone("vgg16")
    assert {"resnet50", "resnet18", "densenet121", "efficientnet_lite0"} <= set(backbone_names())


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121", "efficientnet_lite0"])
def test_every_backbone_gives_one_logit_and_a_cam_layer(name: str) -> None:
    net = PneumoniaNet(name, weights="none").eval()
    sizes: dict[str, torch.Size] = {}

    def keep_size(key: str):
        def hook(_module, _inputs, output) -> None:  # None: the output stays as it is
            sizes[key] = output.shape

        return hook

    hooks = [
        layer.register_forward_hook(keep_size(key))
        for key, layer in (("last", net.cam_target_layer), ("fine", net.cam_fine_layers[0]))
    ]
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 1)
    for hook in hooks:
        hook.remove()
    assert sizes["last"][-2:] == (2, 2) and sizes["fine"][-2:] == (4, 4)  # stride 32 and 16


def test_stage1_moves_only_the_head() -> None:
    torch.manual_seed(0)
    net = PneumoniaNet("resnet18", weights="none")
    net.freeze_backbone()
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    _step(net, torch.randn(4, 3, 48, 48))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.head.parameters())
    assert all(p.grad is None for p in net.backbone.parameters())
    optimizer.step()
    after = net.backbone.state_dict()
    # Weights AND BatchNorm running statistics are unchanged.
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("n_layers", [1, 5, 30])
def test_stage2_unfreezes_exactly_the_top_layers(n_layers: int) -> None:
    net = PneumoniaNet("resnet18", weights="none")
    names = net.unfreeze_top_layers(n_layers)
    layers = parameter_layers(net.backbone)
    assert len(names) == n_layers
    assert names == [name for name, _ in layers[-n_layers:]]
    _step(net, torch.randn(2, 3, 48, 48))
    with_grad = {
        name for name, m in layers if any(p.grad is not None for p in m.parameters(recurse=False))
    }
    assert with_grad == set(names)


def test_frozen_batchnorm_stays_in_eval_mode_in_stage2() -> None:
    net = PneumoniaNet("resnet18", weights="none")
    net.unfreeze_top_layers(2)
    net.train()
    bns = [m for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    trainable = [m for m in bns if m.weight.requires_grad]
    assert trainable and all(m.training for m in trainable)
    assert all(not m.training for m in bns if not m.weight.requires_grad)


def test_unfreeze_all_for_efficientnet_counts_batchnormact() -> None:
    net = PneumoniaNet("efficientnet_lite0", weights="none")
    names = net.unfreeze_top_layers(-1)
    assert "bn2" in names and "conv_stem" in names
    assert all(p.requires_grad for p in net.backbone.parameters())


def test_imagenet_download_failure_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match="efficientnet_lite0.*--weights none"):
        PneumoniaNet("resnet18", weights="imagenet")


def test_local_weights_file_is_loaded(tmp_path) -> None:
    import torchvision

    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    net = PneumoniaNet("resnet18", weights=str(path))
    assert torch.equal(net.backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(net.backbone.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_foreign_weights_file_is_rejected(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        PneumoniaNet("resnet18", weights=str(path))


def _bundle() -> ModelBundle:
    torch.manual_seed(1)
    return ModelBundle(
        model=PneumoniaNet("resnet18", weights="none").eval(),
        preprocessing=Preprocessing(image_size=48),
        threshold=0.37,
        threshold_rule="youden",
        config={"model": {"backbone": "resnet18"}},
        data_fingerprint="abc",
    )


def test_model_file_round_trips_in_a_fresh_process(tmp_path) -> None:
    bundle = _bundle()
    path = save_model(bundle, tmp_path / "final_pneumonia_model.pt")
    # The file is plain data: it loads with weights_only=True.
    payload = torch.load(path, weights_only=True)
    assert payload["members"][0]["backbone"] == "resnet18" and payload[
        "threshold"
    ] == pytest.approx(0.37)
    torch.manual_seed(2)
    images = torch.randn(3, 3, 48, 48)
    torch.save(images, tmp_path / "x.pt")
    with torch.no_grad():
        expected = bundle.model(images)
    code = (
        "import sys, torch; from pneumonia_cxr.model.model_file import load_model;"
        f"b = load_model({str(path)!r}); x = torch.load({str(tmp_path / 'x.pt')!r});"
        "torch.save(b.model(x).detach(), sys.argv[1]);"
        "assert b.threshold_rule == 'youden' and b.preprocessing.image_size == 48"
    )
    out = tmp_path / "y.pt"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    assert torch.allclose(torch.load(out), expected, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(b"\x00garbage" * 100), id="random-bytes"),
        pytest.param(lambda p: p.write_text("not a model"), id="text"),
        pytest.param(lambda p: torch.save({"state_dict": {}, "epoch": 3}, p), id="lightning-like"),
        pytest.param(lambda p: torch.save(nn.Linear(2, 2).state_dict(), p), id="foreign-state"),
    ],
)
def test_bad_model_files_give_clear_errors(tmp_path, make) -> None:
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(ModelFileError, match=str(path.name)):
        load_model(path)


def test_truncated_model_file_is_rejected(tmp_path) -> None:
    path = save_model(_bundle(), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated|corrupt|readable"):
        load_model(path)


def test_missing_model_file(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.pt")
