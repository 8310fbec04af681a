"""Threshold rules on a score set small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia_cxr.evaluation.metrics import threshold_metrics
from pneumonia_cxr.evaluation.threshold import THRESHOLD_RULES, choose_threshold

# 4 PNEUMONIA (0.35, 0.6, 0.7, 0.8), 4 NORMAL (0.1, 0.2, 0.3, 0.4).
Y = [0, 0, 0, 1, 0, 1, 1, 1]
P = [0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8]
# Candidates (predict PNEUMONIA when p >= t) with (sensitivity, specificity), by hand:
#   1.0 (0, 1)   0.8 (.25, 1)   0.7 (.5, 1)   0.6 (.75, 1)   0.4 (.75, .75)
#   0.35 (1, .75)   0.3 (1, .5)   0.2 (1, .25)   0.1 (1, 0)
# A rule picks one candidate and returns the point halfway down to the next lower score.


@pytest.mark.parametrize(
    ("rule", "min_sensitivity", "expected"),
    [
        # sensitivity >= 0.95 only for t <= 0.35; the most specific of those is 0.35 (-> 0.325).
        ("max_specificity_at_sensitivity", 0.95, 0.325),
        # sensitivity 1 allowed exactly (no rounding slack needed).
        ("max_specificity_at_sensitivity", 1.0, 0.325),
        # t <= 0.6 feasible; 0.6 has specificity 1 (-> halfway to 0.4).
        ("max_specificity_at_sensitivity", 0.7, 0.5),
        # 0.7 and 0.6 both have specificity 1: the tie goes to the higher sensitivity, 0.6.
        ("max_specificity_at_sensitivity", 0.5, 0.5),
        ("max_specificity_at_sensitivity", 0.0, 0.5),
        # J = 0.75 at both 0.6 (.75 + 1 - 1) and 0.35 (1 + .75 - 1): higher sensitivity wins.
        ("youden", 0.95, 0.325),
        ("fixed_0.5", 0.95, 0.5),
    ],
)
def test_rules_on_hand_computed_scores(rule, min_sensitivity, expected):
    chosen = choose_threshold(Y, P, rule=rule, min_sensitivity=min_sensitivity)
    assert chosen == pytest.approx(expected)
    assert isinstance(chosen, float)


def test_youden_without_tie():
    # Negatives 0.1, 0.2, 0.5; positives 0.4, 0.9. J = TPR - FPR per candidate:
    # 0.9 -> 1/2, 0.5 -> 1/2 - 1/3, 0.4 -> 1 - 1/3 (best), 0.2 -> 1 - 2/3, 0.1 -> 0.
    chosen = choose_threshold([0, 0, 0, 1, 1], [0.1, 0.2, 0.5, 0.4, 0.9], rule="youden")
    assert chosen == pytest.approx(0.3)  # 0.4, halfway down to 0.2


@pytest.mark.parametrize("min_sensitivity", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_chosen_threshold_meets_the_sensitivity_floor(min_sensitivity):
    """The returned value itself, used as `y_prob >= t`, honours the floor, and no better exists."""
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.6).astype(int)
    probs = np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0.0, 1.0).round(3)
    chosen = choose_threshold(labels, probs, min_sensitivity=min_sensitivity)
    at_chosen = threshold_metrics(labels, probs, chosen)
    assert at_chosen["sensitivity"] >= min_sensitivity
    for t in np.unique(probs):
        other = threshold_metrics(labels, probs, t)
        if other["sensitivity"] >= min_sensitivity:
            assert other["specificity"] <= at_chosen["specificity"]


def test_score_of_one_gives_finite_threshold():
    """roc_curve's +inf start is clipped to 1.0, and a score of 1.0 then still counts positive."""
    chosen = choose_threshold([0, 1], [0.0, 1.0], rule="youden")
    assert chosen == 0.5  # 1.0, halfway down to 0.0
    assert threshold_metrics([0, 1], [0.0, 1.0], chosen)["sensitivity"] == 1.0


def test_unknown_rule_lists_valid_rules():
    with pytest.raises(ValueError, match="unknown threshold rule") as error:
        choose_threshold(Y, P, rule="f1")
    for rule in THRESHOLD_RULES:
        assert rule in str(error.value)


@pytest.mark.parametrize("rule", THRESHOLD_RULES)
@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_one_class_absent_raises(rule, labels):
    with pytest.raises(ValueError, match="only class"):
        choose_threshold(labels, [0.2, 0.5, 0.9], rule=rule)


@pytest.mark.parametrize("min_sensitivity", [-0.1, 1.1, float("nan")])
def test_min_sensitivity_validated(min_sensitivity):
    with pytest.raises(ValueError, match="min_sensitivity"):
        choose_threshold(Y, P, min_sensitivity=min_sensitivity)


def test_max_threshold_at_sensitivity_takes_the_highest_feasible_threshold() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9])
    # Every threshold in (0.3, 0.6] separates the classes; the old rule takes the lowest
    # separating score, this one the highest score that keeps sensitivity >= 0.75.
    at = pytest.approx
    assert choose_threshold(labels, probs, "max_threshold_at_sensitivity", 0.75) == at(0.65)
    assert choose_threshold(labels, probs, "max_specificity_at_sensitivity", 0.75) == at(0.45)
    assert choose_threshold(labels, probs, "max_threshold_at_sensitivity", 1.0) == at(0.45)


def test_threshold_survives_rescoring_noise() -> None:
    """The boundary image keeps its side when its probability moves by 1e-6 (another engine),
    which a threshold placed exactly on its score does not guarantee."""
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9])
    for rule in ("max_threshold_at_sensitivity", "max_specificity_at_sensitivity", "youden"):
        chosen = choose_threshold(labels, probs, rule, 0.75)
        decisions = probs >= chosen
        for noise in (-1e-6, 1e-6):
            assert np.array_equal(probs + noise >= chosen, decisions), rule
