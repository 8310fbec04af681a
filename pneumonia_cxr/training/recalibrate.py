"""A model measured and recalibrated on a site's own labelled images (`pneumonia-cxr calibrate`).

The weights stay as they are; what a site changes is the operating point: the decision
threshold (by the same rules as training, on the site's images), the temperature and the
out-of-distribution cut-off. Every image is scored once through the one inference path. The new
model file records what it was calibrated on (`extra["calibration"]`), so no report presents
the parent's test figures as its own.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.fingerprint import records_fingerprint
from pneumonia_cxr.data.split import file_sha256
from pneumonia_cxr.errors import EvaluationInputError
from pneumonia_cxr.evaluation.metrics import evaluate_predictions, wilson_interval
from pneumonia_cxr.evaluation.threshold import fit_operating_point
from pneumonia_cxr.inference.predictor import Predictor, RecordScores
from pneumonia_cxr.model.decision import OperatingPoint, decide, probability
from pneumonia_cxr.model.model_file import ModelBundle, load_model, save_model

log = logging.getLogger(__name__)

MIN_IMAGES_PER_CLASS = 30
"""Below this, a class's sensitivity or specificity has a CI about +-15 points or wider."""
MIN_SITE_AUC = 0.75
"""`calibrate`'s verdict: a new threshold can trade sensitivity for specificity, not add
separation. The model is called useful at a site only when the lower end of the 95% CI of its
site ROC AUC reaches this (CheXNet's own-hospital AUC for pneumonia was 0.768; below it a
recalibrated threshold promises a sensitivity bought with most of the specificity)."""


class SiteNotUsefulError(EvaluationInputError):
    """The model does not separate the site's classes well enough to recalibrate it."""


def site_verdict(before: dict[str, Any]) -> dict[str, Any]:
    """Whether the model, as it is, separates this site's classes (`MIN_SITE_AUC` rule)."""
    auc = before["roc_auc"]
    low = auc["ci_low"] if auc["ci_low"] is not None else auc["value"]
    useful = low is not None and low >= MIN_SITE_AUC
    return {
        "useful": bool(useful),
        "site_auc": auc["value"],
        "site_auc_ci": [auc["ci_low"], auc["ci_high"]],
        "rule": f"the lower end of the 95% CI of the site ROC AUC >= {MIN_SITE_AUC}",
        "text": (
            f"useful here: site ROC AUC {auc['value']:.3f} (95% CI from {low:.3f})"
            if useful
            else f"NOT useful here: site ROC AUC {auc['value']:.3f} (95% CI from {low:.3f}, "
            f"below {MIN_SITE_AUC}); recalibrating cannot fix that, fine-tuning on the site's "
            "images can"
        ),
    }


def adapt_suggestion(model_path: Path, site: str | Path) -> str:
    return (
        f"fine-tune it on this site's labelled images first: pneumonia-cxr train --init_from "
        f"{model_path} --dataset_path {site} --stage1_epochs 1 --stage2_epochs 3 "
        "--stage2_lr 3e-5 --unfreeze_layers -1, then calibrate the result on other images of "
        "the site"
    )


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


def score_site(predictor: Predictor, records: Sequence[ImageRecord], batch_size: int = 32):
    """Every image scored once; an unreadable image is an error naming it, nothing written."""
    scored = predictor.score_records(records, batch_size=batch_size)
    if scored.errors:
        listed = "; ".join(f"{records[i].path}: {e}" for i, e in list(scored.errors.items())[:5])
        raise EvaluationInputError(
            f"{len(scored.errors)} site image(s) cannot be read ({listed}); fix or remove them "
            "so that the calibration knows exactly which images it stands on"
        )
    return scored


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
        verdict=site_verdict(before),
        sensitivity=hits / int(positives.sum()),
        sensitivity_ci=wilson_interval(hits, int(positives.sum())),
        specificity=float((decisions[negatives] == 0).mean()),
    )


def refit_site_guard(
    bundle: ModelBundle,
    records: Sequence[ImageRecord],
    device: str | None,
    batch_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The applicability guard refitted on the site's own images (a third each: densities,
    score normalisation, cut-off at the guard's quantile), so that the calibrated model accepts
    its own site and still flags what is unlike it. Returns what the record keeps."""
    from pneumonia_cxr.training.guard_fit import fit_guard

    order = np.random.default_rng(seed).permutation(len(records))
    third = max(len(records) // 3, 1)
    cut_part = [records[i] for i in order[:third]]
    fit_part = [records[i] for i in order[third:]]
    guard = fit_guard(
        bundle,
        fit_part,
        cut_part,
        fitted_on=f"the calibration site ({len(records)} images)",
        fit_images=max(len(fit_part) // 2, 1),
        norm_images=len(fit_part),
        batch_size=batch_size,
        device=device,
    )
    assert guard is not None
    return {
        "layers": list(guard.layers),
        "cutoff": guard.cutoff,
        "quantile": guard.quantile,
        "images": {
            "fit": len(fit_part) - len(fit_part) // 2,
            "normalise": len(fit_part) // 2,
            "cutoff": len(cut_part),
        },
    }


def refit_site_type(
    bundle: ModelBundle, scored: RecordScores, site: str | Path | None
) -> dict[str, Any] | None:
    """The type threshold refitted by the training rule when the site's pneumonia images carry
    both types (names, type folders or a labels.csv); left alone otherwise. None: no type
    head."""
    if bundle.type_decision is None or scored.scores.p_viral is None:
        return None
    from pneumonia_cxr.data.pneumonia_types import read_labels_csv, type_labels
    from pneumonia_cxr.training.operating_point import fit_type_decision

    listed = read_labels_csv(site) if site is not None else {}
    types = np.asarray(type_labels(scored.kept, listed))
    if len(set(types[types >= 0].tolist())) < 2:
        return {"refitted": False, "why": "the site's pneumonia images do not carry both types"}
    parent = bundle.type_decision.threshold
    bundle.type_decision = fit_type_decision(types, scored.scores.p_viral, "the calibration site")
    return {"refitted": True, "threshold": bundle.type_decision.threshold, "parent": parent}


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
            "--force "
            "to write the recalibrated file anyway (it will carry this verdict)"
        )
    result.calibration = {
        "verdict": result.verdict,
        "site_fingerprint": records_fingerprint(records, "site"),
        "images": class_counts(records),
        "threshold_rule": rule,
        "min_sensitivity": min_sensitivity,
        "site_sensitivity": result.sensitivity,
        "site_sensitivity_ci": list(result.sensitivity_ci),
        "site_specificity": result.specificity,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "parent_sha256": file_sha256(model_path),
        "parent_file": model_path.name,
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
        result.calibration["guard"] = refit_site_guard(bundle, records, device, batch_size)
    result.calibration["type"] = refit_site_type(bundle, scored, site)
    bundle.set_operating_point(result.point)  # min_sensitivity: this threshold's target
    if bundle.ood is not None and result.ood_cutoff is not None:
        bundle.ood.cutoff = result.ood_cutoff
    bundle.extra = {
        **bundle.extra,
        "calibration": result.calibration,
    }
    save_model(bundle, output, half=bundle.stored_half)
    return result


def held_out_figures(
    model_path: str | Path,
    records: Sequence[ImageRecord],
    *,
    device: str | None = None,
    batch_size: int = 32,
) -> dict:
    """Sensitivity and specificity (Wilson CIs) of a model file on images it was not fitted on."""
    predictor = Predictor.open(model_path, device=device)
    scored = score_site(predictor, records, batch_size)
    labels, decisions = scored.labels, scored.scores.decisions
    hits = int(decisions[labels == 1].sum())
    passes = int((decisions[labels == 0] == 0).sum())
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    return {
        "n": len(labels),
        "sensitivity": hits / n_pos if n_pos else None,
        "sensitivity_ci": list(wilson_interval(hits, n_pos)) if n_pos else None,
        "specificity": passes / n_neg if n_neg else None,
        "specificity_ci": list(wilson_interval(passes, n_neg)) if n_neg else None,
        "labels": labels.tolist(),
        "decisions": decisions.tolist(),
        "probabilities": scored.scores.probabilities.tolist(),
    }


@dataclass
class SiteOutcome:
    """`calibrate_site`'s result: the fit, the images it stands on, the held-out check."""

    result: SiteCalibration
    records: list[ImageRecord]
    held_out: dict[str, Any] | None = None


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


def format_held_out(held: dict[str, Any], fold: int, target: float) -> str:
    return (
        f"held-out fold {fold} ({held['n']} images of other patients): sensitivity "
        f"{_pct(held['sensitivity'], held['sensitivity_ci'])} (target {target}), "
        f"specificity {_pct(held['specificity'], held['specificity_ci'])}"
    )


def _pct(value: float, interval: Sequence[float] | None = None) -> str:
    text = f"{100 * value:.1f}%"
    return text + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def _rate(entry: dict[str, Any]) -> str:
    """A metrics.json rate entry ({value, ci_low, ci_high}) as "95.1% [93.0, 96.8]"."""
    return _pct(entry["value"], (entry["ci_low"], entry["ci_high"]))


def format_report(
    result: SiteCalibration, records: Sequence[ImageRecord], checked: bool = False
) -> str:
    """What `calibrate` prints: the model before, what changed, and what the new one promises."""
    before, at = result.before, result.before["at_threshold"]
    counts = ", ".join(f"{n} {name}" for name, n in class_counts(records).items())
    low, high = result.sensitivity_ci
    lines = [
        f"site: {len(records)} images ({counts})",
        f"verdict: {result.verdict['text']} (rule: {result.verdict['rule']})",
        f"the model as it is (threshold {before['threshold']:.4f}): ROC AUC "
        f"{before['roc_auc']['value']:.3f} [{before['roc_auc']['ci_low']:.3f}, "
        f"{before['roc_auc']['ci_high']:.3f}], sensitivity "
        + _rate(at["sensitivity"])
        + ", specificity "
        + _rate(at["specificity"]),
        f"calibrated ({result.calibration.get('threshold_rule')}, target sensitivity "
        f"{result.calibration.get('min_sensitivity')}): threshold {result.point.threshold:.4f}, "
        f"temperature {result.point.temperature:.3f}"
        + (f", OOD cut-off {result.ood_cutoff:.3f}" if result.ood_cutoff is not None else ""),
        f"  on these images: sensitivity {_pct(result.sensitivity, result.sensitivity_ci)} "
        f"(95% CI width {100 * (high - low):.1f} points), specificity "
        f"{_pct(result.specificity)}",
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
