"""The two-stage run: split, stage 1 (head), stage 2 (top layers), threshold, model file.

The stage loop lives here; the Trainer of a stage in `training.trainer`, the run folder's
progress, checkpoints and naming in `training.folder`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pneumonia_cxr import TYPE_HEAD_HIDDEN, __version__
from pneumonia_cxr.config import Preprocessing, RunConfig, monitor_mode
from pneumonia_cxr.data.datamodule import XrayDataModule
from pneumonia_cxr.data.discovery import list_images, resolve_dataset
from pneumonia_cxr.data.fingerprint import records_fingerprint
from pneumonia_cxr.data.pneumonia_types import (
    UNKNOWN,
    check_trainable,
    read_labels_csv,
    type_labels,
)
from pneumonia_cxr.data.site import is_flat_site, list_site_images, read_patients_csv
from pneumonia_cxr.data.split import (
    PatientSplit,
    make_patient_split,
    official_split,
    read_split_csv,
    write_split_csv,
)
from pneumonia_cxr.errors import RunFolderError
from pneumonia_cxr.evaluation.plots import plot_learning_curves
from pneumonia_cxr.faults import FAULT_ENV, kill_if
from pneumonia_cxr.model.backbones import preprocessing_for
from pneumonia_cxr.model.classifier import PneumoniaNet
from pneumonia_cxr.model.model_file import ModelBundle, save_model
from pneumonia_cxr.run_folder import CONFIG_FILE, SUMMARY_FILE, RunPaths
from pneumonia_cxr.storage import atomic_write_text
from pneumonia_cxr.training.callbacks import drop_rows_from
from pneumonia_cxr.training.folder import (
    intact_checkpoint,
    is_rank_zero,
    link_latest,
    new_run_dir,
    read_progress,
    workers_join,
    write_progress,
)
from pneumonia_cxr.training.guard_fit import fit_guard
from pneumonia_cxr.training.module import PneumoniaLitModule
from pneumonia_cxr.training.operating_point import fit_on_validation
from pneumonia_cxr.training.trainer import make_trainer, quiet_libraries

log = logging.getLogger(__name__)


def _load_net_weights(net: PneumoniaNet, checkpoint_path: str | Path) -> None:
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})


def _configure_stage(net: PneumoniaNet, config: RunConfig, stage: int) -> list[str]:
    if stage == 1:
        net.freeze_backbone()
        return []
    return net.unfreeze_top_layers(config.model.unfreeze_layers)


def _run_stage(
    stage: int,
    net: PneumoniaNet,
    datamodule: XrayDataModule,
    config: RunConfig,
    paths: RunPaths,
    progress: dict[str, Any],
    extra_callbacks: list,
    teacher: torch.Tensor | None = None,
) -> None:
    """Fit one stage (resuming from its last checkpoint if any); record its best checkpoint."""
    epochs = config.train.stage1_epochs if stage == 1 else config.train.stage2_epochs
    key = f"stage{stage}"
    if epochs <= 0 or progress.get(key, {}).get("done"):
        return
    if stage == 2 and progress.get("stage1", {}).get("best_checkpoint"):
        _load_net_weights(net, progress["stage1"]["best_checkpoint"])
    unfrozen = _configure_stage(net, config, stage)
    lr = config.train.stage1_lr if stage == 1 else config.train.stage2_lr
    module = PneumoniaLitModule(
        net,
        stage=stage,
        lr=lr,
        class_weights=datamodule.class_weights() if config.train.class_weights else None,
        weight_decay=config.train.weight_decay,
        label_smoothing=config.train.label_smoothing,
        lr_patience=config.train.lr_patience,
        lr_factor=config.train.lr_factor,
        teacher_probabilities=teacher,
        distill_alpha=config.distill.alpha,
        type_loss_weight=config.train.type_loss_weight if net.has_type_head else 0.0,
        type_class_weights=datamodule.type_weights() if net.has_type_head else None,
        monitor=config.train.monitor,
    )
    trainer = make_trainer(config, paths, stage, epochs, extra_callbacks, datamodule.clock)
    resume_from, finished_epoch = intact_checkpoint(paths, stage)
    if is_rank_zero():  # rows of epochs no checkpoint holds (all of them without one)
        drop_rows_from(paths.metrics, stage, finished_epoch + 1)
    # The first epoch's loader is built before any epoch hook runs: set its epoch now.
    datamodule.clock.stage, datamodule.clock.epoch = stage, finished_epoch + 1
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    if trainer.interrupted:
        raise KeyboardInterrupt(f"stage {stage} interrupted; resume with --resume {paths.root}")
    last = paths.stage_checkpoints(stage) / "last.ckpt"
    best = trainer.checkpoint_callback.best_model_path or str(last)
    best_score = trainer.checkpoint_callback.best_model_score
    progress[key] = {
        "done": True,
        "best_checkpoint": best,
        "best_score": float(best_score) if best_score is not None else None,
        "epochs_run": trainer.current_epoch,
        "unfrozen_layers": len(unfrozen) if stage == 2 else 0,
        "skipped_files": sorted(module.skipped_files),
    }
    if trainer.is_global_zero:
        write_progress(paths, progress)
    kill_if(f"after_stage{stage}")


def _best_stage(progress: dict[str, Any], monitor: str) -> dict[str, Any]:
    stages = [progress[k] for k in ("stage1", "stage2") if k in progress]
    scored = [s for s in stages if s.get("best_score") is not None]
    if not scored:
        return stages[-1]
    better = min if monitor_mode(monitor) == "min" else max
    return better(scored, key=lambda s: s["best_score"])


def prepare_data(config: RunConfig, paths: RunPaths, resuming: bool) -> tuple[PatientSplit, Path]:
    """The patient-level split: read back on resume, else made from the seed (every DDP rank
    computes the same one; only rank 0 writes it). A site's flat NORMAL/PNEUMONIA folder is
    split as a whole (it has no official test split to keep apart)."""
    flat = config.data.dataset_path is not None and is_flat_site(config.data.dataset_path)
    root = Path(config.data.dataset_path) if flat else resolve_dataset(config.data.dataset_path)
    if resuming and paths.split.exists():
        return read_split_csv(paths.split), root
    patients: dict[str, str] = {}
    if flat:
        records, patients = list_site_images(root), read_patients_csv(root)
    else:
        records = [r for r in list_images(root) if r.split in ("train", "val")]
    if config.data.validation == "official":
        if flat:
            raise ValueError("--validation official needs the official layout (a val folder)")
        split = official_split(records, config.train.seed)
        if is_rank_zero():
            write_split_csv(split, paths.split)
        return split, root
    split_seed = config.data.split_seed
    split = make_patient_split(
        records,
        config.data.val_fraction,
        config.train.seed if split_seed is None else split_seed,
        patients=patients,
    )
    if is_rank_zero():
        write_split_csv(split, paths.split)
    return split, root


def train(
    config: RunConfig | None = None,
    *,
    resume: str | Path | None = None,
    epoch_overrides: dict[str, int] | None = None,
    extra_callbacks: list | None = None,
) -> Path:
    """Run (or resume) the whole two-stage training; returns the run folder.

    `epoch_overrides` ({"stage1_epochs": n, "stage2_epochs": m}) lengthens or shortens a
    resumed run; the change is saved in config.json so the run folder stays truthful.
    """
    if os.environ.get(FAULT_ENV):
        log.warning("%s is set: this run will kill itself at %s", FAULT_ENV, os.environ[FAULT_ENV])
    with quiet_libraries():
        return _train(config, resume, epoch_overrides, extra_callbacks)


def _train(
    config: RunConfig | None,
    resume: str | Path | None,
    epoch_overrides: dict[str, int] | None,
    extra_callbacks: list | None,
) -> Path:
    if resume is not None:
        paths = RunPaths(Path(resume))
        if not paths.config.is_file():
            raise RunFolderError(f"{paths.root}: no {CONFIG_FILE}; not a run folder to resume")
        config = RunConfig.load(paths.config)
        for key, value in (epoch_overrides or {}).items():
            setattr(config.train, key, value)
        if epoch_overrides and is_rank_zero():
            config.save(paths.config)
    else:
        config = config or RunConfig()
        paths = RunPaths(new_run_dir(config))
        config.train.run_name = paths.root.name
        if is_rank_zero():  # ranks > 0 join the run that rank 0 has just created
            if paths.progress.exists() or paths.config.exists():
                raise RunFolderError(f"{paths.root} already holds a run; use --resume {paths.root}")
            paths.root.mkdir(parents=True, exist_ok=True)
            config.save(paths.config)
    L.seed_everything(config.train.seed, workers=True)
    started = time.perf_counter()
    split, root = prepare_data(config, paths, resuming=resume is not None)
    preprocessing = preprocessing_for(
        config.model.backbone,
        config.data.image_size,
        config.data.normalization,
        config.data.jpeg_quality,
    )
    teacher = _teacher(config, split, paths)
    listed = read_labels_csv(root)
    types = _types(config, split, listed)
    datamodule = XrayDataModule(
        split.train, split.val, config.data, preprocessing, seed=config.train.seed, types=types
    )
    net = PneumoniaNet(
        config.model.backbone,
        weights=config.model.weights,
        head_dims=config.model.head_dims,
        head_dropouts=config.model.head_dropouts,
        type_head=TYPE_HEAD_HIDDEN if types is not None else None,
    )
    if config.model.init_from:
        from pneumonia_cxr.training.init_from import load_parent_weights

        load_parent_weights(net, config.model.init_from)
    net = net.to(memory_format=torch.channels_last)
    progress = read_progress(paths)
    with workers_join(paths):
        for stage in (1, 2):
            _run_stage(
                stage, net, datamodule, config, paths, progress, extra_callbacks or [], teacher
            )
    if not is_rank_zero():
        return paths.root
    _load_net_weights(net, _best_stage(progress, config.train.monitor)["best_checkpoint"])
    bundle = finalize_model(net, config, preprocessing, datamodule, split, listed)
    save_model(bundle, paths.final_model)
    if paths.metrics.exists():
        plot_learning_curves(paths.metrics, paths.root / "learning_curves.png")
    _write_summary(paths, config, progress, bundle, datamodule, time.perf_counter() - started, root)
    link_latest(paths)
    return paths.root


def _types(
    config: RunConfig, split: PatientSplit, listed: dict[str, int]
) -> tuple[list[int], list[int]] | None:
    """(train, val) pneumonia types when the run has a type head (`model.type_head`), else None.
    "on" refuses a split without both types; "auto" trains one only when both are present."""
    mode = config.model.type_head
    if mode == "off":
        if config.train.monitor not in ("val_auc", "val_loss"):
            raise ValueError(f"--monitor {config.train.monitor} needs a type head (--type_head on)")
        return None
    train_types, val_types = type_labels(split.train, listed), type_labels(split.val, listed)
    if mode == "on":
        check_trainable(train_types)
        check_trainable(val_types, "the validation split")
    elif {t for t in train_types if t != UNKNOWN} != {0, 1}:
        log.info("no type head: the training split does not carry both pneumonia types")
        return None
    unknown = sum(
        1
        for r, t in zip([*split.train, *split.val], [*train_types, *val_types], strict=True)
        if r.label == 1 and t == UNKNOWN
    )
    if unknown:
        log.warning(
            "%d pneumonia image(s) of unknown type train the pneumonia question only", unknown
        )
    return train_types, val_types


def _teacher(config: RunConfig, split: PatientSplit, paths: RunPaths) -> torch.Tensor | None:
    """The teacher's probabilities for the training images (distillation only)."""
    if config.distill.teacher is None:
        return None
    from pneumonia_cxr.training.distill import teacher_probabilities

    # A fresh run scores the teacher, a resumed one reads its file: neither may move the
    # global generator that draws the network's initial weights next.
    with torch.random.fork_rng():
        return teacher_probabilities(
            config.distill.teacher,
            config.distill.teacher_sha256,
            split,
            paths.teacher_probabilities,
            batch_size=config.data.batch_size,
        )


def finalize_model(
    net: PneumoniaNet,
    config: RunConfig,
    preprocessing: Preprocessing,
    datamodule: XrayDataModule,
    split: PatientSplit,
    listed_types: dict[str, int] | None = None,
) -> ModelBundle:
    """Threshold (and optional temperature, and the type threshold) from the validation split,
    and the applicability guard from the training split with its cut-off on validation; never
    from test."""
    bundle = ModelBundle(
        model=net,
        preprocessing=preprocessing,
        config=config.to_dict(),
        data_fingerprint=records_fingerprint([*split.train, *split.val], "trainval"),
        package_version=__version__,
    )
    fit_on_validation(
        bundle,
        datamodule.val_records,
        rule=config.train.threshold_rule,
        min_sensitivity=config.train.min_sensitivity,
        calibrate=config.train.calibrate,
        batch_size=config.data.batch_size,
        num_workers=config.data.num_workers,
        listed_types=listed_types,
    )
    fit_guard(
        bundle,
        split.train,
        split.val,
        fitted_on="its training split (patient-level)",
        batch_size=config.data.batch_size,
    )
    bundle.model.cpu()
    return bundle


def _write_summary(paths, config, progress, bundle, datamodule, seconds, root) -> None:
    skipped = sorted(
        {i for key in ("stage1", "stage2") for i in progress.get(key, {}).get("skipped_files", [])}
    )
    summary = {
        "run_dir": str(paths.root),
        "dataset": str(root),
        "backbone": config.model.backbone,
        "weights": config.model.weights,
        "train_images": len(datamodule.train_records),
        "val_images": len(datamodule.val_records),
        "skipped_train_files": [str(datamodule.train_records[i].path) for i in skipped],
        "stages": {k: progress[k] for k in ("stage1", "stage2") if k in progress},
        "threshold": bundle.threshold,
        "threshold_rule": bundle.threshold_rule,
        "temperature": bundle.temperature,
        "type_decision": bundle.type_decision.to_payload() if bundle.type_decision else None,
        "model_file": str(paths.final_model),
        "wall_seconds_this_invocation": round(seconds, 1),
        "package_version": __version__,
    }
    atomic_write_text(paths.root / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
