"""The end of training: fit the model's operating point (threshold, temperature) on validation.

A training step that changes the model file, so it lives with training; the rules themselves
(`evaluation.threshold.choose_threshold`) and the temperature fit are evaluation's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.pneumonia_types import type_labels
from pneumonia_cxr.evaluation.threshold import choose_threshold, fit_operating_point
from pneumonia_cxr.inference.predictor import Predictor, RecordScores
from pneumonia_cxr.model.decision import TYPE_RULE, TypeDecision
from pneumonia_cxr.model.model_file import ModelBundle
from pneumonia_cxr.model.outputs import TYPE


def fit_on_validation(
    bundle: ModelBundle,
    val_records: Sequence[ImageRecord],
    *,
    rule: str,
    min_sensitivity: float,
    calibrate: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | None = None,
    listed_types: dict[str, int] | None = None,
) -> RecordScores:
    """Store in `bundle` the threshold (and temperature) fitted on the validation records.

    The records are scored through the one inference path (`Predictor`), exactly as
    `evaluate` and `predict` will score images later. Returns the raw validation scores
    (logits, OOD scores) with the labels of the readable records. A model with a type head
    also gets its type threshold (`TYPE_RULE`) from the validation pneumonia images of known
    type (`data.pneumonia_types`; `listed_types` from a labels.csv).
    """
    if bundle.has_type_head and bundle.type_decision is None:
        bundle.type_decision = TypeDecision()  # provisional: the engine reports type logits
    predictor = Predictor.from_bundle(bundle, device, source="validation fit")
    result = predictor.score_records(val_records, batch_size=batch_size, num_workers=num_workers)
    if not result.kept:
        raise ValueError("no validation image could be read: cannot choose a threshold")
    bundle.set_operating_point(
        fit_operating_point(
            result.labels,
            result.scores.logits,
            rule=rule,
            min_sensitivity=min_sensitivity,
            calibrate=calibrate,
        )
    )
    if bundle.has_type_head:
        bundle.type_decision = fit_type_decision(
            type_labels(result.kept, listed_types),
            result.scores.answers.get(TYPE.name),
            "validation",
        )
    return result


def fit_type_decision(types, p_viral, where: str) -> TypeDecision:
    """The type threshold by `TYPE_RULE` on the images of known type (-1 left out)."""
    types = np.asarray(types)
    known = types >= 0
    if len(set(types[known].tolist())) < 2:
        raise ValueError(
            f"{where}: pneumonia images of both types are needed to choose the type threshold"
        )
    threshold = choose_threshold(types[known], np.asarray(p_viral)[known], TYPE_RULE)
    return TypeDecision(
        threshold=threshold, rule=TYPE_RULE, fitted_on=f"{where} ({int(known.sum())} images)"
    )
