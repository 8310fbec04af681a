"""Calibration error, reliability bins, temperature scaling and input validation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from pneumonia_cxr.evaluation.calibration import (
    apply_temperature,
    check_binary_inputs,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)


@pytest.mark.parametrize(
    ("y_true", "y_prob", "n_bins", "expected"),
    [
        # bin [0, .5): conf .1, acc .5 -> gap .4; bin [.5, 1]: conf .9, acc 1 -> gap .1; weights 1/2
        ([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9], 2, 0.25),
        # one bin: mean prob .5, fraction positive .5 -> calibrated on average
        ([0, 1], [0.1, 0.9], 1, 0.0),
        # bins of width .25: gaps .2 (1 of 4 images), .7 (1), .1 (2) -> (.2 + .7 + .2) / 4
        ([0, 0, 1, 1], [0.2, 0.7, 0.9, 0.9], 4, 0.275),
        ([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0], 15, 0.0),
    ],
)
def test_ece_hand_computed(y_true, y_prob, n_bins, expected):
    assert expected_calibration_error(y_true, y_prob, n_bins=n_bins) == pytest.approx(expected)


def _bernoulli(probs: np.ndarray, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(probs.size) < probs).astype(int)


def test_ece_small_when_calibrated_large_when_not():
    probs = np.random.default_rng(0).random(20_000)
    labels = _bernoulli(probs, seed=1)
    assert expected_calibration_error(labels, probs) < 0.02
    # Reporting half the true probability: the average gap is E[p] / 2 = 0.25.
    assert expected_calibration_error(labels, probs / 2) > 0.2


def test_reliability_curve_bins():
    curve = reliability_curve([0, 1, 1, 0, 1], [0.0, 0.5, 1.0, 0.2, 0.45], n_bins=2)
    np.testing.assert_allclose(curve["bin_edges"], [0.0, 0.5, 1.0])
    # 0.5 belongs to the upper bin, 1.0 to the last bin.
    np.testing.assert_array_equal(curve["counts"], [3, 2])
    np.testing.assert_allclose(curve["mean_predicted"], [0.65 / 3, 0.75])
    np.testing.assert_allclose(curve["fraction_positive"], [1 / 3, 1.0])


def test_reliability_curve_empty_bins_are_nan():
    curve = reliability_curve([0, 1], [0.05, 0.95], n_bins=10)
    assert curve["counts"].sum() == 2
    assert np.isnan(curve["mean_predicted"][1:-1]).all()
    assert np.isnan(curve["fraction_positive"][1:-1]).all()


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_known_temperature(true_temperature):
    """Labels drawn from sigmoid(z); the model reports z * T, so the fit should give back T."""
    z = np.random.default_rng(2).normal(0.0, 2.0, 20_000)
    labels = _bernoulli(expit(z), seed=3)
    fitted = fit_temperature(true_temperature * z, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.1)


def test_temperature_lowers_ece_and_keeps_ranking():
    z = np.random.default_rng(4).normal(0.0, 2.0, 5_000)
    labels = _bernoulli(expit(z), seed=5)
    logits = 3.0 * z  # over-confident
    raw = apply_temperature(logits, 1.0)
    calibrated = apply_temperature(logits, fit_temperature(logits, labels))
    assert expected_calibration_error(labels, calibrated) < expected_calibration_error(labels, raw)
    assert roc_auc_score(labels, calibrated) == pytest.approx(roc_auc_score(labels, raw))


def test_apply_temperature_values():
    np.testing.assert_allclose(apply_temperature([0.0, 2.0, -4.0], 2.0), expit([0.0, 1.0, -2.0]))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_apply_temperature_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature([0.1, 0.2], temperature)


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        ([0.1, float("inf")], [0, 1], "NaN/inf"),
        ([0.1, 0.2, 0.3], [0, 1], "differ in length"),
        ([0.1, 0.2], [1, 1], "only class"),
    ],
)
def test_fit_temperature_validates(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, labels)


def test_check_binary_inputs_accepts_column_vectors_and_bools():
    labels, probs = check_binary_inputs(np.array([[True], [False]]), np.array([[0.7], [0.2]]))
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_allclose(probs, [0.7, 0.2])
    assert labels.dtype == np.int64 and probs.dtype == np.float64


@pytest.mark.parametrize(
    ("y_true", "y_prob", "match"),
    [
        ([0, 1], [0.1, 3.2], "pass sigmoid"),
        (["a", "b"], [0.1, 0.2], "numeric"),
        ([0, 1], ["x", "y"], "real numbers"),
        ([0, 0.5], [0.1, 0.2], "only 0"),
    ],
)
def test_check_binary_inputs_rejects(y_true, y_prob, match):
    with pytest.raises(ValueError, match=match):
        check_binary_inputs(y_true, y_prob)


def test_ece_rejects_bad_bins():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0, 1], [0.2, 0.8], n_bins=0)
