"""Fine-tuning as an `adapt` recipe (`--recipes ...,finetune`; not among the defaults).

The parent network is fine-tuned on the other folds' films with the small-data recipe
`FINETUNE_RECIPE`, each fold's films are scored by the run that never saw their patients, and
the recipe competes with the probes on that pooled out-of-fold ROC AUC; chosen, it is run once
more on all films. It costs `folds` + 1 training runs (2-4 minutes each for a few hundred films
on 2 CPU cores), which is why it is asked for by name: on another hospital's films it reached
AUC 0.71-0.78 where a head on frozen features reached 0.91 (issue 35). Each run resumes exactly
(`train --resume`), and a finished fold's logits are kept, so a killed `adapt` goes on where it
stopped. The fine-tuned network has no type head (the training hospital's is dropped).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.site import PATIENTS_FILE
from pneumonia_cxr.model.model_file import FINAL_MODEL_NAME, ModelBundle, load_model
from pneumonia_cxr.run_folder import CONFIG_FILE
from pneumonia_cxr.storage import atomic_write_text

log = logging.getLogger(__name__)

FINETUNE = "finetune"

FINETUNE_RECIPE: dict[str, Any] = {
    "stage1_epochs": 1,
    "stage2_epochs": 3,
    "stage1_lr": 1e-4,
    "stage2_lr": 3e-5,
    "unfreeze_layers": -1,
}
"""Few epochs at a low rate on every layer: a few hundred films move the whole network a little
toward the site without forgetting what it learned (the previous `adapt`'s recipe, issue 25)."""


def _link_folder(records: Sequence[ImageRecord], folder: Path, patients: dict[str, str]) -> Path:
    """Films as a site folder of links (the training pipeline reads folders), with their
    patients.csv rows."""
    for record in records:
        target = folder / record.class_name / record.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_symlink():
            target.symlink_to(record.path.resolve())
    if patients:
        with open(folder / PATIENTS_FILE, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "patient"])
            for record in records:
                if record.path.name in patients:
                    writer.writerow([record.path.name, patients[record.path.name]])
    return folder


def fine_tune(
    parent: Path,
    records: Sequence[ImageRecord],
    patients: dict[str, str],
    run: Path,
    seed: int,
    batch_size: int,
) -> Path:
    """Train (or resume exactly) one fine-tuning run on `records`; its final model file."""
    from pneumonia_cxr.config import RunConfig
    from pneumonia_cxr.training.init_from import adopt_parent
    from pneumonia_cxr.training.run import train

    final = run / FINAL_MODEL_NAME
    if final.is_file():
        return final
    if (run / CONFIG_FILE).is_file():
        log.info("resuming the fine-tuning run in %s", run)
        return train(resume=run) / FINAL_MODEL_NAME
    config = RunConfig()
    config.data.dataset_path = str(
        _link_folder(records, run.parent / f"{run.name}_images", patients)
    )
    config.data.batch_size = batch_size
    adopt_parent(config, parent)
    config.model.unfreeze_layers = FINETUNE_RECIPE["unfreeze_layers"]
    for key in ("stage1_epochs", "stage2_epochs", "stage1_lr", "stage2_lr"):
        setattr(config.train, key, FINETUNE_RECIPE[key])
    config.train.seed, config.train.output_dir, config.train.run_name = (
        seed,
        str(run.parent),
        run.name,
    )
    return train(config) / FINAL_MODEL_NAME


def _logits(
    model_path: Path, records: Sequence[ImageRecord], batch_size: int, device: str | None
) -> np.ndarray:
    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.site.held_out import score_site

    predictor = Predictor.open(model_path, engine="torch", device=device)
    return np.asarray(score_site(predictor, records, batch_size).scores.logits, dtype=np.float64)


def cross_fit_finetune(
    parent: Path,
    records: Sequence[ImageRecord],
    fold_of: np.ndarray,
    patients: dict[str, str],
    work: Path,
    *,
    seed: int,
    batch_size: int,
    device: str | None = None,
) -> np.ndarray:
    """Every film's logit from a run fine-tuned on the other folds (kept per fold in
    `work/folds/finetune<k>.json`: a re-run skips finished folds)."""
    logits = np.zeros(len(records))
    for fold in (int(k) for k in np.unique(fold_of)):
        held = np.flatnonzero(fold_of == fold)
        kept = work / "folds" / f"{FINETUNE}{fold}.json"
        if kept.is_file():
            logits[held] = json.loads(kept.read_text())["logits"]
            continue
        train_part = [r for r, k in zip(records, fold_of, strict=True) if k != fold]
        model = fine_tune(
            parent, train_part, patients, work / f"{FINETUNE}_fold{fold}", seed, batch_size
        )
        logits[held] = _logits(model, [records[i] for i in held], batch_size, device)
        atomic_write_text(kept, json.dumps({"logits": logits[held].tolist()}))
    return logits


def final_finetune(
    parent: Path,
    records: Sequence[ImageRecord],
    patients: dict[str, str],
    work: Path,
    *,
    seed: int,
    batch_size: int,
) -> ModelBundle:
    """The run on all films, as the adapted network (its own threshold, OOD statistics and
    guard are replaced by `adapt`'s)."""
    bundle = load_model(
        fine_tune(parent, records, patients, work / f"{FINETUNE}_all", seed, batch_size)
    )
    bundle.ood, bundle.guard, bundle.extra = None, None, {}
    return bundle
