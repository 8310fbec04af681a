"""Fit the applicability guard's feature part (`model.guard.LayerGuard`) for a model, on the
patient-level split it was trained on: densities on training images, the score normalisation on
other training images, the cut-off on validation images. Never on test.

It runs at the end of `ensemble` (the step every study's float16 file goes through) and alone
as `pneumonia-cxr guard`, which refits a model file's guard with its weights unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pneumonia_cxr.data.discovery import ImageRecord, list_images, resolve_dataset_for_model
from pneumonia_cxr.data.fingerprint import records_fingerprint
from pneumonia_cxr.data.split import PatientSplit, make_patient_split
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.backbones import get_backbone
from pneumonia_cxr.model.guard import (
    DEFAULT_GUARD_FIT_IMAGES,
    DEFAULT_GUARD_NORM_IMAGES,
    DEFAULT_GUARD_QUANTILE,
    LayerGuard,
)
from pneumonia_cxr.model.model_file import ModelBundle

log = logging.getLogger(__name__)


def guard_layers(bundle: ModelBundle) -> tuple[str, ...]:
    """The guarded layers of the model's first member (`BackboneSpec.guard_layers`)."""
    return get_backbone(bundle.model.members[0].backbone_name).guard_layers


@torch.inference_mode()
def tap_vectors(
    predictor: Predictor, paths: Sequence[Path], layers: tuple[str, ...], batch_size: int = 32
) -> list[np.ndarray]:
    """`pooled_stats` of each guarded layer over `paths` (unreadable files skipped)."""
    member = predictor.bundle.model.members[0]
    per_layer: list[list[torch.Tensor]] = [[] for _ in layers]
    for batch in predictor.iter_inputs(paths, batch_size=batch_size):
        if batch["image"] is None:
            continue
        images = (
            torch.as_tensor(batch["image"])
            .to(predictor.device)
            .contiguous(memory_format=torch.channels_last)
        )
        _, taps = member.features_with_taps(images, layers)
        for store, tap in zip(per_layer, taps, strict=True):
            store.append(tap.float().cpu())
    if not per_layer[0]:
        raise ValueError("no image could be read: cannot fit the applicability guard")
    return [torch.cat(store).numpy() for store in per_layer]


def guard_parts(
    train: Sequence[ImageRecord], fit_images: int, norm_images: int, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """The training images the densities are fitted on and the others that normalise the
    layer scores (in-sample distances are biased low), drawn by one seeded permutation."""
    order = np.random.default_rng(seed).permutation(len(train))
    fit_part = [train[i].path for i in order[:fit_images]]
    norm_part = [train[i].path for i in order[fit_images : fit_images + norm_images]]
    if len(norm_part) < 2:  # a small site: normalise on the fitting images (biased low)
        norm_part = fit_part
    return fit_part, norm_part


def fit_guard(
    bundle: ModelBundle,
    train: Sequence[ImageRecord],
    val: Sequence[ImageRecord],
    *,
    fitted_on: str,
    fit_images: int = DEFAULT_GUARD_FIT_IMAGES,
    norm_images: int = DEFAULT_GUARD_NORM_IMAGES,
    quantile: float = DEFAULT_GUARD_QUANTILE,
    seed: int = 0,
    batch_size: int = 32,
    device: str | None = None,
) -> LayerGuard | None:
    """Set `bundle.guard` (None for a backbone without guard layers) and return it."""
    layers = guard_layers(bundle)
    if not layers:
        log.info("no guard layers for %s: the OOD score alone guards it", bundle.backbone_name)
        bundle.guard = None
        return None
    fit_part, norm_part = guard_parts(train, fit_images, norm_images, seed)
    bundle.guard = None
    predictor = Predictor.from_bundle(bundle, device, source="guard fit")
    log.info(
        "guard: %d images fit, %d normalise, %d validation", len(fit_part), len(norm_part), len(val)
    )
    guard = LayerGuard.fit(
        layers,
        tap_vectors(predictor, fit_part, layers, batch_size),
        tap_vectors(predictor, norm_part, layers, batch_size),
        fitted_on,
    )
    val_taps = tap_vectors(predictor, [r.path for r in val], layers, batch_size)
    with torch.inference_mode():
        scores = guard([torch.from_numpy(v) for v in val_taps]).numpy()
    guard.set_cutoff(scores, quantile)
    bundle.guard = guard
    return guard


def model_split(bundle: ModelBundle, dataset_path: str | Path | None) -> PatientSplit:
    """The patient-level split the model was trained on, made again from its config and checked
    against its data fingerprint (other images: refused, the cut-off would mean nothing)."""
    data = bundle.config.get("data", {})
    seed = data.get("split_seed")
    if seed is None:
        seed = bundle.config.get("train", {}).get("seed")
    if seed is None or "val_fraction" not in data:
        raise ModelFileError("the model file does not record its patient-level split")
    root = resolve_dataset_for_model(dataset_path, bundle.config)
    records = [r for r in list_images(root) if r.split in ("train", "val")]
    fingerprint = records_fingerprint(records, "trainval")
    if bundle.data_fingerprint and bundle.data_fingerprint != fingerprint:
        raise ModelFileError(
            f"{root}: not the images the model was trained on (data fingerprint {fingerprint}, "
            f"the model's {bundle.data_fingerprint}); give its training data set"
        )
    return make_patient_split(records, float(data["val_fraction"]), int(seed))
