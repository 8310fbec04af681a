"""Pneumonia detection in pediatric chest X-rays."""

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
"""Class index order everywhere: 0 = NORMAL, 1 = PNEUMONIA (the positive class)."""

TYPE_NAMES: tuple[str, str] = ("BACTERIAL", "VIRAL")
"""The pneumonia type head's index order: 0 = BACTERIAL, 1 = VIRAL (its positive class).
The type answers only for an image called PNEUMONIA: P(VIRAL | PNEUMONIA)."""

TYPE_HEAD_HIDDEN = 256
"""Width of the type head's one hidden layer (`model.classifier.PneumoniaNet`)."""
