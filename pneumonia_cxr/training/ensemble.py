"""Several trained runs -> one ensemble model file, with its threshold and OOD statistics
fitted on the runs' shared patient-level split (validation for the threshold and the OOD
cut-off, training images for the feature densities), never on test."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pneumonia_cxr import __version__
from pneumonia_cxr.data.split import PatientSplit, read_split_csv
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.inference.contract import check_model_contract
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.ensemble import PneumoniaEnsemble
from pneumonia_cxr.model.model_file import ModelBundle, load_model, round_to_half, save_model
from pneumonia_cxr.model.ood import DEFAULT_QUANTILE, FeatureDensity, OodScorer, member_features
from pneumonia_cxr.run_folder import SPLIT_FILE
from pneumonia_cxr.training.guard_fit import fit_guard
from pneumonia_cxr.training.operating_point import fit_on_validation

log = logging.getLogger(__name__)

DEFAULT_OOD_TRAIN_IMAGES = 1500
"""Training images whose features fit the OOD densities (64 components need far fewer)."""


def _members(model_paths: Sequence[Path]) -> list[ModelBundle]:
    if not model_paths:
        raise ValueError("an ensemble needs at least one member model file")
    bundles = [load_model(path) for path in model_paths]
    for path, bundle in zip(model_paths, bundles, strict=True):
        check_model_contract(bundle, path)
    first = bundles[0]
    for path, bundle in zip(model_paths[1:], bundles[1:], strict=True):
        if bundle.preprocessing != first.preprocessing:
            raise ModelFileError(
                f"{path}: preprocessing {asdict(bundle.preprocessing)} differs from "
                f"{model_paths[0]}'s {asdict(first.preprocessing)}; ensemble members must "
                "share one preprocessing"
            )
        if bundle.data_fingerprint != first.data_fingerprint:
            raise ModelFileError(
                f"{path}: trained on other train/validation images than {model_paths[0]} "
                "(data fingerprints differ); the ensemble's threshold needs one shared split"
            )
    return bundles


def _split(model_paths: Sequence[Path]) -> PatientSplit:
    """The members' common patient-level split. Members trained on different splits are
    refused: each one's validation images would be another's training images, and the
    ensemble's threshold and OOD cut-off would be fitted on seen data."""
    splits = []
    for model_path in model_paths:
        path = model_path.parent / SPLIT_FILE
        if not path.is_file():
            raise ModelFileError(
                f"{path}: missing; each member's run folder must hold its split.csv"
            )
        splits.append(read_split_csv(path))
    reference = {str(r.path) for r in splits[0].val}
    for model_path, split in zip(model_paths[1:], splits[1:], strict=True):
        if {str(r.path) for r in split.val} != reference:
            raise ModelFileError(
                f"{model_path}: trained on another patient-level split than {model_paths[0]}; "
                "train ensemble members with the same --split_seed"
            )
    return splits[0]


def _train_features(
    predictor: Predictor, paths: Sequence[Path], batch_size: int
) -> list[np.ndarray]:
    """Pooled features of every member over `paths` (unreadable files skipped)."""
    per_member: list[list[torch.Tensor]] = []
    for batch in predictor.iter_inputs(paths, batch_size=batch_size):
        if batch["image"] is None:
            continue
        images = (
            torch.as_tensor(batch["image"])
            .to(predictor.device)
            .contiguous(memory_format=torch.channels_last)
        )
        features = member_features(predictor.bundle.model, images)
        per_member = per_member or [[] for _ in features]
        for store, f in zip(per_member, features, strict=True):
            store.append(f)
    if not per_member:
        raise ValueError("no training image could be read: cannot fit the OOD statistics")
    return [torch.cat(store).numpy() for store in per_member]


def build_ensemble(
    model_paths: Sequence[str | Path],
    output: str | Path,
    *,
    rule: str | None = None,
    min_sensitivity: float | None = None,
    half: bool = True,
    ood_train_images: int = DEFAULT_OOD_TRAIN_IMAGES,
    batch_size: int = 32,
    device: str | None = None,
    seed: int = 0,
) -> ModelBundle:
    """Average the members' logits; fit threshold (same rule as the members unless given) and
    OOD statistics; write one model file. `half` stores float16 weights, and the threshold is
    fitted on those rounded weights, so the file is exactly what was measured."""
    paths = [Path(p) for p in model_paths]
    members = _members(paths)
    split = _split(paths)
    first = members[0]
    model = PneumoniaEnsemble([b.model for b in members]) if len(members) > 1 else first.model
    if half:
        round_to_half(model)
    train_config = first.config.get("train", {})
    bundle = ModelBundle(
        model=model.eval(),
        preprocessing=first.preprocessing,
        config=first.config,
        data_fingerprint=first.data_fingerprint,
        package_version=__version__,
        extra={"members": [str(p) for p in paths], "member_configs": [b.config for b in members]},
    )
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(split.train))[:ood_train_images]
    predictor = Predictor.from_bundle(bundle, device, source="ensemble")
    log.info("OOD densities from %d training images", len(chosen))
    train_features = _train_features(predictor, [split.train[i].path for i in chosen], batch_size)
    densities = [FeatureDensity.fit(features) for features in train_features]
    bundle.ood = OodScorer(densities, cutoff=float("inf"), quantile=DEFAULT_QUANTILE)
    val = fit_on_validation(
        bundle,
        split.val,
        rule=rule or train_config.get("threshold_rule", "max_specificity_at_sensitivity"),
        min_sensitivity=(
            min_sensitivity
            if min_sensitivity is not None
            else train_config.get("min_sensitivity", 0.95)
        ),
        calibrate=bool(train_config.get("calibrate", False)),
        batch_size=batch_size,
        device=device,
    )
    bundle.ood.cutoff = float(np.quantile(val.scores.ood_scores, bundle.ood.quantile))
    bundle.extra["ood_train_images"] = len(chosen)
    fit_guard(
        bundle,
        split.train,
        split.val,
        fitted_on="its training split (patient-level)",
        batch_size=batch_size,
        device=device,
        seed=seed,
    )
    bundle.scoring_model().cpu()  # the classifier and the OOD statistics
    save_model(bundle, output, half=half)
    return bundle
