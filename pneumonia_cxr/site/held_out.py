"""What a site's own images say about a model, said one way by `calibrate` and `adapt`.

Held-out figures (images of patients that no step fitted on) are measured as `evaluate`
measures a test split: `evaluation.metrics.evaluate_predictions`, a class-stratified percentile
bootstrap over the images (2,000 resamples, seed 0). The bootstrap, not a Wilson interval,
because the site verdict is a statement about ROC AUC (`site_verdict`), which a Wilson interval
of a proportion cannot bound; one set of resamples then bounds AUC, sensitivity and specificity
alike, in metrics.json's layout, so a site's held-out figures read like the test report. What
it costs: at 0 or n successes the percentile interval shrinks to the point (every positive of
a fold found reads 100.0% [100.0, 100.0]), and a patient's several films are resampled one by
one, so the interval is somewhat narrow; read a held-out figure with its fold's size.

Here too: the one interval formatter of both reports, the one suggestion where a threshold
cannot help, and the one write of a site's model file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.fingerprint import records_fingerprint
from pneumonia_cxr.data.split import file_sha256
from pneumonia_cxr.errors import EvaluationInputError
from pneumonia_cxr.evaluation.metrics import BinaryMetrics, Estimate, evaluate_predictions
from pneumonia_cxr.inference.predictor import Predictor, RecordScores
from pneumonia_cxr.model.decision import decide
from pneumonia_cxr.model.model_file import ModelBundle, save_model
from pneumonia_cxr.site import MIN_SITE_AUC


def score_site(
    predictor: Predictor, records: Sequence[ImageRecord], batch_size: int = 32
) -> RecordScores:
    """Every image scored once; an unreadable image is an error naming it, nothing written."""
    scored = predictor.score_records(records, batch_size=batch_size)
    if scored.errors:
        listed = "; ".join(f"{records[i].path}: {e}" for i, e in list(scored.errors.items())[:5])
        raise EvaluationInputError(
            f"{len(scored.errors)} site image(s) cannot be read ({listed}); fix or remove them "
            "so that the calibration knows exactly which images it stands on"
        )
    return scored


def site_verdict(auc: Estimate) -> dict[str, Any]:
    """Whether the model separates this site's classes (`MIN_SITE_AUC` rule), from its site
    ROC AUC with its bootstrap interval."""
    low = auc.ci_low if auc.ci_low is not None else auc.value
    useful = low is not None and low >= MIN_SITE_AUC
    return {
        "useful": bool(useful),
        "site_auc": auc.value,
        "site_auc_ci": [auc.ci_low, auc.ci_high],
        "rule": f"the lower end of the 95% CI of the site ROC AUC >= {MIN_SITE_AUC}",
        "text": (
            f"useful here: site ROC AUC {auc.value:.3f} (95% CI from {low:.3f})"
            if useful
            else f"NOT useful here: site ROC AUC {auc.value:.3f} (95% CI from {low:.3f}, "
            f"below {MIN_SITE_AUC}); recalibrating cannot fix that, fine-tuning on the site's "
            "images can"
        ),
    }


@dataclass(frozen=True)
class HeldOut:
    """A model file's figures on images it was not fitted on, at its own threshold."""

    metrics: BinaryMetrics
    flagged: int
    """Images the model's applicability checks flag."""
    verdict: dict[str, Any]
    """`site_verdict` of these images."""
    labels: list[int] = field(repr=False)
    decisions: list[int] = field(repr=False)
    probabilities: list[float] = field(repr=False)

    def record(self) -> dict[str, Any]:
        """What a model file keeps: the figures, without the images."""
        return {
            "n": self.metrics.n,
            "threshold": self.metrics.threshold,
            "roc_auc": asdict(self.metrics.roc_auc),
            "sensitivity": asdict(self.metrics.sensitivity),
            "specificity": asdict(self.metrics.specificity),
            "flagged": self.flagged,
            "verdict": self.verdict,
        }

    def to_json(self) -> dict[str, Any]:
        """`calibrate --check_output`: the record and each image's label, decision and
        probability (enough to pool folds)."""
        images = {"labels": self.labels, "decisions": self.decisions}
        return {**self.record(), **images, "probabilities": self.probabilities}


def held_out_measure(
    labels: Sequence[int],
    probabilities: Sequence[float],
    threshold: float,
    rule: str,
    flags: Sequence[bool],
    n_resamples: int = 2000,
) -> HeldOut:
    """The held-out measure (module docstring) of probabilities no step fitted on these
    images' patients: a held-out fold's (`calibrate --check_fold`) or `adapt`'s out-of-fold
    predictions."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    metrics = evaluate_predictions(labels, probabilities, threshold, rule, n_resamples)
    typed = BinaryMetrics.from_dict(metrics)
    return HeldOut(
        metrics=typed,
        flagged=int(np.asarray(flags, dtype=bool).sum()),
        verdict=site_verdict(typed.roc_auc),
        labels=labels.tolist(),
        decisions=decide(probabilities, threshold).tolist(),
        probabilities=probabilities.tolist(),
    )


def held_out_figures(
    model_path: str | Path,
    records: Sequence[ImageRecord],
    *,
    device: str | None = None,
    engine: str = "auto",
    batch_size: int = 32,
    n_resamples: int = 2000,
) -> HeldOut:
    """The held-out measure of a model file on `records`, at its own threshold."""
    predictor = Predictor.open(model_path, engine=engine, device=device)
    scored = score_site(predictor, records, batch_size)
    decision, scores = predictor.decision, scored.scores
    return held_out_measure(
        scored.labels,
        scores.probabilities,
        decision.threshold,
        decision.rule,
        scores.ood_flags,
        n_resamples,
    )


def format_interval(estimate: Estimate, *, percent: bool = True) -> str:
    """ "95.1% [93.0, 96.8]" for a rate, "0.912 [0.880, 0.940]" for an AUC; the value alone
    where it has no interval, "n/a" where it is undefined."""
    scale, unit, digits = (100, "%", 1) if percent else (1, "", 3)
    if estimate.value is None:
        return "n/a"
    text = f"{scale * estimate.value:.{digits}f}{unit}"
    if estimate.ci_low is None or estimate.ci_high is None:
        return text
    return f"{text} [{scale * estimate.ci_low:.{digits}f}, {scale * estimate.ci_high:.{digits}f}]"


def format_held_out(name: str, held: HeldOut, target: float | None = None) -> str:
    """One report line of held-out figures; `target`: the sensitivity the threshold aimed at."""
    metrics = held.metrics
    aim = f" (target {target})" if target is not None else ""
    return (
        f"{name}: ROC AUC {format_interval(metrics.roc_auc, percent=False)}, sensitivity "
        f"{format_interval(metrics.sensitivity)}{aim}, specificity "
        f"{format_interval(metrics.specificity)} at threshold {metrics.threshold:.4f}; "
        f"{held.flagged} of {metrics.n} flagged"
    )


def adapt_suggestion(model_path: str | Path, site: str | Path) -> str:
    """What to run where the model does not separate a site's classes: `adapt`."""
    return (
        f"make it work there first: pneumonia-cxr adapt --model_path {model_path} "
        f"--dataset_path {site} --output adapted.pt (it fits a new head on frozen features of "
        "all of the site's images, estimates it out of fold by patient, and reports before and "
        "after)"
    )


def write_site_model(
    bundle: ModelBundle,
    output: str | Path,
    key: str,
    record: dict[str, Any],
    *,
    parent: str | Path,
    records: Sequence[ImageRecord],
) -> dict[str, Any]:
    """The one write of a calibrated or adapted model file: `record` under `extra[key]`, with
    what it stands on (the site's fingerprint, the parent's name and sha256), weights stored as
    the bundle stores them. The parent is hashed before the write, so an output that replaces
    it still names it. Returns the stored record."""
    parent = Path(parent)
    stored = {
        "site_fingerprint": records_fingerprint(records, "site"),
        **record,
        "parent_sha256": file_sha256(parent),
        "parent_file": parent.name,
    }
    bundle.extra = {**bundle.extra, key: stored}
    save_model(bundle, output, half=bundle.stored_half)
    return stored
