"""Pneumonia detection in pediatric chest X-rays."""

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
"""Class index order everywhere: 0 = NORMAL, 1 = PNEUMONIA (the positive class)."""
