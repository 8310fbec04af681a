"""The end of training: fit the model's operating point (threshold, temperature) on validation.

A training step that changes the model file, so it lives with training; the rules themselves
(`evaluation.threshold.choose_threshold`) and the temperature fit are evaluation's.
"""

from __future__ import annotations

from collections.abc import Sequence

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.evaluation.calibration import fit_temperature
from pneumonia_cxr.evaluation.threshold import choose_threshold
from pneumonia_cxr.inference.predictor import Predictor, RecordScores
from pneumonia_cxr.model.decision import probability
from pneumonia_cxr.model.model_file import ModelBundle


def fit_operating_point(
    bundle: ModelBundle,
    val_records: Sequence[ImageRecord],
    *,
    rule: str,
    min_sensitivity: float,
    calibrate: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | None = None,
) -> RecordScores:
    """Store in `bundle` the threshold (and temperature) fitted on the validation records.

    The records are scored through the one inference path (`Predictor`), exactly as
    `evaluate` and `predict` will score images later. Returns the raw validation scores
    (logits, OOD scores) with the labels of the readable records.
    """
    predictor = Predictor.from_bundle(bundle, device, source="validation fit")
    result = predictor.score_records(val_records, batch_size=batch_size, num_workers=num_workers)
    if not result.kept:
        raise ValueError("no validation image could be read: cannot choose a threshold")
    labels, logits = result.labels, result.scores.logits
    bundle.temperature = fit_temperature(logits, labels) if calibrate else 1.0
    probs = probability(logits, bundle.temperature)
    bundle.threshold = choose_threshold(labels, probs, rule, min_sensitivity)
    bundle.threshold_rule = rule
    bundle.extra.update(val_n=len(labels), min_sensitivity=min_sensitivity)
    return result
