"""The explain-check job: do this model's heatmaps depend on what it learned, and do they point?

Two checks from `pneumonia_cxr.explain.sanity`, run on a trained model file and a dataset split:

(a) model-parameter randomization (Adebayo et al. 2018, §3.1): the head and the top layers of
    the backbone are re-initialized and the maps of PNEUMONIA images recomputed; the mean
    Spearman rank correlation between original and randomized maps should be low;
(b) the pointing game (Zhang et al. 2016, §4.1), only where the dataset records where the
    finding is (the synthetic set's `opacity_boxes.csv`): how often the map's peak falls inside
    the opacity box of a PNEUMONIA image, next to the rate a random peak would reach; scored on
    the maps the overlays show (the last layer, stride 32: 4 x 4 cells at 128 px, too coarse to
    point at a small box) and on the stride-16 layer (`fine_layer`, twice as fine).

`run_explain_check` is shared: `pneumonia-cxr explain-check` calls it, and so does `evaluate`
(with a few images) so both figures land in the evaluation report.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.data.discovery import ImageRecord, list_images
from pneumonia_cxr.data.preprocess import evaluation_transform
from pneumonia_cxr.data.synthetic import SYNTHETIC_BOXES_FILE, read_opacity_boxes
from pneumonia_cxr.errors import ImageLoadError
from pneumonia_cxr.explain.gradcam import cam_class, model_cams
from pneumonia_cxr.explain.sanity import pointing_game, randomization_test
from pneumonia_cxr.inference.predictor import load_input
from pneumonia_cxr.model.classifier import parameter_layers
from pneumonia_cxr.model.model_file import ModelBundle
from pneumonia_cxr.storage import atomic_write_text

EXPLAIN_CHECK_FILE = "explain_check.json"
DEFAULT_TOP_LAYERS = 4
"""Backbone parameter layers re-initialized with the head: the top of Adebayo's cascade."""

POSITIVE = CLASS_NAMES.index("PNEUMONIA")
Box = tuple[int, int, int, int]


def sample_records(
    records: Sequence[ImageRecord], n: int, seed: int, label: int | None = None
) -> list[ImageRecord]:
    """A seeded sample of at most `n` records: of one class, or balanced over both classes.

    Balanced because the randomization test should not describe NORMAL images only when a
    split happens to be sorted by class.
    """
    if n < 1:
        raise ValueError(f"n_images must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    labels = [label] if label is not None else list(range(len(CLASS_NAMES)))
    pools = [[r for r in records if r.label == value] for value in labels]
    pools = [[pool[i] for i in rng.permutation(len(pool))] for pool in pools]
    chosen: list[ImageRecord] = []
    while len(chosen) < n and any(pools):
        for pool in pools:  # round-robin over classes
            if pool and len(chosen) < n:
                chosen.append(pool.pop(0))
    return chosen


def load_inputs(
    records: Sequence[ImageRecord], bundle: ModelBundle
) -> tuple[torch.Tensor, list[np.ndarray], list[ImageRecord]]:
    """Model inputs and original pixels of the readable records; unreadable ones warned, skipped."""
    transform = evaluation_transform(bundle.preprocessing)
    size = bundle.preprocessing.image_size
    inputs, originals, kept = [], [], []
    for record in records:
        try:
            image, gray = load_input(record.path, transform, size, keep_original=True)
        except ImageLoadError as error:
            warnings.warn(f"explain-check skips unreadable image {error}", stacklevel=2)
            continue
        inputs.append(torch.from_numpy(image))
        originals.append(gray)
        kept.append(record)
    stacked = (
        torch.stack(inputs) if inputs else torch.zeros(0, bundle.preprocessing.channels, size, size)
    )
    # channels_last, the layout of a model that ran through predict or training: a model and
    # input in different layouts take a slow conversion path in every convolution.
    return stacked.contiguous(memory_format=torch.channels_last), originals, kept


def scale_box(box: Box, from_size: tuple[int, int], to_size: tuple[int, int]) -> Box:
    """Map an (x0, y0, x1, y1) box, x1/y1 exclusive, from one (width, height) to another.

    Rounded outwards (floor the start, ceil the end) so a box never shrinks below the pixels
    it covered; clamped to the target image; never empty.
    """
    (from_w, from_h), (to_w, to_h) = from_size, to_size
    sx, sy = to_w / from_w, to_h / from_h
    x0, y0, x1, y1 = box
    nx0 = min(max(math.floor(x0 * sx), 0), to_w - 1)
    ny0 = min(max(math.floor(y0 * sy), 0), to_h - 1)
    nx1 = max(min(math.ceil(x1 * sx), to_w), nx0 + 1)
    ny1 = max(min(math.ceil(y1 * sy), to_h), ny0 + 1)
    return nx0, ny0, nx1, ny1


def randomization_layers(model: torch.nn.Module, top_layers: int) -> list[torch.nn.Module]:
    """The head plus the top `top_layers` parameter layers of the backbone."""
    layers = [module for _, module in parameter_layers(model.backbone)]
    top = layers[len(layers) - min(max(top_layers, 0), len(layers)) :]
    return [model.head, *top]


def randomization_check(
    bundle: ModelBundle,
    records: Sequence[ImageRecord],
    *,
    n_images: int,
    method: str,
    seed: int,
    top_layers: int = DEFAULT_TOP_LAYERS,
) -> dict[str, Any]:
    """Adebayo's model-parameter randomization test on a sample of the PNEUMONIA `records`.

    PNEUMONIA images, because a map of the PNEUMONIA logit keeps only positive evidence
    (Grad-CAM's ReLU): on NORMAL images it is often flat, and a flat pair has no rank
    correlation, so it would tell nothing. Without PNEUMONIA images, both classes are used.
    """
    has_positive = any(record.label == POSITIVE for record in records)
    chosen = sample_records(records, n_images, seed, label=POSITIVE if has_positive else None)
    images, _, kept = load_inputs(chosen, bundle)
    if not kept:
        return {"n_images": 0, "mean_spearman": None, "note": "no readable image to explain"}
    # An ensemble is checked on its first member: re-initializing "the top layers" of an
    # average of networks has no single meaning.
    model = bundle.model.members[0]
    result = randomization_test(
        model,
        model.cam_target_layer,
        images,
        layers_to_randomize=randomization_layers(model, top_layers),
        method=method,
        seed=seed,
    )
    result["top_backbone_layers"] = top_layers
    result["paths"] = [str(record.path) for record in kept]
    return result


def pointing_game_check(
    bundle: ModelBundle,
    records: Sequence[ImageRecord],
    root: Path,
    *,
    n_images: int,
    method: str,
    seed: int,
) -> dict[str, Any] | None:
    """The pointing game on PNEUMONIA images with a recorded opacity box; None without boxes.

    Boxes are stored in the pixels of the image file; the maps come at the model's input size,
    so each box is scaled from the image's own size. `chance` is the mean share of the map the
    boxes cover: the hit rate of a peak placed at random, the figure to beat. Scored on the
    last layer's maps (the overlays') and, as `fine_layer`, on the stride-16 layer's; each with
    `map_cells`, the cells per side of the feature map read (its upscaled map holds no more).
    """
    if not (root / SYNTHETIC_BOXES_FILE).is_file():
        return None
    boxes = read_opacity_boxes(root)
    boxed = [r for r in records if r.path.relative_to(root).as_posix() in boxes]
    if not boxed:
        return {"n": 0, "hits": 0, "accuracy": None, "chance": None, "n_flat": 0}
    images, originals, kept = load_inputs(
        sample_records(boxed, n_images, seed, label=POSITIVE), bundle
    )
    if not kept:
        return {"n": 0, "hits": 0, "accuracy": None, "chance": None, "n_flat": 0}
    cams = model_cams(bundle.model, images, method=method)
    fine_cams = model_cams(bundle.model, images, method=method, fine=True)
    height, width = cams.shape[1:]
    scaled = [
        scale_box(
            boxes[record.path.relative_to(root).as_posix()],
            (int(gray.shape[-1]), int(gray.shape[-2])),
            (width, height),
        )
        for record, gray in zip(kept, originals, strict=True)
    ]
    result = pointing_game(cams, scaled)
    areas = [(x1 - x0) * (y1 - y0) / (width * height) for x0, y0, x1, y1 in scaled]
    result.update(
        chance=float(np.mean(areas)),
        tolerance_px=0,
        method=method,
        map_cells=_map_cells(bundle.model, bundle.model.cam_target_layers, images[:1]),
        fine_layer={
            **pointing_game(fine_cams, scaled),
            "map_cells": _map_cells(bundle.model, bundle.model.cam_fine_layers, images[:1]),
        },
        paths=[str(record.path) for record in kept],
    )
    return result


def pointing_game_summary(game: dict[str, Any]) -> str:
    """One line for the CLI and the report: both layers' hit rates next to chance."""
    text = f"{game['hits']}/{game['n']} = {game['accuracy']:.1%}"
    flat = str(game["n_flat"])
    if "map_cells" in game:  # files written before the stride-16 layer was scored lack it
        text += f" on the last layer's {game['map_cells']} x {game['map_cells']} map"
    fine = game.get("fine_layer")
    if fine and fine.get("accuracy") is not None:
        cells = fine["map_cells"]
        text += f", {fine['hits']}/{fine['n']} = {fine['accuracy']:.1%} on the {cells} x {cells}"
        text += " stride-16 map"
        flat += f" / {fine['n_flat']}"
    return text + f" (a random peak: {game['chance']:.1%}; flat maps: {flat})"


def _map_cells(
    model: torch.nn.Module, layers: Sequence[torch.nn.Module], image: torch.Tensor
) -> int:
    """Cells per side of the feature map Grad-CAM reads, measured (padding and pooling round
    differently per backbone); the smaller side if it is not square."""
    sizes: list[int] = []

    def keep(_module, _inputs, output) -> None:
        sizes.append(int(min(output.shape[-2:])))

    hooks = [layer.register_forward_hook(keep) for layer in layers]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
    return min(sizes)


def run_explain_check(
    bundle: ModelBundle,
    root: str | Path,
    *,
    split: str = "test",
    n_images: int = 16,
    method: str = "gradcam",
    seed: int = 0,
    top_layers: int = DEFAULT_TOP_LAYERS,
    records: Sequence[ImageRecord] | None = None,
) -> dict[str, Any]:
    """Both checks on `split` of the dataset at `root`; a JSON-ready dict (NaN written as None).

    Returns:
        {"split", "method", "n_images_requested", "randomization": {...mean_spearman...},
        "pointing_game": {...accuracy, chance...} or None, "pointing_game_note"}.
    """
    cam_class(method)  # unknown method: fail before loading images
    root = Path(root)
    bundle.model.to(memory_format=torch.channels_last)  # the inputs' layout; same numbers
    if records is None:
        records = list_images(root, [split])
    result: dict[str, Any] = {
        "split": split,
        "method": method,
        "n_images_requested": n_images,
        "randomization": randomization_check(
            bundle, records, n_images=n_images, method=method, seed=seed, top_layers=top_layers
        ),
        "pointing_game": pointing_game_check(
            bundle, records, root, n_images=n_images, method=method, seed=seed
        ),
    }
    result["pointing_game_note"] = (
        f"no {SYNTHETIC_BOXES_FILE} in {root}: the dataset records no finding locations"
        if result["pointing_game"] is None
        else ""
    )
    return _json_safe(result)


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively: JSON that any parser reads."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_explain_check(result: dict[str, Any], output_dir: str | Path) -> Path:
    """Write `explain_check.json` into `output_dir` (created)."""
    path = Path(output_dir) / EXPLAIN_CHECK_FILE
    return atomic_write_text(path, json.dumps(result, indent=2, allow_nan=False) + "\n")


def explain_check_job(
    model_path: str | Path | None,
    dataset_path: str | Path | None = None,
    *,
    n_images: int = 16,
    output_dir: str | Path | None = None,
    method: str = "gradcam",
    seed: int = 0,
    split: str = "test",
) -> tuple[dict[str, Any], Path]:
    """`pneumonia-cxr explain-check`: open (contract checked), run, write; returns (result, json).

    Default model: the shipped one; default output folder: `<model file folder>/explain_check`.
    """
    from pneumonia_cxr.data.discovery import resolve_dataset_for_model
    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.model.shipped import resolve_model_path

    model_path = resolve_model_path(model_path)
    bundle = Predictor.open(model_path, engine="torch", device="cpu").bundle
    root = resolve_dataset_for_model(dataset_path, bundle.config)
    result = run_explain_check(
        bundle, root, split=split, n_images=n_images, method=method, seed=seed
    )
    result = {
        "model_path": str(model_path),
        "model_fingerprint": bundle.fingerprint(),
        "dataset": str(root),
        **result,
    }
    out = Path(output_dir) if output_dir is not None else _default_output_dir(model_path)
    return result, write_explain_check(result, out)


def _default_output_dir(model_path: Path) -> Path:
    """Beside the model file; for the shipped model (inside the package) under ./outputs."""
    from pneumonia_cxr.model.shipped import is_shipped_model

    if is_shipped_model(model_path):
        return Path("outputs") / "shipped_model_explain_check"
    return model_path.parent / "explain_check"
