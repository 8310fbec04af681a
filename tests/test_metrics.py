"""Metrics against hand-computed confusion matrices, and the stratified bootstrap."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

from pneumonia_cxr.evaluation.metrics import (
    RATE_NAMES,
    bootstrap_ci,
    confusion_counts,
    evaluate_predictions,
    threshold_metrics,
)

NAN = math.nan

# 3 PNEUMONIA, 5 NORMAL: prevalence 3/8.
Y = [1, 1, 1, 0, 0, 0, 0, 0]
P = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4, 0.05]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "expected"),
    [
        ([1, 0, 1, 0], [1, 0, 1, 0], {"tp": 2, "fp": 0, "tn": 2, "fn": 0}),
        ([1, 0, 1, 0], [0, 1, 0, 1], {"tp": 0, "fp": 2, "tn": 0, "fn": 2}),
        ([1, 1, 1, 0], [1, 1, 0, 1], {"tp": 2, "fp": 1, "tn": 0, "fn": 1}),
        ([0, 0, 0], [0, 0, 0], {"tp": 0, "fp": 0, "tn": 3, "fn": 0}),
        ([True, False], [1.0, 1.0], {"tp": 1, "fp": 1, "tn": 0, "fn": 0}),
    ],
)
def test_confusion_counts(y_true, y_pred, expected):
    assert confusion_counts(y_true, y_pred) == expected


def test_confusion_counts_rejects_probabilities():
    with pytest.raises(ValueError, match="hard 0/1"):
        confusion_counts([0, 1], [0.2, 0.7])


@pytest.mark.parametrize(
    ("y_true", "y_prob", "threshold", "expected"),
    [
        pytest.param(
            Y, P, 0.35,
            # tp=2 fp=2 tn=3 fn=1
            {"accuracy": 5 / 8, "sensitivity": 2 / 3, "specificity": 3 / 5,
             "precision": 2 / 4, "npv": 3 / 4, "f1": 4 / 7},
            id="mixed",
        ),
        pytest.param(
            Y, P, 0.6,
            # a score equal to the threshold is positive: tp=2 fp=1 tn=4 fn=1
            {"accuracy": 6 / 8, "sensitivity": 2 / 3, "specificity": 4 / 5,
             "precision": 2 / 3, "npv": 4 / 5, "f1": 4 / 6},
            id="score-equals-threshold",
        ),
        pytest.param(
            Y, P, 0.0,
            # all predicted positive: tp=3 fp=5 tn=0 fn=0; precision = prevalence
            {"accuracy": 3 / 8, "sensitivity": 1.0, "specificity": 0.0,
             "precision": 3 / 8, "npv": NAN, "f1": 6 / 11},
            id="all-positive",
        ),
        pytest.param(
            Y, P, 1.0,
            # all predicted negative: tp=0 fp=0 tn=5 fn=3
            {"accuracy": 5 / 8, "sensitivity": 0.0, "specificity": 1.0,
             "precision": NAN, "npv": 5 / 8, "f1": 0.0},
            id="all-negative",
        ),
        pytest.param(
            [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.5,
            {"accuracy": 1.0, "sensitivity": 1.0, "specificity": 1.0,
             "precision": 1.0, "npv": 1.0, "f1": 1.0},
            id="perfect",
        ),
        pytest.param(
            [1, 1], [0.9, 0.2], 0.5,
            # no NORMAL case: specificity 0/0
            {"accuracy": 0.5, "sensitivity": 0.5, "specificity": NAN,
             "precision": 1.0, "npv": 0.0, "f1": 2 / 3},
            id="no-negatives",
        ),
    ],
)  # fmt: skip
def test_threshold_metrics_hand_computed(y_true, y_prob, threshold, expected):
    result = threshold_metrics(y_true, y_prob, threshold)
    assert set(result) == set(RATE_NAMES)
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(result[name]), name
        else:
            assert result[name] == pytest.approx(value), name


@pytest.mark.parametrize(
    ("y_true", "y_prob", "match"),
    [
        ([0, 1, 1], [0.2, 0.3], "differ in length"),
        ([0, 2], [0.2, 0.3], "only 0"),
        ([0, 1], [0.2, 1.5], r"\[0, 1\]"),
        ([0, 1], [0.2, -0.1], r"\[0, 1\]"),
        ([0, 1], [0.2, float("nan")], "NaN"),
        ([], [], "empty"),
        ([[0, 1], [1, 0]], [[0.1, 0.2], [0.3, 0.4]], "one-dimensional"),
    ],
)
def test_invalid_inputs_raise(y_true, y_prob, match):
    with pytest.raises(ValueError, match=match):
        threshold_metrics(y_true, y_prob, 0.5)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), float("inf")])
def test_threshold_out_of_range_raises(threshold):
    with pytest.raises(ValueError, match="threshold"):
        threshold_metrics(Y, P, threshold)


@pytest.mark.parametrize("labels", [[1, 1, 1, 1], [0, 0, 0, 0]])
def test_one_class_absent_raises(labels):
    probs = [0.1, 0.4, 0.6, 0.9]
    with pytest.raises(ValueError, match="only class .* AUC"):
        evaluate_predictions(labels, probs, 0.5, "fixed_0.5", n_resamples=10)
    with pytest.raises(ValueError, match="only class"):
        bootstrap_ci(labels, probs, roc_auc_score, n_resamples=10)


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced, overlapping, heavily tied scores (rounded), like a real test set in small."""
    rng = np.random.default_rng(7)
    labels = (rng.random(150) < 0.6).astype(int)
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0).round(2)
    return labels, probs


def _fast_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mann-Whitney AUC, much cheaper per call than roc_auc_score's input checks."""
    n_pos = labels.sum()
    rank_sum = rankdata(probs)[labels == 1].sum()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (labels.size - n_pos))


def test_bootstrap_ci_contains_point_and_is_seeded(scores):
    labels, probs = scores
    point = _fast_auc(labels, probs)
    assert point == pytest.approx(roc_auc_score(labels, probs))
    first = bootstrap_ci(labels, probs, _fast_auc, n_resamples=200, seed=1)
    again = bootstrap_ci(labels, probs, _fast_auc, n_resamples=200, seed=1)
    other = bootstrap_ci(labels, probs, _fast_auc, n_resamples=200, seed=2)
    assert first[0] < point < first[1]
    assert first == again
    assert first != other


def test_bootstrap_ci_wider_at_higher_confidence(scores):
    labels, probs = scores
    narrow = bootstrap_ci(labels, probs, _fast_auc, n_resamples=200, confidence=0.8)
    wide = bootstrap_ci(labels, probs, _fast_auc, n_resamples=200, confidence=0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_bootstrap_is_stratified(scores):
    """Every resample keeps the class counts: the positive count has a zero-width interval."""
    labels, probs = scores
    low, high = bootstrap_ci(labels, probs, lambda y, _p: float(y.sum()), n_resamples=200)
    assert low == high == labels.sum()


@pytest.mark.parametrize(
    ("key", "statistic"),
    [
        (("roc_auc",), roc_auc_score),
        (("average_precision",), average_precision_score),
        (
            ("at_threshold", "sensitivity"),
            lambda y, p: threshold_metrics(y, p, 0.45)["sensitivity"],
        ),
        (("at_threshold", "npv"), lambda y, p: threshold_metrics(y, p, 0.45)["npv"]),
        (("at_0.5", "f1"), lambda y, p: threshold_metrics(y, p, 0.5)["f1"]),
    ],
)
def test_vectorised_intervals_match_generic_bootstrap(scores, key, statistic):
    """evaluate_predictions' vectorised statistics equal sklearn's on the very same resamples."""
    labels, probs = scores
    result = evaluate_predictions(labels, probs, 0.45, "youden", n_resamples=100, seed=3)
    entry = result[key[0]] if len(key) == 1 else result[key[0]][key[1]]
    low, high = bootstrap_ci(labels, probs, statistic, n_resamples=100, seed=3)
    assert entry["ci_low"] == pytest.approx(low, abs=1e-12)
    assert entry["ci_high"] == pytest.approx(high, abs=1e-12)


def test_evaluate_predictions_body(scores):
    labels, probs = scores
    result = evaluate_predictions(labels, probs, 0.45, "youden", n_resamples=200, seed=0)
    json.dumps(result, allow_nan=False)  # metrics.json must be strict JSON
    assert (result["n"], result["n_positive"]) == (labels.size, labels.sum())
    assert result["n_negative"] == labels.size - labels.sum()
    assert (result["threshold"], result["threshold_rule"]) == (0.45, "youden")
    assert result["bootstrap"] == {
        "n_resamples": 200, "seed": 0, "confidence": 0.95, "method": "stratified percentile"
    }  # fmt: skip
    for key, threshold in (("at_threshold", 0.45), ("at_0.5", 0.5)):
        expected = threshold_metrics(labels, probs, threshold)
        for name in RATE_NAMES:
            entry = result[key][name]
            assert entry["value"] == pytest.approx(expected[name])
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        counts = result[key]["confusion"]
        assert counts == confusion_counts(labels, (probs >= threshold).astype(int))
    assert result["roc_auc"]["value"] == pytest.approx(roc_auc_score(labels, probs))
    assert result["average_precision"]["value"] == pytest.approx(
        average_precision_score(labels, probs)
    )
    assert result["brier"] == pytest.approx(np.mean((probs - labels) ** 2))


def test_evaluate_predictions_ece_by_hand():
    """15 equal-width bins. 0.1 (bin [1/15, 2/15)): 3 images, 1 positive, gap |1/3 - 0.1|;
    0.7 (bin [10/15, 11/15)): 2 images, 1 positive, gap 0.2; 0.9 (bin [13/15, 14/15)): 1
    positive, gap 0.1. Weighted by images: (3 * 7/30 + 2 * 0.2 + 1 * 0.1) / 6 = 0.2. (The
    unweighted mean of the gaps is 0.178; the top-label ECE of max(p, 1 - p) is 0.167.)"""
    labels = [0, 0, 1, 1, 0, 1]
    probs = [0.1, 0.1, 0.1, 0.7, 0.7, 0.9]
    result = evaluate_predictions(labels, probs, 0.5, "fixed", n_resamples=20)
    assert result["ece"] == pytest.approx(0.2, abs=1e-12)
    assert result["ece_n_bins"] == 15


def test_undefined_values_are_json_null(scores):
    """Nothing predicted positive at threshold 1.0: precision is null, never NaN."""
    labels, probs = scores
    probs = np.minimum(probs, 0.99)
    result = evaluate_predictions(labels, probs, 1.0, "fixed", n_resamples=50)
    precision = result["at_threshold"]["precision"]
    assert precision == {"value": None, "ci_low": None, "ci_high": None}
    assert result["at_threshold"]["specificity"]["value"] == 1.0
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_resamples": 0}, "n_resamples"), ({"confidence": 1.0}, "confidence")],
)
def test_bootstrap_arguments_validated(scores, kwargs, match):
    labels, probs = scores
    with pytest.raises(ValueError, match=match):
        evaluate_predictions(labels, probs, 0.5, "fixed_0.5", **kwargs)
