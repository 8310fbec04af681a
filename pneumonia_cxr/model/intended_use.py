"""What a model is for, and the checks that answer before the model does (issue 25).

The record travels in the model file (`intended_use`); a file without one gets
`KERMANY_INTENDED_USE`, which is what every model trained on the Kermany data is for. The
checks read only what the file says about itself (`data.loader.ImageFacts`): its colour, measured
before the conversion to gray, and its DICOM header. A value that cannot be read is reported as
unknown and is neither in scope nor out of it: the feature guard still judges the pixels.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from pneumonia_cxr.data.loader import ImageFacts

REASON_WORDS: dict[str, str] = {
    "colour": "a colour picture, not a grayscale X-ray",
    "age": "the patient's age is outside the ages the model was made for",
    "view": "not a frontal chest X-ray",
    "body_part": "not an image of the chest",
    "modality": "not a plain X-ray",
    "features": "does not look like the pediatric chest X-rays the model was trained on",
}
"""Why an image is not assessed, in words a clinician reads without a manual: each reason once,
the figures behind it apart (`Refusal.detail`). Every output says these (the `web` page reads
them from its model.json)."""


@dataclass(frozen=True)
class Refusal:
    """One reason an image gets no answer: its kind (a `REASON_WORDS` key), the plain words, and
    the figures behind them (scores, cut-offs, header values) for a "details" view."""

    kind: str
    detail: str = ""

    @property
    def words(self) -> str:
        return REASON_WORDS[self.kind]


OPEN_AGE_YEARS = 120.0
"""An upper age bound at or above this is no age rule (an adapted site's model: 0-150)."""


@dataclass(frozen=True)
class IntendedUse:
    """The population and the kind of image a model was made for.

    Age rule: DICOM PatientAge within [min_age_years, max_age_years]. Kermany's films are of
    children aged 1-5; up to 10 years is accepted because the chest of a school-age child is
    still a child's (size, proportions, thymus) and the feature guard judges the film itself,
    while an adolescent or adult chest is not what the model learned. A site that adapts the
    model to adults' films (`adapt`) widens the range.
    """

    population: str = (
        "children aged 1-5 years, frontal (AP/PA) chest radiographs, one hospital (Guangzhou "
        "Women and Children's Medical Center; Kermany et al. 2018)"
    )
    min_age_years: float = 0.0
    max_age_years: float = 10.0
    projections: tuple[str, ...] = ("AP", "PA")
    body_parts: tuple[str, ...] = ("CHEST",)
    modalities: tuple[str, ...] = ("CR", "DX")
    max_chroma: float = 6.0
    """Mean chroma above which a file is a colour picture, not a radiograph. Gray films stored
    as RGB measure ~0-1 (JPEG noise); annotated figures with coloured arrows ~1-3."""

    def to_payload(self) -> dict[str, Any]:
        payload = asdict(self)
        for key in ("projections", "body_parts", "modalities"):
            payload[key] = list(payload[key])
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None) -> IntendedUse:
        if not payload:
            return KERMANY_INTENDED_USE
        values = dict(payload)
        for key in ("projections", "body_parts", "modalities"):
            if key in values:
                values[key] = tuple(str(v).upper() for v in values[key])
        return cls(**values)

    def scope_sentence(self) -> str:
        """What the model is for, from this record's own rule (no command: a page shows it)."""
        views = "/".join(self.projections)
        ages = (
            ""
            if self.min_age_years <= 0 and self.max_age_years >= OPEN_AGE_YEARS
            else f" of patients aged {self.min_age_years:g} to {self.max_age_years:g} years"
        )
        return (
            f"For frontal ({views}) chest X-rays{ages}. Trained and tested on "
            f"{self.population}; on images from elsewhere its answers are unproven until checked "
            "on that site's own images."
        )


KERMANY_INTENDED_USE = IntendedUse()

_AGE = re.compile(r"^(\d{3})([DWMY])$")
AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
"""Years per unit of a DICOM AS value (also written into the `web` folder's model.json)."""
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE"})
"""ViewPosition values that are not frontal (also written into the `web` folder's model.json)."""


def age_years(text: str) -> float | None:
    """DICOM AS value ("003Y", "018M", "006W", "010D") in years; None when malformed ("45",
    "045", "3M", "") so that it is reported as unknown."""
    match = _AGE.match(text.strip().upper())
    if not match:
        return None
    return int(match.group(1)) * AGE_UNITS[match.group(2)]


def out_of_scope(facts: ImageFacts | None, use: IntendedUse) -> list[Refusal]:
    """Reasons this file is outside `use` (empty: nothing it says rules it out)."""
    if facts is None:
        return []
    reasons = []
    if facts.chroma is not None and facts.chroma > use.max_chroma:
        reasons.append(Refusal("colour", f"chroma {facts.chroma:.1f} > {use.max_chroma:g}"))
    header = facts.dicom or {}
    age_text = header.get("PatientAge", "")
    age = age_years(age_text) if age_text else None
    if age is not None and not use.min_age_years <= age <= use.max_age_years:
        reasons.append(
            Refusal(
                "age",
                f"PatientAge {age_text} = {age:.1f} years; intended "
                f"{use.min_age_years:g}-{use.max_age_years:g}",
            )
        )
    view = header.get("ViewPosition", "").upper()
    if view in LATERAL_VIEWS:
        reasons.append(
            Refusal("view", f"ViewPosition {view}; intended {'/'.join(use.projections)}")
        )
    part = header.get("BodyPartExamined", "").upper()
    if part and part not in use.body_parts:
        reasons.append(Refusal("body_part", f"BodyPartExamined {part}"))
    modality = header.get("Modality", "").upper()
    if modality and modality not in use.modalities:
        reasons.append(
            Refusal("modality", f"Modality {modality}; intended {'/'.join(use.modalities)}")
        )
    return reasons


def unknown_facts(facts: ImageFacts | None) -> list[str]:
    """Header values that were present but unreadable (reported, never judged)."""
    header = (facts.dicom if facts else None) or {}
    age_text = header.get("PatientAge", "")
    if age_text and age_years(age_text) is None:
        return [f"PatientAge {age_text!r} unreadable: age unknown"]
    return []
