"""Calibration: does a predicted 0.8 mean "pneumonia 8 times in 10"?

Also home of `check_binary_inputs`, the one validator for (labels, probabilities) pairs: this
module is the lowest layer of `pneumonia_cxr.evaluation` (metrics and threshold import it), so the
validator lives here to keep the imports free of cycles.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar

from pneumonia_cxr import CLASS_NAMES

LOG_TEMPERATURE_BOUNDS: tuple[float, float] = (-5.0, 5.0)
"""Search range of log T in `fit_temperature`: T in [0.0067, 148], wide enough for any sane net."""


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    """Flatten an (n,) or (n, 1) array; anything else is a caller bug worth a clear error."""
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (n,), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to evaluate")
    return array


def check_labels(y_true: ArrayLike, *, require_both_classes: bool = False) -> np.ndarray:
    """Return labels as an int array of 0/1 or raise ValueError saying what is wrong.

    Args:
        y_true: Labels, 0 = NORMAL, 1 = PNEUMONIA (bool, int or float 0.0/1.0 accepted).
        require_both_classes: Raise when one class is absent, for statistics (AUC, thresholds,
            stratified bootstrap) that are undefined on a single class.
    """
    labels = _as_1d(y_true, "y_true")
    if labels.dtype == bool:
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.number):
        raise ValueError(f"y_true must be numeric 0/1 labels, got dtype {labels.dtype}")
    invalid = ~np.isin(labels, (0, 1))
    if invalid.any():
        bad = np.unique(labels[invalid])[:5].tolist()
        raise ValueError(f"y_true must contain only 0 (NORMAL) and 1 (PNEUMONIA), found {bad}")
    labels = labels.astype(np.int64)
    if require_both_classes:
        n_positive = int(labels.sum())
        if n_positive in (0, labels.size):
            present = CLASS_NAMES[1] if n_positive else CLASS_NAMES[0]
            raise ValueError(
                f"only class {present} is present in the {labels.size} labels: ROC AUC, "
                "thresholds and the stratified bootstrap are undefined; evaluate on a set that "
                f"holds both {CLASS_NAMES[0]} and {CLASS_NAMES[1]} images"
            )
    return labels


def check_binary_inputs(
    y_true: ArrayLike, y_prob: ArrayLike, *, require_both_classes: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities of the positive class, returned as int and float arrays.

    Same length, labels in {0, 1}, probabilities finite and within [0, 1]: a logit or a NaN that
    slips through would silently corrupt every metric downstream.
    """
    labels = check_labels(y_true, require_both_classes=require_both_classes)
    probs = _as_1d(y_prob, "y_prob")
    if probs.size != labels.size:
        raise ValueError(
            f"y_true and y_prob differ in length ({labels.size} vs {probs.size}): "
            "one probability per label is needed"
        )
    if not np.issubdtype(probs.dtype, np.number) or np.issubdtype(probs.dtype, np.complexfloating):
        raise ValueError(f"y_prob must be real numbers, got dtype {probs.dtype}")
    probs = probs.astype(np.float64)
    if not np.isfinite(probs).all():
        raise ValueError(f"y_prob holds {int((~np.isfinite(probs)).sum())} NaN/inf values")
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError(
            f"y_prob must be probabilities in [0, 1], got range [{probs.min():.4g}, "
            f"{probs.max():.4g}]; pass sigmoid(logits), not logits"
        )
    return labels, probs


def _check_n_bins(n_bins: int) -> None:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def reliability_curve(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 15) -> dict:
    """Bin the predictions into equal-width probability bins and compare with the outcomes.

    Bin i covers [edge_i, edge_{i+1}); the last bin also holds p = 1.0.

    Returns:
        Dict of numpy arrays: "bin_edges" (n_bins + 1), and per bin "mean_predicted" (mean
        predicted probability of PNEUMONIA), "fraction_positive" (observed fraction of
        PNEUMONIA) and "counts". Empty bins have count 0 and NaN means.
    """
    _check_n_bins(n_bins)
    labels, probs = check_binary_inputs(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    bin_index = np.searchsorted(edges[1:-1], probs, side="right")
    counts = np.bincount(bin_index, minlength=n_bins)
    prob_sums = np.bincount(bin_index, weights=probs, minlength=n_bins)
    positive_sums = np.bincount(bin_index, weights=labels, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, prob_sums / counts, np.nan)
        fraction_positive = np.where(counts > 0, positive_sums / counts, np.nan)
    return {
        "bin_edges": edges,
        "mean_predicted": mean_predicted,
        "fraction_positive": fraction_positive,
        "counts": counts,
    }


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 15) -> float:
    """Binary expected calibration error over equal-width bins.

    ECE = sum_b (n_b / n) * |fraction positive in b - mean predicted P(PNEUMONIA) in b|, i.e. the
    gap of the binary reliability diagram (Naeini et al., AAAI 2015). This is NOT the top-label
    "confidence" ECE of Guo et al. (ICML 2017), which bins max(p, 1 - p); the binary form keeps
    the over/under-estimation of the pneumonia probability itself visible. 0 = calibrated.
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins)
    counts = curve["counts"]
    filled = counts > 0
    gaps = np.abs(curve["fraction_positive"][filled] - curve["mean_predicted"][filled])
    return float(np.sum(counts[filled] / counts.sum() * gaps))


def _check_logits(logits: ArrayLike) -> np.ndarray:
    values = _as_1d(logits, "logits").astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"logits hold {int((~np.isfinite(values)).sum())} NaN/inf values")
    return values


def _binary_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of sigmoid(logits / T), in the overflow-free log-sum-exp form."""
    scaled = logits / temperature
    return float(np.mean(np.logaddexp(0.0, scaled) - labels * scaled))


def fit_temperature(logits: ArrayLike, y_true: ArrayLike) -> float:
    """Fit the temperature T > 0 that minimises the NLL of sigmoid(logits / T).

    Temperature scaling (Guo et al., ICML 2017) rescales confidence without moving the ranking,
    so AUC is unchanged. Fit it on validation data, never on test. The search is over log T
    (bounded, see LOG_TEMPERATURE_BOUNDS), which keeps T positive and the problem well scaled.

    Returns:
        T; about 1.0 when the logits are already calibrated, > 1 when they are over-confident.
    """
    values = _check_logits(logits)
    labels = check_labels(y_true, require_both_classes=True)
    if values.size != labels.size:
        raise ValueError(f"logits and y_true differ in length ({values.size} vs {labels.size})")
    result = minimize_scalar(
        lambda log_t: _binary_nll(values, labels, float(np.exp(log_t))),
        bounds=LOG_TEMPERATURE_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def apply_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
    """Calibrated probabilities: `model.decision.probability` (the one formula), after checking
    the logits and that the temperature is a finite number > 0."""
    from pneumonia_cxr.model.decision import probability

    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return probability(_check_logits(logits), float(temperature))
