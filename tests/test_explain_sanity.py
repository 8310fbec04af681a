"""Sanity checks of the heatmaps on a toy task whose answer is known: where the bright square is.

A tiny CNN learns "bright square somewhere" (label 1) vs "noise only" (label 0). Its Grad-CAM
must point at the square (pointing game), and must stop doing so once the learned head is
re-initialized (Adebayo et al. 2018), while a gradient-free method (EigenCAM) must not
notice a head it never reads: the negative control that shows the test measures something.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pneumonia_cxr.explain.gradcam import compute_cams
from pneumonia_cxr.explain.sanity import _spearman, pointing_game, randomization_test

SIZE = 40
SQUARE = 8


class SquareNet(nn.Module):
    """Three conv blocks and a global-average-pool head, like a miniature ResNet.

    BatchNorm makes 48 Adam steps learn the task from any seed (without it, some seeds stall).
    """

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.block3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block3(self.block2(self.block1(x))))


def squares(
    n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int, int]]]:
    """Noise images; label-1 images get a bright square, whose (x0, y0, x1, y1) box is returned."""
    x = torch.rand(n, 3, SIZE, SIZE, generator=generator) * 0.5
    y = (torch.rand(n, generator=generator) > 0.5).float()
    boxes = []
    for i in range(n):
        x0, y0 = torch.randint(0, SIZE - SQUARE + 1, (2,), generator=generator).tolist()
        boxes.append((x0, y0, x0 + SQUARE, y0 + SQUARE))
        if y[i]:
            x[i, :, y0 : y0 + SQUARE, x0 : x0 + SQUARE] = 1.0
    return x, y, boxes


@pytest.fixture(scope="module")
def toy():
    """A trained SquareNet and held-out positives with their square boxes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: extra intra-op threads only contend
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = SquareNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(48):
        x, y, _ = squares(32, generator)
        loss = nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x, y, boxes = squares(48, generator)
    with torch.no_grad():
        accuracy = ((model(x)[:, 0] > 0).float() == y).float().mean().item()
    positive = y.bool()
    yield {
        "model": model,
        "accuracy": accuracy,
        "images": x[positive],
        "boxes": [box for box, keep in zip(boxes, positive.tolist(), strict=True) if keep],
    }
    torch.set_num_threads(threads)


def test_toy_model_learned_the_task(toy) -> None:
    assert toy["accuracy"] > 0.9, "the fixture must train a real model for the checks to mean much"
    assert len(toy["boxes"]) >= 10


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam"])
def test_trained_cams_point_at_the_square(toy, method: str) -> None:
    model = toy["model"]
    cams = compute_cams(model, model.block3, toy["images"], method=method)
    result = pointing_game(cams, toy["boxes"])
    assert result["n"] == len(toy["boxes"])
    assert result["accuracy"] > 0.6


def test_untrained_cams_point_at_the_square_less_often(toy) -> None:
    torch.manual_seed(1)
    untrained = SquareNet().eval()

    def hits(model: SquareNet) -> float:
        cams = compute_cams(model, model.block3, toy["images"])
        return pointing_game(cams, toy["boxes"])["accuracy"]

    assert hits(untrained) < hits(toy["model"])


def test_cascading_randomization_breaks_gradcam(toy) -> None:
    # Adebayo et al. cascade: re-initialize from the logit down to the input. One draw of a
    # 16-weight head is noisy (a lucky draw can redraw the same blob), so average 3 seeds.
    model = toy["model"]
    layers = [model.head, model.block3, model.block2, model.block1]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = [
        randomization_test(
            model, model.block3, toy["images"][:12], layers_to_randomize=layers, seed=seed
        )
        for seed in range(3)
    ]
    assert results[0]["n_images"] == 12 == len(results[0]["per_image"])
    assert results[0]["method"] == "gradcam"
    assert set(results[0]["randomized_layers"]) == {
        "head.2",
        "block3.0",
        "block2.0",
        "block2.1",
        "block1.0",
        "block1.1",
    }
    assert np.mean([r["mean_spearman"] for r in results]) < 0.5
    for key, value in model.state_dict().items():  # the original is untouched
        assert torch.equal(value, state[key])


def test_default_randomizes_the_head_after_the_target_layer(toy) -> None:
    model = toy["model"]
    result = randomization_test(model, model.block3, toy["images"][:6])
    assert result["randomized_layers"] == ["head.2"]
    assert result["mean_spearman"] < 0.99  # the gradient-based map did move


def test_eigencam_ignores_a_randomized_head(toy) -> None:
    # Negative control: EigenCAM reads only the target layer's activations, so re-initializing
    # the head cannot change it. A correlation near 1 here shows the test can say "no".
    model = toy["model"]
    result = randomization_test(model, model.block3, toy["images"][:8], method="eigencam")
    assert result["mean_spearman"] > 0.99


def test_randomization_is_seeded_and_leaves_global_rng_alone(toy) -> None:
    model = toy["model"]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    layers = [model.block3]
    first = randomization_test(model, model.block3, toy["images"][:4], layers_to_randomize=layers)
    assert torch.equal(torch.rand(3), expected_next)
    again = randomization_test(model, model.block3, toy["images"][:4], layers_to_randomize=layers)
    assert first["per_image"] == again["per_image"]
    other = randomization_test(
        model, model.block3, toy["images"][:4], layers_to_randomize=layers, seed=1
    )
    assert other["per_image"] != first["per_image"]


def test_randomization_rejects_foreign_or_parameterless_layers(toy) -> None:
    model = toy["model"]
    with pytest.raises(ValueError, match="not a submodule"):
        randomization_test(
            model, model.block3, toy["images"][:2], layers_to_randomize=[nn.Linear(2, 2)]
        )
    with pytest.raises(ValueError, match="nothing to randomize"):
        randomization_test(
            model, model.block3, toy["images"][:2], layers_to_randomize=[model.head[0]]
        )
    with pytest.raises(ValueError, match="gradcam"):
        randomization_test(model, model.block3, toy["images"][:2], method="nope")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (np.arange(16.0), np.arange(16.0) ** 2, 1.0),  # same ranks
        (np.arange(16.0), -np.arange(16.0), -1.0),
        (np.arange(16.0), np.zeros(16), None),  # constant: undefined, counted as 0
    ],
)
def test_spearman_of_maps(a, b, expected) -> None:
    value = _spearman(a.reshape(4, 4), b.reshape(4, 4))
    assert value == (None if expected is None else pytest.approx(expected))


def centred_peak(size: int = 9) -> np.ndarray:
    """A map whose unique maximum is the centre pixel (4, 4) for size 9."""
    yy, xx = np.mgrid[:size, :size]
    c = size // 2
    return np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / 4.0).astype(np.float32)


@pytest.mark.parametrize(
    ("box", "tolerance", "hit"),
    [
        ((3, 3, 6, 6), 0, True),  # around the centre
        ((4, 4, 5, 5), 0, True),  # exactly the peak pixel
        ((0, 0, 4, 4), 0, False),  # x1, y1 exclusive: stops just before the peak
        ((5, 5, 9, 9), 0, False),  # just after it
        ((5, 5, 9, 9), 1, True),  # one pixel of tolerance reaches it
        ((4, 0, 5, 4), 0, False),  # right column, rows above the peak only
    ],
)
def test_pointing_game_single_map(box, tolerance: int, hit: bool) -> None:
    result = pointing_game(centred_peak()[None], [box], tolerance_px=tolerance)
    assert result == {"hits": int(hit), "n": 1, "accuracy": float(hit), "n_flat": 0}


def test_pointing_game_hand_computed_accuracy() -> None:
    cams = np.stack([centred_peak()] * 4)
    boxes = [(3, 3, 6, 6), (0, 0, 2, 2), (4, 4, 9, 9), (6, 0, 9, 9)]  # hit, miss, hit, miss
    assert pointing_game(cams, boxes)["accuracy"] == 0.5


def test_pointing_game_constant_maps_never_hit() -> None:
    cams = np.ones((3, 9, 9), dtype=np.float32)
    result = pointing_game(cams, [(0, 0, 9, 9)] * 3)  # even a box covering everything
    assert result == {"hits": 0, "n": 3, "accuracy": 0.0, "n_flat": 3}


@pytest.mark.parametrize(
    ("cams", "boxes", "match"),
    [
        (np.zeros((2, 9, 9)), [(0, 0, 1, 1)], "one box per map"),
        (np.zeros((1, 9, 9)), [(3, 3, 3, 5)], "empty"),
        (np.zeros((9, 9)), [(0, 0, 1, 1)], "N, H, W"),
    ],
)
def test_pointing_game_rejects_bad_input(cams, boxes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pointing_game(cams, boxes)
