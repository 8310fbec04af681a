"""Make a model work at a new site (`pneumonia-cxr adapt`): fine-tune, calibrate, check.

The site's labelled images are split by patient (Kermany names, a `patients.csv`, or by image
with a warning) into a half to fit and a half to check. The model as it is is measured on the
checking half; it is then fine-tuned from its own weights on the fitting half (the small-data
recipe `ADAPT_RECIPE`), its threshold, temperature and applicability guard are refitted on the
whole fitting half (`calibrate_model`: a threshold chosen on the fine-tuning run's small
validation part alone proved far off on the other half), and it is measured again on the
checking half, which no step has seen, by the one held-out measure (`site.held_out`). The
adapted file records the site, the recipe, its parent and both sets of held-out figures, and
its intended-use record describes the site's images, so that a model adapted on adults' films
accepts adults.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.config import ADAPT_MIN_SENSITIVITY, RunConfig
from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.site import PATIENTS_FILE, list_site_images, read_patients_csv, site_folds
from pneumonia_cxr.model.model_file import load_model
from pneumonia_cxr.run_folder import CONFIG_FILE
from pneumonia_cxr.site import ADAPT_RECIPE
from pneumonia_cxr.site.calibrate import calibrate_model, check_enough_images, class_counts
from pneumonia_cxr.site.held_out import (
    HeldOut,
    format_held_out,
    held_out_figures,
    write_site_model,
)
from pneumonia_cxr.training.init_from import adopt_parent

log = logging.getLogger(__name__)

RUN_NAME = "finetune"


@dataclass
class AdaptOutcome:
    """What `adapt_site` measured and wrote."""

    before: HeldOut
    after: HeldOut
    record: dict[str, Any]
    output: Path


def _held_out(model_path: Path, records: list[ImageRecord], batch_size: int) -> HeldOut:
    """The held-out measure with PyTorch on the CPU (`adapt` offers no --device): the file is
    scored as written, with no export cached for an output rewritten moments later."""
    return held_out_figures(
        model_path, records, device="cpu", engine="torch", batch_size=batch_size
    )


def _link_fit_folder(records: list[ImageRecord], folder: Path, patients: dict[str, str]) -> Path:
    """The fitting half as a site folder of links (the training pipeline reads folders), with
    the site's patients.csv rows of those images."""
    for record in records:
        target = folder / CLASS_NAMES[record.label] / record.path.name
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


def _fine_tune(parent: Path, fit_folder: Path, work: Path, seed: int, batch_size: int) -> Path:
    """Train (or resume exactly) the fine-tuning run; its final model file."""
    from pneumonia_cxr.training.run import train

    run = work / RUN_NAME
    final = run / "final_pneumonia_model.pt"
    if final.is_file():
        return final
    if (run / CONFIG_FILE).is_file():
        log.info("resuming the fine-tuning run in %s", run)
        return train(resume=run) / "final_pneumonia_model.pt"
    config = RunConfig()
    config.data.dataset_path = str(fit_folder)
    config.data.batch_size = batch_size
    adopt_parent(config, parent)
    if load_model(parent).has_type_head:
        config.model.type_head = "auto"
    config.model.unfreeze_layers = ADAPT_RECIPE["unfreeze_layers"]
    for key in ("stage1_epochs", "stage2_epochs", "stage1_lr", "stage2_lr"):
        setattr(config.train, key, ADAPT_RECIPE[key])
    config.train.seed, config.train.output_dir, config.train.run_name = seed, str(work), RUN_NAME
    return train(config) / "final_pneumonia_model.pt"


def adapt_site(
    model_path: str | Path,
    site: str | Path,
    output: str | Path,
    *,
    work_dir: str | Path | None = None,
    split: str = "test",
    rule: str = "max_specificity_at_sensitivity",
    min_sensitivity: float = ADAPT_MIN_SENSITIVITY,
    seed: int = 0,
    force: bool = False,
    batch_size: int = 32,
) -> AdaptOutcome:
    """`pneumonia-cxr adapt`: a site folder and a model in, an adapted model file out.

    Refuses what `calibrate` refuses (a class missing, fewer than `MIN_IMAGES_PER_CLASS`
    images of a class in either half without `force`, an unreadable image, a model that does
    not separate the fitting half after fine-tuning, without `force`). Re-running the same
    command resumes the fine-tuning.
    """
    model_path, site, output = Path(model_path), Path(site), Path(output)
    work = Path(work_dir) if work_dir is not None else output.with_name(output.stem + "_adapt")
    records = list_site_images(site, split)
    patients = read_patients_csv(site)
    fit, check = site_folds(records, 2, seed, patients)
    check_enough_images(fit, force, "the fitting half")
    check_enough_images(check, force, "the checking half")
    before = _held_out(model_path, check, batch_size)
    fit_folder = _link_fit_folder(fit, work / "fit_images", patients)
    tuned = _fine_tune(model_path, fit_folder, work, seed, batch_size)
    calibrate_model(
        tuned,
        fit,
        output,
        rule=rule,
        min_sensitivity=min_sensitivity,
        force=force,
        batch_size=batch_size,
        site=site,
    )
    after = _held_out(output, check, batch_size)
    bundle = load_model(output)
    parent = load_model(model_path)
    bundle.intended_use = replace(
        parent.intended_use,
        population=f"the images of the site it was adapted on ({site.name}: {len(records)} "
        "labelled images)",
        min_age_years=0.0,
        max_age_years=150.0,
    )
    record = {
        "images": {"fit": class_counts(fit), "check": class_counts(check)},
        "split": "by patient" if patients else "by patient where known",
        "recipe": ADAPT_RECIPE,
        "threshold_rule": rule,
        "min_sensitivity": min_sensitivity,
        "held_out_before": before.record(),
        "held_out_after": after.record(),
    }
    record = write_site_model(
        bundle, output, "adaptation", record, parent=model_path, records=records
    )
    return AdaptOutcome(before, after, record, output)


def format_adapt_report(outcome: AdaptOutcome) -> str:
    """What `adapt` prints: the checking half before and after, and the plain verdict."""
    images = outcome.record["images"]
    after = outcome.after.verdict
    return "\n".join(
        [
            f"site halves by patient: fit {images['fit']}, check {images['check']}",
            format_held_out("checking half, the model as it was", outcome.before),
            format_held_out("checking half, adapted", outcome.after),
            f"verdict on the checking half: {after['text']}"
            + ("" if after["useful"] else "; do not use the adapted model there either"),
            f"written: {outcome.output}",
        ]
    )
