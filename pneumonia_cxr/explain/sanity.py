"""Evidence that the heatmaps mean something: weight randomization and the pointing game.

A heatmap that looks plausible is not evidence; these two checks are. The randomization test
(Adebayo et al. 2018, "Sanity Checks for Saliency Maps", §3.1 model-parameter randomization)
asks whether the map depends on the learned weights at all; the pointing game (Zhang et al.
2016, "Top-down Neural Attention by Excitation Backprop", §4.1) asks whether its peak lands on
the object when a box is known.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from pneumonia_cxr.explain.gradcam import cam_class, compute_cams


def _module_name(model: nn.Module, module: nn.Module) -> str:
    """Name of `module` inside `model`, so the same module can be found in a deep copy."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(
        f"{type(module).__name__} is not a submodule of {type(model).__name__}: pass layers "
        "taken from the model being explained"
    )


def _head_after(model: nn.Module, target_name: str) -> list[str]:
    """Modules registered after the target layer and not inside it: the head, by default.

    Registration order is execution order for the usual backbones (torchvision, timm: the
    classifier is registered last). For a model built otherwise, pass `layers_to_randomize`.
    """
    names = [name for name, _ in model.named_modules()]
    after = names[names.index(target_name) + 1 :]
    return [name for name in after if not name.startswith(f"{target_name}.")]


def _resettable(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Every module under `names` (itself included) that can re-initialize its parameters."""
    found: dict[str, None] = {}
    for name in names:
        for sub_name, sub in model.get_submodule(name).named_modules(prefix=name):
            if callable(getattr(sub, "reset_parameters", None)):
                found[sub_name] = None
    return list(found)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Rank correlation of two maps; None when either is constant (undefined, counted as 0)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def randomization_test(
    model: nn.Module,
    target_layer: nn.Module,
    images: torch.Tensor,
    *,
    layers_to_randomize: Sequence[nn.Module] | None = None,
    method: str = "gradcam",
    seed: int = 0,
) -> dict:
    """Model-parameter randomization test (Adebayo et al. 2018).

    A deep copy of the model gets its top layers re-initialized with each module's own
    `reset_parameters()` (under `seed`, without disturbing the global RNG); maps are computed
    for both models and compared by Spearman rank correlation. A low mean says the maps
    depend on what the model learned; a value near 1 says the method would draw the same
    picture for an untrained model (an edge detector, not an explanation).

    Args:
        model: the trained single-logit model (left untouched).
        target_layer: the explained layer inside `model`.
        images: normalized input batch (N, C, H, W).
        layers_to_randomize: modules of `model` to re-initialize (all their submodules with a
            `reset_parameters`). Default: every module registered after `target_layer` and not
            inside it, i.e. the classification head.
        method: one of `CAM_METHODS`.
        seed: seed of the re-initialization.

    Returns:
        {"mean_spearman", "per_image", "n_images", "method", "randomized_layers", "n_constant",
        "note"}. A pair where either map is constant has no rank correlation; it counts as 0
        in the mean, and `n_constant`/`note` say how many there were.
    """
    cam_class(method)  # fail on a bad name before copying a large model
    target_name = _module_name(model, target_layer)
    if layers_to_randomize is None:
        chosen = _head_after(model, target_name)
    else:
        chosen = [_module_name(model, module) for module in layers_to_randomize]
    randomized = _resettable(model, chosen)
    if not randomized:
        raise ValueError(
            f"nothing to randomize: no module with reset_parameters() in {chosen or 'the head'}; "
            "pass layers_to_randomize"
        )

    shuffled = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in randomized:
            shuffled.get_submodule(name).reset_parameters()

    original = compute_cams(model, target_layer, images, method=method)
    after = compute_cams(shuffled, shuffled.get_submodule(target_name), images, method=method)
    correlations = [_spearman(a, b) for a, b in zip(original, after, strict=True)]
    per_image = [0.0 if c is None else c for c in correlations]
    n_constant = sum(c is None for c in correlations)
    note = (
        f"{n_constant} of {len(per_image)} pairs had a constant map; counted as correlation 0"
        if n_constant
        else ""
    )
    return {
        "mean_spearman": float(np.mean(per_image)) if per_image else float("nan"),
        "per_image": per_image,
        "n_images": len(per_image),
        "method": method,
        "randomized_layers": randomized,
        "n_constant": n_constant,
        "note": note,
    }


def pointing_game(
    cams: np.ndarray,
    boxes: Sequence[tuple[int, int, int, int]],
    *,
    tolerance_px: int = 0,
) -> dict:
    """Fraction of maps whose peak lies inside the annotated box (Zhang et al. 2016).

    Boxes are (x0, y0, x1, y1) in the map's pixel coordinates, inclusive-exclusive: pixel
    (x, y) is inside when x0 <= x < x1 and y0 <= y < y1; `tolerance_px` widens the box on
    every side (the paper uses 15 px at 224 px). The peak is `np.argmax`, the first maximum
    in row-major order. A constant map points nowhere and counts as a miss (`n_flat`), so a
    blank heatmap can never score.

    Returns:
        {"hits", "n", "accuracy", "n_flat"}; accuracy is NaN when there are no maps.
    """
    cams = np.asarray(cams)
    if cams.ndim != 3:
        raise ValueError(f"cams must have shape (N, H, W), got {cams.shape}")
    if len(boxes) != len(cams):
        raise ValueError(f"{len(cams)} maps but {len(boxes)} boxes: pass one box per map")
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    hits = flat = 0
    for cam, box in zip(cams, boxes, strict=True):
        x0, y0, x1, y1 = (int(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {box} is empty: expected (x0, y0, x1, y1) with x0 < x1, y0 < y1")
        if np.ptp(cam) == 0:
            flat += 1
            continue
        y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
        t = tolerance_px
        hits += int(x0 - t <= x < x1 + t and y0 - t <= y < y1 + t)
    n = len(cams)
    return {"hits": hits, "n": n, "accuracy": hits / n if n else float("nan"), "n_flat": flat}
