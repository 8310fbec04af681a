"""Patient identity from Kermany file names, so that splits never put one child on both sides.

The Kermany et al. (2018) chest X-ray set encodes the patient in each file name:

* pneumonia: ``person{N}_bacteria_{M}.jpeg`` / ``person{N}_virus_{M}.jpeg`` (one file in the
  official train split has an extra counter: ``person447_virus_921_1.jpeg``);
* normal: ``IM-{N}-{M}.jpeg`` and ``NORMAL2-IM-{N}-{M}.jpeg``, plus a few with an extra
  counter such as ``IM-0429-0001-0002.jpeg``. ``NORMAL2-IM-`` numbers are a separate series
  from ``IM-`` numbers (``IM-0381`` and ``NORMAL2-IM-0381`` are different children).

Bacterial and viral cases seem to be numbered in two separate ``person`` series: in the
public set, 170 person numbers occur in two official splits and every one of them switches
type (bacteria in one split, virus in the other), while no number crosses splits within one
type. :func:`patient_id` still maps both to ``person{N}``: grouping too much can only make a
split safer, never leak. :func:`pneumonia_type` lets a report tell the two cases apart.
"""

from __future__ import annotations

import re
from pathlib import PurePath

_PERSON_TYPE = re.compile(r"^person\d+_(bacteria|virus)(?:_\d+)+$", re.IGNORECASE)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^person(\d+)_(?:bacteria|virus)(?:_\d+)+$", re.IGNORECASE), "person{}"),
    (re.compile(r"^normal2-im-(\d+)(?:-\d+)+$", re.IGNORECASE), "NORMAL2-IM-{}"),
    (re.compile(r"^im-(\d+)(?:-\d+)+$", re.IGNORECASE), "IM-{}"),
)


def _stem(filename: str) -> str:
    """File name without directories (either slash) and without any extension."""
    return PurePath(filename.replace("\\", "/")).name.split(".", 1)[0]


def patient_id(filename: str) -> str | None:
    """Return the patient a Kermany image belongs to, or None when the name is not recognised.

    Directories and the extension (any, in any case) are ignored; the returned id has a
    canonical spelling (``person12``, ``IM-0117``, ``NORMAL2-IM-0381``) so that the same child
    gets the same id whatever the case of the file name.
    """
    stem = _stem(filename)
    for pattern, template in _PATTERNS:
        match = pattern.match(stem)
        if match:
            return template.format(match.group(1))
    return None


def pneumonia_type(filename: str) -> str | None:
    """``"bacteria"`` or ``"virus"`` for a Kermany pneumonia name, else None."""
    match = _PERSON_TYPE.match(_stem(filename))
    return match.group(1).lower() if match else None
