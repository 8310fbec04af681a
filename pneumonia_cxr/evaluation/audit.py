"""Shortcut audit: how much of the model's accuracy comes from the image frame, not the lungs.

Chest X-ray classifiers are known to learn shortcuts outside the lungs (laterality letters,
collimation edges, positioning, the squashed aspect ratio). Three edited views of every image
are scored through the one inference path, each at the model's own threshold:

- `frame_only`: only the outer frame is kept (the central box, `FRAME` from each side, is
  filled): what the model can tell without the chest's centre.
- `lung_region_only`: only a box around the lung fields is kept (`LUNG_BOX`); everything else
  filled. A box, not a segmentation: it also holds the heart and mediastinum, and on some
  children a little of the abdomen.
- `frame_neutralised`: the whole image with the outer frame filled.

The fill is each image's own mean grey level, so no region carries a brightness cue that the
unedited images never had (a fixed grey would differ from dark and bright X-rays alike).
Also reported: the share of Grad-CAM energy that falls in the frame, per class (the frame is
51% of the area: a map spread evenly would put 0.51 there). The pointing game on real images is
out of reach: Kermany has no finding boxes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.loader import load_xray
from pneumonia_cxr.errors import ImageLoadError
from pneumonia_cxr.evaluation.metrics import evaluate_predictions
from pneumonia_cxr.inference.predictor import Predictor

FRAME = 0.15
"""Share of the width and of the height that the frame takes on each side."""
LUNG_BOX = (0.12, 0.15, 0.80, 0.85)
"""(top, left, bottom, right) of the lung-field box, as shares of the image's height/width."""
VIEWS: tuple[str, ...] = ("frame_only", "lung_region_only", "frame_neutralised")


def _box(shape: Sequence[int], top: float, left: float, bottom: float, right: float):
    """Row and column slices of a box given as shares of an image of `shape` (..., H, W)."""
    height, width = shape[-2:]
    return (
        slice(round(top * height), round(bottom * height)),
        slice(round(left * width), round(right * width)),
    )


def _keep(gray: torch.Tensor, box: tuple[slice, slice], inside: bool) -> torch.Tensor:
    """Keep the box (inside=True) or everything but the box; fill the rest with the mean."""
    fill = round(float(gray.float().mean()))
    mask = torch.zeros(gray.shape[-2:], dtype=torch.bool)
    mask[box] = True
    keep = mask if inside else ~mask
    return torch.where(keep, gray, torch.full_like(gray, fill))


def edit(view: str, gray: torch.Tensor) -> torch.Tensor:
    """The edited uint8 (1, H, W) image of one view."""
    centre = _box(gray.shape, FRAME, FRAME, 1 - FRAME, 1 - FRAME)
    if view == "frame_only":
        return _keep(gray, centre, inside=False)
    if view == "frame_neutralised":
        return _keep(gray, centre, inside=True)
    if view == "lung_region_only":
        return _keep(gray, _box(gray.shape, *LUNG_BOX), inside=True)
    raise ValueError(f"unknown view {view!r}; one of {VIEWS}")


def _score_view(
    predictor: Predictor,
    records: Sequence[ImageRecord],
    change: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    labels, probabilities = [], []
    for start in range(0, len(records), batch_size):
        inputs = []
        for record in records[start : start + batch_size]:
            try:
                gray = load_xray(record.path, min_side=predictor.image_size)
            except ImageLoadError:
                continue  # evaluate reports unreadable files; the audit only skips them
            inputs.append(predictor.transform(change(torch.from_numpy(gray)).numpy()))
            labels.append(record.label)
        if inputs:
            probabilities.append(predictor.scores(np.stack(inputs)).probabilities)
    return np.asarray(labels), np.concatenate(probabilities) if probabilities else np.zeros(0)


def frame_energy(predictor: Predictor, records: Sequence[ImageRecord]) -> dict:
    """Mean share of Grad-CAM energy inside the frame, per class (PyTorch engine)."""
    from pneumonia_cxr.explain.gradcam import predictor_cams

    shares: dict[str, list[float]] = {}
    for start in range(0, len(records), 16):
        chunk = records[start : start + 16]
        images = np.stack([predictor.load_input(r.path)[0] for r in chunk])
        for record, cam in zip(chunk, predictor_cams(predictor, images), strict=True):
            cam = np.clip(np.asarray(cam, dtype=np.float64), 0, None)
            rows, cols = _box(cam.shape, FRAME, FRAME, 1 - FRAME, 1 - FRAME)
            total = cam.sum()
            if total > 0:
                inner = cam[rows, cols].sum()
                shares.setdefault(record.class_name, []).append(float(1 - inner / total))
    size = (predictor.image_size, predictor.image_size)
    centre = np.zeros(size)
    centre[_box(size, FRAME, FRAME, 1 - FRAME, 1 - FRAME)] = 1.0
    return {
        "uniform_map_share": float(1 - centre.mean()),
        "per_class": {
            name: {"n": len(values), "mean": float(np.mean(values)), "sd": float(np.std(values))}
            for name, values in sorted(shares.items())
        },
    }


def run_audit(
    predictor: Predictor,
    records: Sequence[ImageRecord],
    *,
    batch_size: int = 32,
    n_resamples: int = 2000,
    seed: int = 0,
    cam_images_per_class: int = 32,
) -> dict[str, Any]:
    """Every view's AUC, sensitivity and specificity (bootstrap CIs) and the frame energy."""
    views: dict[str, Any] = {}
    for view in VIEWS:
        labels, probabilities = _score_view(
            predictor, records, lambda gray, view=view: edit(view, gray), batch_size
        )
        metrics = evaluate_predictions(
            labels,
            probabilities,
            predictor.threshold,
            predictor.decision.rule,
            n_resamples,
            seed,
        )
        at = metrics["at_threshold"]
        views[view] = {
            "n": len(labels),
            "roc_auc": metrics["roc_auc"],
            "sensitivity": at["sensitivity"],
            "specificity": at["specificity"],
        }
    rng = np.random.default_rng(seed)
    chosen = [
        records[i]
        for label in (0, 1)
        for i in rng.permutation([i for i, r in enumerate(records) if r.label == label])[
            :cam_images_per_class
        ]
    ]
    audit: dict[str, Any] = {
        "views": views,
        "frame": FRAME,
        "lung_box": list(LUNG_BOX),
        "fill": "each image's own mean grey level",
        "pointing_game_note": "Kermany has no finding boxes: no pointing game on real images",
    }
    if predictor.bundle is not None and chosen:
        audit["gradcam_frame_energy"] = frame_energy(predictor, chosen)
    return audit
