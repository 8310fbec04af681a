"""Choose the decision threshold on validation data; it is then stored with the model.

A threshold is a value t such that `y_prob >= t` predicts PNEUMONIA. Choosing it on the test
set would make every test metric at that threshold optimistic, so callers pass validation data.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_curve

from pneumonia_cxr.evaluation import THRESHOLD_RULES
from pneumonia_cxr.evaluation.calibration import check_binary_inputs, fit_temperature
from pneumonia_cxr.model.decision import OperatingPoint, probability


def _candidate_counts(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Candidate thresholds (ROC score values, inf clipped to 1.0) with their exact TP/FP counts.

    The counts are redone for each clipped value rather than taken from roc_curve, because
    clipping inf to 1.0 changes the predictions whenever some score equals 1.0. Integer counts
    also make the tie-breaking exact, free of floating-point rounding.
    """
    _, _, scores = roc_curve(labels, probs, drop_intermediate=False)
    thresholds = np.unique(np.minimum(scores, 1.0))
    positives = np.sort(probs[labels == 1])
    negatives = np.sort(probs[labels == 0])
    # Number of scores >= t is n - (number of scores < t).
    true_positives = positives.size - np.searchsorted(positives, thresholds, side="left")
    false_positives = negatives.size - np.searchsorted(negatives, thresholds, side="left")
    return thresholds, true_positives, false_positives


def _best(thresholds: np.ndarray, keys: tuple[np.ndarray, ...]) -> float:
    """Threshold maximising keys in priority order (first key most important)."""
    order = np.lexsort(tuple(reversed(keys)))  # lexsort treats the LAST key as primary
    return float(thresholds[order[-1]])


def _midway_below(chosen: float, thresholds: np.ndarray) -> float:
    """Move a threshold that sits exactly on a validation score halfway down to the next lower
    score: the same validation decisions, but re-scoring the boundary image (another engine,
    batch or thread count moves a probability by about 1e-6) can no longer flip it."""
    lower = thresholds[thresholds < chosen]
    return float((chosen + lower.max()) / 2) if lower.size else chosen


def choose_threshold(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    rule: str = "max_specificity_at_sensitivity",
    min_sensitivity: float = 0.95,
) -> float:
    """Pick the operating threshold by a named rule.

    Rules:
        max_specificity_at_sensitivity: among thresholds with sensitivity >= min_sensitivity, the
            most specific one (ties: higher sensitivity, then higher threshold). Screening for
            pneumonia in children tolerates false alarms better than missed cases.
        youden: maximises Youden's J = sensitivity + specificity - 1 = TPR - FPR (Youden 1950);
            ties are broken the same way.
        fixed_0.5: 0.5, the naive default, kept for comparison with the reference.

    Args:
        y_true: Validation labels (1 = PNEUMONIA); both classes must be present.
        y_prob: Validation probabilities of PNEUMONIA.
        rule: One of THRESHOLD_RULES.
        min_sensitivity: Sensitivity floor for the first rule, in [0, 1].

    Every score-based rule returns its chosen validation score moved halfway down to the next
    lower one (same validation decisions, robust to re-scoring noise).

    Returns:
        A threshold in [0, 1]; predict PNEUMONIA when y_prob >= threshold.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(
            f"unknown threshold rule {rule!r}; valid rules: {', '.join(THRESHOLD_RULES)}"
        )
    if not 0.0 <= min_sensitivity <= 1.0:
        raise ValueError(f"min_sensitivity must be in [0, 1], got {min_sensitivity!r}")
    labels, probs = check_binary_inputs(y_true, y_prob, require_both_classes=True)
    if rule == "fixed_0.5":
        return 0.5
    thresholds, tp, fp = _candidate_counts(labels, probs)
    return _midway_below(_chosen_score(rule, thresholds, tp, fp, min_sensitivity), thresholds)


def _chosen_score(
    rule: str, thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray, min_sensitivity: float
) -> float:
    """The validation score a score-based rule picks (before it is moved off that score)."""
    n_positive, n_negative = int(tp.max()), int(fp.max())  # the lowest candidate counts all
    if rule == "youden":
        # TPR - FPR scaled by n_positive * n_negative: an exact integer, so ties are real ties.
        youden_scaled = tp * n_negative - fp * n_positive
        return _best(thresholds, (youden_scaled, tp, thresholds))
    # The lowest candidate (minimum score) has sensitivity 1, so the feasible set is never empty.
    feasible = tp / n_positive >= min_sensitivity
    if rule == "max_threshold_at_sensitivity":
        return float(thresholds[feasible].max())
    # Highest specificity = fewest false positives.
    return _best(thresholds[feasible], (-fp[feasible], tp[feasible], thresholds[feasible]))


def fit_operating_point(
    labels: ArrayLike,
    logits: ArrayLike,
    *,
    rule: str,
    min_sensitivity: float | None,
    calibrate: bool = True,
) -> OperatingPoint:
    """The one fit of where P(PNEUMONIA) is cut: the temperature (when `calibrate`), then the
    threshold by `rule` on the calibrated probabilities. Training (on validation), `calibrate`
    and `adapt` (on a site) all call it."""
    labels, logits = np.asarray(labels), np.asarray(logits, dtype=np.float64)
    temperature = fit_temperature(logits, labels) if calibrate else 1.0
    threshold = choose_threshold(labels, probability(logits, temperature), rule, min_sensitivity)
    return OperatingPoint(
        threshold=float(threshold),
        rule=rule,
        min_sensitivity=min_sensitivity,
        temperature=float(temperature),
        fitted_n=len(labels),
    )
