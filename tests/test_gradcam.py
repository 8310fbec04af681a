"""compute_cams contract (shape, range, target sign, hooks, model state) and the overlays."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from pneumonia_cxr.explain.gradcam import CAM_METHODS, compute_cams
from pneumonia_cxr.explain.overlay import (
    CamExample,
    overlay_heatmap,
    pick_examples,
    save_gradcam_grid,
)

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def hook_count(model: nn.Module) -> int:
    return sum(len(getattr(module, name)) for module in model.modules() for name in HOOK_DICTS)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two shared cores: intra-op threads only contend with the other test processes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, nn.Module]:
    """The real backbone shape, built once: compute_cams leaves the model as it found it."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=1)
    return model, model.layer4[-1]


class SmallCNN(nn.Module):
    """Fast stand-in with the same shape contract: (N,3,H,W) -> (N,1)."""

    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.top = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.top(self.features(x)))


class SignedToy(nn.Module):
    """Logit = sign * (mean of channel 0 - mean of channel 1), through a 2-channel ReLU layer.

    With channel 0 bright on the left half and channel 1 bright on the right half, the
    positive-logit CAM must light the left half for sign=+1 and the right half for sign=-1.
    """

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.weight[1, 1] = 1.0
            self.fc.weight.copy_(torch.tensor([[sign, -sign]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


class FailingModel(SmallCNN):
    """Runs the target layer (so hooks fire) and then fails, recording the hooks it saw."""

    def __init__(self, error: type[Exception]) -> None:
        super().__init__()
        self.error = error
        self.hooks_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.hooks_seen = hook_count(self)
        self.top(self.features(x))
        raise self.error("forward failed on purpose")


def images(n: int = 3, height: int = 64, width: int = 48) -> torch.Tensor:
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", CAM_METHODS)
def test_maps_have_image_size_float32_and_unit_range(method: str, resnet) -> None:
    model, layer = resnet
    cams = compute_cams(model, layer, images(), method=method, batch_size=2)
    assert cams.shape == (3, 64, 48)
    assert cams.dtype == np.float32
    assert np.isfinite(cams).all()
    assert cams.min() >= 0.0 and cams.max() <= 1.0


@pytest.mark.parametrize("method", CAM_METHODS)
def test_batching_does_not_change_maps(method: str) -> None:
    model = SmallCNN()
    layer = model.top
    x = images(5, 24, 24)
    one_by_one = compute_cams(model, layer, x, method=method, batch_size=1)
    all_at_once = compute_cams(model, layer, x, method=method, batch_size=16)
    np.testing.assert_allclose(one_by_one, all_at_once, atol=1e-5)


def test_empty_batch_gives_empty_maps() -> None:
    model = SmallCNN()
    assert compute_cams(model, model.top, images(0, 20, 30)).shape == (0, 20, 30)


@pytest.mark.parametrize(
    ("sign", "method", "bright_half"),
    [
        (1.0, "gradcam", "left"),
        (-1.0, "gradcam", "right"),
        (1.0, "hirescam", "left"),
        (-1.0, "hirescam", "right"),
        (1.0, "gradcam++", "left"),
        (-1.0, "gradcam++", "right"),
    ],
)
def test_target_is_the_positive_logit(sign: float, method: str, bright_half: str) -> None:
    model = SignedToy(sign)
    x = torch.zeros(2, 3, 16, 16)
    x[:, 0, :, :8] = 1.0  # evidence FOR the logit when sign=+1
    x[:, 1, :, 8:] = 1.0  # evidence AGAINST it
    cams = compute_cams(model, model.act, x, method=method)
    left, right = cams[:, :, :6].mean(), cams[:, :, 10:].mean()
    assert (left > right + 0.5) if bright_half == "left" else (right > left + 0.5)


def test_unknown_method_lists_the_valid_ones() -> None:
    model = SmallCNN()
    with pytest.raises(ValueError) as info:
        compute_cams(model, model.top, images(1), method="scorecam")
    for name in CAM_METHODS:
        assert name in str(info.value)


@pytest.mark.parametrize("outputs", [2, None])
def test_head_that_is_not_one_logit_is_rejected(outputs: int | None) -> None:
    model = SmallCNN(outputs or 1)
    if outputs is None:  # (N,) instead of (N, 1)
        model.head.append(nn.Flatten(0))
    with pytest.raises(ValueError, match=r"\(N, 1\)"):
        compute_cams(model, model.top, images(2, 16, 16))
    assert hook_count(model) == 0


def test_bad_images_or_foreign_layer_are_rejected() -> None:
    model = SmallCNN()
    with pytest.raises(ValueError, match="N, C, H, W"):
        compute_cams(model, model.top, torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="float"):
        compute_cams(model, model.top, torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not inside"):
        compute_cams(model, SmallCNN().top, images(1, 16, 16))


@pytest.mark.parametrize("method", CAM_METHODS)
def test_hooks_released_after_success(method: str, resnet) -> None:
    model, layer = resnet
    assert hook_count(model) == 0
    compute_cams(model, layer, images(2), method=method)
    assert hook_count(model) == 0


@pytest.mark.parametrize("error", [RuntimeError, IndexError])
def test_hooks_released_and_error_raised_when_forward_fails(error: type[Exception]) -> None:
    # IndexError matters: the library's __exit__ swallows it; compute_cams must not.
    model = FailingModel(error)
    model.train()
    with pytest.raises(error, match="on purpose"):
        compute_cams(model, model.top, images(2, 16, 16))
    assert model.hooks_seen > 0, "the library should have hooked the target layer"
    assert hook_count(model) == 0
    assert all(module.training for module in model.modules())


def test_no_growth_over_many_calls() -> None:
    model = SmallCNN()

    def live_tensors() -> int:
        gc.collect()
        # type(), not isinstance(): isinstance pokes deprecated torch module attributes
        return sum(issubclass(type(obj), torch.Tensor) for obj in gc.get_objects())

    x = images(2, 16, 16)
    compute_cams(model, model.top, x)  # warm-up: lazy imports, caches
    before = live_tensors()
    for _ in range(30):
        compute_cams(model, model.top, x, method="gradcam")
        assert hook_count(model) == 0
    assert live_tensors() - before <= 2


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_module_modes_restored(mode: str) -> None:
    model = SmallCNN()
    model.train(mode != "eval")
    if mode == "mixed":
        model.features[1].eval()  # a frozen BatchNorm inside a training model
    before = [module.training for module in model.modules()]
    compute_cams(model, model.top, images(2, 16, 16))
    assert [module.training for module in model.modules()] == before


def test_frozen_backbone_still_gets_gradients_and_stays_frozen() -> None:
    model = SmallCNN()
    x = images(2, 16, 16)
    reference = compute_cams(model, model.top, x)
    for param in model.parameters():
        param.requires_grad_(False)
    frozen = compute_cams(model, model.top, x)
    np.testing.assert_allclose(frozen, reference, atol=1e-6)
    assert np.ptp(frozen) > 0
    assert not any(param.requires_grad for param in model.parameters())
    assert all(param.grad is None for param in model.parameters())


def test_parameter_gradients_left_as_found() -> None:
    model = SmallCNN()
    sentinel = {name: torch.full_like(p, 7.0) for name, p in model.named_parameters()}
    for name, param in model.named_parameters():
        param.grad = sentinel[name]
    compute_cams(model, model.top, images(2, 16, 16))
    for name, param in model.named_parameters():
        assert param.grad is sentinel[name]
        assert torch.all(param.grad == 7.0)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_when_caller_disabled_autograd(context) -> None:
    model = SmallCNN()
    with context():
        x = images(2, 16, 16)
        cams = compute_cams(model, model.top, x)
    assert cams.shape == (2, 16, 16) and np.ptp(cams) > 0


# --- overlays ---------------------------------------------------------------------------------


def gradient_gray(height: int = 40, width: int = 30) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))


@pytest.mark.parametrize(
    ("gray", "cam_shape"),
    [
        (gradient_gray(), (40, 30)),
        (gradient_gray(), (8, 8)),  # cam at model size, image at original size
        (torch.from_numpy(gradient_gray())[None], (16, 16)),  # (1, H, W) tensor
    ],
)
def test_overlay_is_rgb_uint8_at_image_size(gray, cam_shape) -> None:
    cam = np.random.default_rng(0).random(cam_shape, dtype=np.float32)
    out = overlay_heatmap(gray, cam)
    assert out.shape == (40, 30, 3)
    assert out.dtype == np.uint8


def test_overlay_alpha_extremes() -> None:
    gray = gradient_gray()
    cam = np.zeros((40, 30), dtype=np.float32)
    cam[:, :15] = 1.0
    image_only = overlay_heatmap(gray, cam, alpha=0.0).astype(int)
    assert np.abs(image_only - gray[..., None].astype(int)).max() <= 1
    heat_only = overlay_heatmap(gray, cam, alpha=1.0).astype(int)
    red, blue = heat_only[..., 0], heat_only[..., 2]
    assert (red[:, :15] > blue[:, :15]).all()  # jet: hot = red, in RGB order
    assert (blue[:, 15:] > red[:, 15:]).all()  # cold = blue


@pytest.mark.parametrize(
    ("gray", "alpha", "match"),
    [
        (gradient_gray().astype(np.float32), 0.4, "uint8"),
        (np.zeros((2, 40, 30), dtype=np.uint8), 0.4, "shape"),
        (gradient_gray(), 1.5, "alpha"),
    ],
)
def test_overlay_rejects_bad_input(gray, alpha, match) -> None:
    with pytest.raises(ValueError, match=match):
        overlay_heatmap(gray, np.zeros((40, 30), dtype=np.float32), alpha=alpha)


@pytest.mark.parametrize(
    ("label", "probability", "group"),
    [(1, 0.9, "TP"), (0, 0.9, "FP"), (0, 0.1, "TN"), (1, 0.1, "FN"), (1, 0.5, "TP")],
)
def test_example_group(label: int, probability: float, group: str) -> None:
    example = CamExample(np.zeros((4, 4), np.uint8), np.zeros((4, 4)), label, probability, 0.5)
    assert example.group == group


def test_pick_examples_most_confident_first() -> None:
    y_true = [1, 1, 1, 0, 0, 0, 1]
    y_prob = [0.6, 0.99, 0.8, 0.7, 0.05, 0.3, 0.2]
    picked = pick_examples(y_true, y_prob, threshold=0.5, per_group=2)
    assert picked == {"TP": [1, 2], "FP": [3], "TN": [4, 5], "FN": [6]}


def test_pick_examples_missing_group_is_empty_and_ties_follow_seed() -> None:
    y_true = [1] * 6
    y_prob = [0.9] * 6
    first = pick_examples(y_true, y_prob, 0.5, per_group=3, seed=0)
    assert first["FP"] == first["TN"] == first["FN"] == []
    assert len(first["TP"]) == 3
    assert first == pick_examples(y_true, y_prob, 0.5, per_group=3, seed=0)
    others = [pick_examples(y_true, y_prob, 0.5, per_group=3, seed=s)["TP"] for s in range(1, 6)]
    assert any(other != first["TP"] for other in others)


def test_pick_examples_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="0 .*or 1"):
        pick_examples([0, 2], [0.1, 0.9], 0.5)
    with pytest.raises(ValueError, match="values"):
        pick_examples([0, 1, 1], [0.1, 0.9], 0.5)


def test_grid_png_written_and_readable(tmp_path) -> None:
    rng = np.random.default_rng(0)
    examples = [
        CamExample(
            image=rng.integers(0, 256, (48, 40), dtype=np.uint8),
            cam=rng.random((12, 12), dtype=np.float32),
            label=label,
            probability=prob,
            threshold=0.5,
            title=f"img{i}.jpeg" if i % 2 else None,
        )
        for i, (label, prob) in enumerate([(1, 0.9), (0, 0.8), (0, 0.1), (1, 0.2), (1, 0.7)])
    ]
    path = save_gradcam_grid(examples, tmp_path / "figs" / "grid.png", ncols=4, title="Toy")
    assert path.exists()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > height > 100  # 4 pairs wide, 2 rows high


def test_grid_needs_examples(tmp_path) -> None:
    with pytest.raises(ValueError, match="no examples"):
        save_gradcam_grid([], tmp_path / "grid.png")


def test_fine_maps_come_from_the_stride_16_layer() -> None:
    """`model_cams(fine=True)` explains `cam_fine_layers`, not the last layer: other maps, the
    same as computing them on that layer directly."""
    from pneumonia_cxr.explain.gradcam import model_cams
    from pneumonia_cxr.model.classifier import PneumoniaNet

    torch.manual_seed(0)
    net = PneumoniaNet("resnet18", weights="none").eval()
    batch = images(2, 64, 64)
    fine = model_cams(net, batch, fine=True)
    direct = compute_cams(net, net.cam_fine_layers, batch)
    np.testing.assert_allclose(fine, direct, atol=1e-6)
    assert not np.allclose(fine, model_cams(net, batch), atol=1e-3)
