"""A model measured and recalibrated on a site's own labelled images (`pneumonia-cxr calibrate`).

The weights stay as they are; what a site changes is the operating point: the decision
threshold (by the same rules as training, on the site's images), the temperature and the
out-of-distribution cut-off. Every image is scored once through the one inference path. The new
model file records what it was calibrated on (`extra["calibration"]`), so no report presents
the parent's test figures as its own. With `check_fold`, the new file is measured on other
patients by the one held-out measure (`site.held_out`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.errors import EvaluationInputError
from pneumonia_cxr.evaluation.metrics import Estimate, evaluate_predictions, wilson_interval
from pneumonia_cxr.evaluation.threshold import fit_operating_point
from pneumonia_cxr.inference.predictor import Predictor, RecordScores
from pneumonia_cxr.model.decision import OperatingPoint, decide, probability
from pneumonia_cxr.model.model_file import ModelBundle, load_model
from pneumonia_cxr.site import MIN_IMAGES_PER_CLASS
from pneumonia_cxr.site.held_out import (
    HeldOut,
    adapt_suggestion,
    format_interval,
    held_out_figures,
    score_site,
    site_verdict,
    write_site_model,
)
from pneumonia_cxr.site.refit import refit_site_guard, refit_site_type


class SiteNotUsefulError(EvaluationInputError):
    """The model does not separate the site's classes well enough to recalibrate it."""


@dataclass
class SiteCalibration:
    """What `calibrate` found: the model before and after, on the site's images."""

    before: dict[str, Any]
    """metrics.json-style figures at the parent's threshold and temperature."""
    point: OperatingPoint
    """The threshold and temperature fitted on the site."""
    ood_cutoff: float | None
    verdict: dict[str, Any]
    """`site_verdict` of the model as it is."""
    sensitivity: float
    """Site sensitivity at the new threshold (what the threshold promises)."""
    sensitivity_ci: tuple[float, float]
    """Its Wilson interval: the fitted threshold puts these images' sensitivity at or near
    100%, where a bootstrap interval shrinks to the point."""
    specificity: float
    calibration: dict[str, Any] = field(default_factory=dict)
    """The record stored in the new model file."""


def class_counts(records: Sequence[ImageRecord]) -> dict[str, int]:
    return {name: sum(r.label == i for r in records) for i, name in enumerate(CLASS_NAMES)}


def check_enough_images(records: Sequence[ImageRecord], force: bool, where: str) -> None:
    """Refuse a site too small to promise anything, unless `force`."""
    counts = class_counts(records)
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise EvaluationInputError(
            f"{where}: no {' or '.join(empty)} image; calibration needs both classes"
        )
    small = {name: n for name, n in counts.items() if n < MIN_IMAGES_PER_CLASS}
    if small and not force:
        raise EvaluationInputError(
            f"{where}: only {small} image(s); at least {MIN_IMAGES_PER_CLASS} per class are "
            "needed for a threshold that means something (the sensitivity CI would be wider "
            "than +-15 points). Add images, or pass --force to calibrate anyway"
        )


def fit_site(
    bundle: ModelBundle,
    scored: RecordScores,
    *,
    rule: str,
    min_sensitivity: float,
    n_resamples: int = 2000,
) -> SiteCalibration:
    """Temperature, threshold and OOD cut-off fitted on the site's scores."""
    labels, logits = scored.labels, scored.scores.logits
    before = evaluate_predictions(
        labels, scored.scores.probabilities, bundle.threshold, bundle.threshold_rule, n_resamples
    )
    point = fit_operating_point(labels, logits, rule=rule, min_sensitivity=min_sensitivity)
    decisions = decide(probability(logits, point.temperature), point.threshold)
    positives, negatives = labels == 1, labels == 0
    hits = int(decisions[positives].sum())
    ood = scored.scores.ood_scores
    cutoff = None
    if bundle.ood is not None and np.isfinite(ood).all():
        cutoff = float(np.quantile(ood, bundle.ood.quantile))
    return SiteCalibration(
        before=before,
        point=point,
        ood_cutoff=cutoff,
        verdict=site_verdict(Estimate.from_dict(before["roc_auc"])),
        sensitivity=hits / int(positives.sum()),
        sensitivity_ci=wilson_interval(hits, int(positives.sum())),
        specificity=float((decisions[negatives] == 0).mean()),
    )


def calibrate_model(
    model_path: str | Path,
    records: Sequence[ImageRecord],
    output: str | Path,
    *,
    rule: str,
    min_sensitivity: float,
    force: bool = False,
    device: str | None = None,
    batch_size: int = 32,
    n_resamples: int = 2000,
    site: str | Path | None = None,
) -> SiteCalibration:
    """Score, fit, and write the calibrated model file; nothing is written on any error."""
    model_path = Path(model_path)
    check_enough_images(records, force, f"the site ({Path(records[0].path).parents[1]})")
    bundle = load_model(model_path)
    predictor = Predictor.from_bundle(bundle, device, model_path, engine="auto")
    scored = score_site(predictor, records, batch_size)
    result = fit_site(
        bundle, scored, rule=rule, min_sensitivity=min_sensitivity, n_resamples=n_resamples
    )
    if not result.verdict["useful"] and not force:
        raise SiteNotUsefulError(
            f"{result.verdict['text']}. Nothing was written. To use the model at this site, "
            f"{adapt_suggestion(model_path, site or Path(records[0].path).parents[1])}; or pass "
            "--force to write the recalibrated file anyway (it will carry this verdict)"
        )
    record = {
        "verdict": result.verdict,
        "images": class_counts(records),
        "threshold_rule": rule,
        "min_sensitivity": min_sensitivity,
        "site_sensitivity": result.sensitivity,
        "site_sensitivity_ci": list(result.sensitivity_ci),
        "site_specificity": result.specificity,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "parent_threshold": bundle.threshold,
        "parent_temperature": bundle.temperature,
        "forced": bool(
            force
            and (
                min(class_counts(records).values()) < MIN_IMAGES_PER_CLASS
                or not result.verdict["useful"]
            )
        ),
    }
    if bundle.guard is not None:
        record["guard"] = refit_site_guard(bundle, records, device, batch_size)
    record["type"] = refit_site_type(bundle, scored, site)
    bundle.set_operating_point(result.point)  # min_sensitivity: this threshold's target
    if bundle.ood is not None and result.ood_cutoff is not None:
        bundle.ood.cutoff = result.ood_cutoff
    result.calibration = write_site_model(
        bundle, output, "calibration", record, parent=model_path, records=records
    )
    return result


@dataclass
class SiteOutcome:
    """`calibrate_site`'s result: the fit, the images it stands on, the held-out check."""

    result: SiteCalibration
    records: list[ImageRecord]
    held_out: HeldOut | None = None


def calibrate_site(
    model_path: str | Path,
    site: str | Path,
    output: str | Path,
    *,
    split: str = "test",
    rule: str,
    min_sensitivity: float,
    force: bool = False,
    check_fold: int | None = None,
    folds: int = 2,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 32,
) -> SiteOutcome:
    """`pneumonia-cxr calibrate`: a site folder in, a calibrated model file out. With
    `check_fold`, the site is split into `folds` by patient, the fit uses the other folds and
    the new file is measured on that one (images of patients it never saw)."""
    from pneumonia_cxr.data.site import list_site_images, read_patients_csv, site_folds

    records = list_site_images(site, split)
    check: list[ImageRecord] = []
    if check_fold is not None:
        if not 0 <= check_fold < folds:
            raise EvaluationInputError(f"--check_fold must be in 0..{folds - 1}, not {check_fold}")
        parts = site_folds(records, folds, seed, read_patients_csv(site))
        check = parts[check_fold]
        records = [r for k, part in enumerate(parts) if k != check_fold for r in part]
        check_enough_images(check, force, f"fold {check_fold}")
    result = calibrate_model(
        model_path,
        records,
        output,
        rule=rule,
        min_sensitivity=min_sensitivity,
        force=force,
        device=device,
        batch_size=batch_size,
        site=site,
    )
    try:
        held = (
            held_out_figures(output, check, device=device, batch_size=batch_size) if check else None
        )
    except Exception:
        Path(output).unlink(missing_ok=True)  # an error means nothing written, as documented
        raise
    return SiteOutcome(result, list(records), held)


def format_report(
    result: SiteCalibration, records: Sequence[ImageRecord], checked: bool = False
) -> str:
    """What `calibrate` prints: the model before, what changed, and what the new one promises."""
    before, at = result.before, result.before["at_threshold"]
    counts = ", ".join(f"{n} {name}" for name, n in class_counts(records).items())
    low, high = result.sensitivity_ci
    promised = Estimate(result.sensitivity, low, high)
    lines = [
        f"site: {len(records)} images ({counts})",
        f"verdict: {result.verdict['text']} (rule: {result.verdict['rule']})",
        f"the model as it is (threshold {before['threshold']:.4f}): ROC AUC "
        f"{format_interval(Estimate.from_dict(before['roc_auc']), percent=False)}, sensitivity "
        f"{format_interval(Estimate.from_dict(at['sensitivity']))}, specificity "
        f"{format_interval(Estimate.from_dict(at['specificity']))}",
        f"calibrated ({result.calibration.get('threshold_rule')}, target sensitivity "
        f"{result.calibration.get('min_sensitivity')}): threshold {result.point.threshold:.4f}, "
        f"temperature {result.point.temperature:.3f}"
        + (f", OOD cut-off {result.ood_cutoff:.3f}" if result.ood_cutoff is not None else ""),
        f"  on these images: sensitivity {format_interval(promised)} "
        f"(95% CI width {100 * (high - low):.1f} points), specificity "
        f"{format_interval(Estimate(result.specificity))}",
    ]
    kind = result.calibration.get("type")
    if kind:
        lines.append(
            f"  type threshold refitted on the site: {kind['threshold']:.4f} (was "
            f"{kind['parent']:.4f})"
            if kind["refitted"]
            else f"  type threshold left as it was: {kind['why']}"
        )
    if not checked:
        lines.append(
            "  (fitted and measured on the same images: check it on other patients, e.g. "
            "--check_fold 0 with --folds 2, before relying on it)"
        )
    return "\n".join(lines)
