"""Metrics with stratified-bootstrap confidence intervals: the body of metrics.json.

Undefined ratios (0/0, e.g. precision when nothing is predicted positive) are float('nan') in
the numeric API (`threshold_metrics`) and None -- JSON null -- in `evaluate_predictions`, whose
result goes straight to `json.dump(..., allow_nan=False)`. A bootstrap resample in which a
statistic is undefined is left out of that statistic's interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

from pneumonia_cxr.evaluation.calibration import (
    check_binary_inputs,
    check_labels,
    expected_calibration_error,
)
from pneumonia_cxr.model.decision import decide

RATE_NAMES: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1")
BOOTSTRAP_METHOD = "stratified percentile"
ECE_BINS = 15
_MAX_BLOCK_ELEMENTS = 4_000_000
"""Resamples are drawn in blocks of at most this many indices (32 MB), so memory stays bounded."""


def confusion_counts(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, int]:
    """Count tp, fp, tn, fn of hard 0/1 predictions (1 = PNEUMONIA)."""
    labels = check_labels(y_true)
    try:
        predictions = check_labels(y_pred)
    except ValueError as error:
        raise ValueError(f"y_pred must be hard 0/1 predictions: {error}") from error
    if predictions.size != labels.size:
        raise ValueError(
            f"y_true and y_pred differ in length ({labels.size} vs {predictions.size})"
        )
    return {
        "tp": int(np.sum((labels == 1) & (predictions == 1))),
        "fp": int(np.sum((labels == 0) & (predictions == 1))),
        "tn": int(np.sum((labels == 0) & (predictions == 0))),
        "fn": int(np.sum((labels == 1) & (predictions == 0))),
    }


def _rates(tp: ArrayLike, fp: ArrayLike, tn: ArrayLike, fn: ArrayLike) -> dict[str, np.ndarray]:
    """Rates from counts (scalars or per-resample arrays); 0/0 gives NaN."""
    tp, fp, tn, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, tn, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / (tp + fp + tn + fn),
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "precision": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def _check_threshold(threshold: float) -> float:
    if not (np.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a finite number in [0, 1], got {threshold!r}")
    return float(threshold)


def threshold_metrics(y_true: ArrayLike, y_prob: ArrayLike, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, precision, NPV and F1 when y_prob >= threshold.

    A ratio with a zero denominator is float('nan') (e.g. specificity without NORMAL cases).
    """
    threshold = _check_threshold(threshold)
    labels, probs = check_binary_inputs(y_true, y_prob)
    counts = confusion_counts(labels, decide(probs, threshold))
    return {name: float(value) for name, value in _rates(**counts).items()}


def _resample_blocks(labels: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield blocks of stratified bootstrap index rows, all resamples drawn from one generator.

    Each row holds n_positive draws (with replacement) from the positives followed by n_negative
    draws from the negatives, so every resample keeps the class counts of the data and AUC stays
    defined. The draw depends only on (labels, n_resamples, seed), so every statistic computed
    from these rows sees the same resamples.
    """
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    rng = np.random.default_rng(seed)
    rows_per_block = max(1, _MAX_BLOCK_ELEMENTS // labels.size)
    for start in range(0, n_resamples, rows_per_block):
        rows = min(rows_per_block, n_resamples - start)
        yield np.concatenate(
            [
                positives[rng.integers(0, positives.size, size=(rows, positives.size))],
                negatives[rng.integers(0, negatives.size, size=(rows, negatives.size))],
            ],
            axis=1,
        )


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the defined (non-NaN) bootstrap values; NaNs if none is defined."""
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return math.nan, math.nan
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Stratified percentile bootstrap interval of statistic(y_true, y_prob).

    Positives and negatives are resampled separately with replacement (Efron & Tibshirani 1993,
    ch. 13, percentile interval), so both classes are in every resample. The statistic is called
    once per resample; `evaluate_predictions` computes its statistics vectorised over the same
    resamples instead, and gives the same interval for the same seed.

    Returns:
        (low, high); NaN, NaN when the statistic is undefined (NaN) in every resample.
    """
    _check_bootstrap_args(n_resamples, confidence)
    labels, probs = check_binary_inputs(y_true, y_prob, require_both_classes=True)
    values = np.array(
        [
            statistic(labels[row], probs[row])
            for block in _resample_blocks(labels, n_resamples, seed)
            for row in block
        ],
        dtype=np.float64,
    )
    return _percentile_interval(values, confidence)


def _roc_auc_rows(scores: np.ndarray, n_positive: int) -> np.ndarray:
    """ROC AUC of each row whose first n_positive columns are positives (Mann-Whitney U / n1 n0)."""
    n_negative = scores.shape[1] - n_positive
    ranks = rankdata(scores, axis=1)  # mid-ranks: tied pairs count 1/2, as in roc_auc_score
    rank_sum = ranks[:, :n_positive].sum(axis=1)
    return (rank_sum - n_positive * (n_positive + 1) / 2.0) / (n_positive * n_negative)


def _average_precision_rows(scores: np.ndarray, n_positive: int) -> np.ndarray:
    """Average precision of each row, the step-wise sum of sklearn's average_precision_score.

    AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds, i.e. the mean over positives of the
    precision at the lowest threshold that still includes that positive's tie group.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    is_positive = order < n_positive
    true_positives = np.cumsum(is_positive, axis=1)
    precision = true_positives / np.arange(1, scores.shape[1] + 1)
    n_columns = scores.shape[1]
    group_end = np.ones_like(is_positive)
    group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    end_index = np.where(group_end, np.arange(n_columns), n_columns)
    end_index = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
    precision_at_group_end = np.take_along_axis(precision, end_index, axis=1)
    return np.sum(precision_at_group_end * is_positive, axis=1) / n_positive


def _bootstrap_statistics(
    labels: np.ndarray, probs: np.ndarray, thresholds: dict[str, float], n_resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """Every bootstrap statistic of evaluate_predictions, vectorised over one set of resamples."""
    n_positive = int(labels.sum())
    n_negative = labels.size - n_positive
    collected: dict[str, list[np.ndarray]] = {}
    for block in _resample_blocks(labels, n_resamples, seed):
        scores = probs[block]
        columns = {
            "roc_auc": _roc_auc_rows(scores, n_positive),
            "average_precision": _average_precision_rows(scores, n_positive),
        }
        for key, threshold in thresholds.items():
            predicted = decide(scores, threshold)
            tp = predicted[:, :n_positive].sum(axis=1)
            fp = predicted[:, n_positive:].sum(axis=1)
            rates = _rates(tp=tp, fp=fp, tn=n_negative - fp, fn=n_positive - tp)
            columns.update({f"{key}/{name}": value for name, value in rates.items()})
        for name, value in columns.items():
            collected.setdefault(name, []).append(value)
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def _json_number(value: float) -> float | None:
    """NaN (undefined) becomes None so metrics.json holds null, never the non-JSON token NaN."""
    return None if math.isnan(value) else float(value)


def _with_ci(value: float, resampled: np.ndarray, confidence: float) -> dict[str, float | None]:
    low, high = _percentile_interval(resampled, confidence)
    return {
        "value": _json_number(value),
        "ci_low": _json_number(low),
        "ci_high": _json_number(high),
    }


def evaluate_predictions(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float,
    threshold_rule: str,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Every test-set number with a stratified-bootstrap CI, as the JSON-ready metrics.json body.

    Threshold-dependent metrics are reported at the stored threshold (chosen on validation data)
    and at 0.5; AUC and AP are threshold-free. Brier score and ECE (binary, ECE_BINS equal-width
    bins, see `expected_calibration_error`) are point estimates. Undefined values are None.

    Args:
        y_true: Test labels (1 = PNEUMONIA); both classes must be present.
        y_prob: Test probabilities of PNEUMONIA.
        threshold: The model's stored decision threshold.
        threshold_rule: How that threshold was chosen, recorded for the reader.
        n_resamples: Bootstrap resamples.
        seed: Seed of the bootstrap generator; same seed, same intervals.
        confidence: Coverage of the percentile intervals.
    """
    threshold = _check_threshold(threshold)
    _check_bootstrap_args(n_resamples, confidence)
    labels, probs = check_binary_inputs(y_true, y_prob, require_both_classes=True)
    thresholds = {"at_threshold": threshold, "at_0.5": 0.5}
    resampled = _bootstrap_statistics(labels, probs, thresholds, int(n_resamples), seed)

    result: dict = {
        "n": int(labels.size),
        "n_positive": int(labels.sum()),
        "n_negative": int(labels.size - labels.sum()),
        "threshold": threshold,
        "threshold_rule": str(threshold_rule),
    }
    for key, value in thresholds.items():
        point = threshold_metrics(labels, probs, value)
        block: dict = {
            name: _with_ci(point[name], resampled[f"{key}/{name}"], confidence)
            for name in RATE_NAMES
        }
        block["confusion"] = confusion_counts(labels, (probs >= value).astype(np.int64))
        result[key] = block
    result["roc_auc"] = _with_ci(roc_auc_score(labels, probs), resampled["roc_auc"], confidence)
    result["average_precision"] = _with_ci(
        average_precision_score(labels, probs), resampled["average_precision"], confidence
    )
    result["brier"] = float(np.mean((probs - labels) ** 2))
    result["ece"] = expected_calibration_error(labels, probs, n_bins=ECE_BINS)
    result["ece_n_bins"] = ECE_BINS
    result["bootstrap"] = {
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "confidence": float(confidence),
        "method": BOOTSTRAP_METHOD,
    }
    return result


def subgroup_sensitivity(
    records: Sequence[Any], labels: np.ndarray, decisions: np.ndarray, confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Sensitivity per pneumonia type where file names follow Kermany's pattern
    (`personN_bacteria_M` / `personN_virus_M`), with Wilson score intervals (scipy's
    `binomtest`); {} when no PNEUMONIA file name carries a type."""

    from pneumonia_cxr.data.patients import pneumonia_type

    groups: dict[str, list[int]] = {}
    for record, label, decision in zip(records, labels, decisions, strict=True):
        kind = pneumonia_type(record.path.name) if label == 1 else None
        if kind:
            groups.setdefault(kind.lower(), []).append(int(decision))
    result = {}
    for kind, hits in sorted(groups.items()):
        low, high = wilson_interval(sum(hits), len(hits), confidence)
        result[kind] = {
            "n": len(hits),
            "detected": sum(hits),
            "sensitivity": {
                "value": sum(hits) / len(hits),
                "ci_low": low,
                "ci_high": high,
                "method": "wilson",
            },
        }
    return result


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's `binomtest`): sound at 0 or n successes
    and for small n, where the bootstrap degenerates."""
    from scipy.stats import binomtest

    interval = binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% interval (bootstrap or Wilson); None where it is undefined."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Estimate:
        return cls(raw.get("value"), raw.get("ci_low"), raw.get("ci_high"))


@dataclass(frozen=True)
class BinaryMetrics:
    """The typed reading of `evaluate_predictions`' layout (metrics.json's top level, and its
    `pneumonia_type.viral_vs_bacterial` block): what a caller reads without knowing keys."""

    n: int
    threshold: float
    threshold_rule: str
    roc_auc: Estimate
    accuracy: Estimate
    sensitivity: Estimate
    specificity: Estimate
    precision: Estimate
    f1: Estimate
    confusion: dict[str, int]
    """tp, fp, tn, fn at the threshold."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BinaryMetrics:
        at = raw["at_threshold"]
        rates = ("accuracy", "sensitivity", "specificity", "precision", "f1")
        return cls(
            n=int(raw["n"]),
            threshold=float(raw["threshold"]),
            threshold_rule=str(raw["threshold_rule"]),
            roc_auc=Estimate.from_dict(raw["roc_auc"]),
            confusion={key: int(value) for key, value in at["confusion"].items()},
            **{name: Estimate.from_dict(at[name]) for name in rates},
        )
