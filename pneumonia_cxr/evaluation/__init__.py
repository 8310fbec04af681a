"""Metrics with confidence intervals, threshold choice, calibration, plots and the report.

Only constants live here, so the CLI can offer them as choices without importing numpy.
"""

THRESHOLD_RULES: tuple[str, ...] = (
    "max_specificity_at_sensitivity",
    "max_threshold_at_sensitivity",
    "youden",
    "fixed_0.5",
)
"""Rules `threshold.choose_threshold` implements."""
