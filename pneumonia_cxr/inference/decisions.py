"""Scores to decisions: the probability formula, the thresholds, the applicability checks and
the "not assessed" state, each applied in one place for every engine and every output.

`scores_from_outputs` turns an engine's raw outputs into `Scores`; `results` turns scores (and
what each file says about itself) into one `ImageResult` per image, whose `values` every table,
the API and the service format (`model.outputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pneumonia_cxr.data.loader import ImageFacts
from pneumonia_cxr.model.decision import Decision, decide, probability
from pneumonia_cxr.model.intended_use import IntendedUse, Refusal, out_of_scope
from pneumonia_cxr.model.outputs import OUTPUTS, ModelOutput, outputs_of


@dataclass
class Scores:
    """Per-image results of one or more batches, all shape (N,)."""

    logits: np.ndarray
    probabilities: np.ndarray
    decisions: np.ndarray
    """1 = PNEUMONIA (probability >= the model's threshold), 0 = NORMAL."""
    ood_scores: np.ndarray
    """NaN when the model carries no OOD statistics."""
    ood_flags: np.ndarray
    """True where the image is out of distribution (score above the model's cut-off)."""
    guard_scores: np.ndarray | None = None
    """The applicability guard's feature score; None for a model without a guard."""
    answers: dict[str, np.ndarray] = field(default_factory=dict)
    """P(class 1) of every answer after P(PNEUMONIA) the model gives (`model.outputs`; e.g.
    "type": P(VIRAL | PNEUMONIA)), by output name."""

    def by_output(self) -> dict[str, np.ndarray]:
        """Probabilities per `model.outputs` name, P(PNEUMONIA) included."""
        return {"pneumonia": self.probabilities} | self.answers

    @classmethod
    def concat(cls, parts: Sequence[Scores]) -> Scores:
        names = ("logits", "probabilities", "decisions", "ood_scores", "ood_flags")
        # A batch of unreadable files scores nothing: an empty part carries no answers and no
        # guard scores, and must not drop them from the others.
        parts = [p for p in parts if len(p.logits)]
        if not parts:
            empty = np.zeros(0)
            return cls(empty, empty, empty.astype(np.int64), empty, empty.astype(bool))
        guard = None
        if all(p.guard_scores is not None for p in parts):
            guard = np.concatenate([p.guard_scores for p in parts])
        answers = {
            name: np.concatenate([p.answers[name] for p in parts]) for name in parts[0].answers
        }
        arrays = (np.concatenate([getattr(p, name) for p in parts]) for name in names)
        return cls(*arrays, guard_scores=guard, answers=answers)


@dataclass(frozen=True)
class ImageResult:
    """One image's verdict, made in one place (`Predictor.results`); predict (every mode), the
    API, the service and evaluate only format it (`values`).

    "Not assessed" is a state, not a flag beside a label: such an image has no label for any
    output and no heatmap anywhere; the network's numbers stay readable as `unassessed_*`.
    """

    state: str
    """"assessed" or "not assessed" (`model.outputs.STATES`)."""
    probabilities: dict[str, float]
    """The network's probability per output name (`model.outputs`), temperature applied."""
    labels: dict[str, str]
    """Per output, its class at its threshold; only for an assessed image, and only where the
    output answers (the type of a pneumonia for an image called PNEUMONIA)."""
    guard_score: float | None = None
    """The applicability guard's score; None for a model without a guard."""
    ood_score: float | None = None
    """The older pooled-feature OOD score; None for a model without its statistics."""
    refusals: tuple[Refusal, ...] = ()
    checked: bool = True
    """Whether anything judged applicability (a guard, OOD statistics or a refusal)."""

    @property
    def assessed(self) -> bool:
        return self.state == "assessed"

    @property
    def probability(self) -> float | None:
        """P(PNEUMONIA) as a decision's input; None when not assessed."""
        return self.probabilities.get("pneumonia") if self.assessed else None

    @property
    def label(self) -> str:
        return self.labels.get("pneumonia", "")

    def __getattr__(self, name: str) -> Any:
        """Every answer's columns as attributes (`model.outputs`: the type's probability and
        label columns, ...): its probability (None unless assessed) or its label ("")."""
        if name.startswith("_"):
            raise AttributeError(name)
        for output in OUTPUTS:
            if name == output.probability_column:
                return self.probabilities.get(output.name) if self.assessed else None
            if name == output.label_column:
                return self.labels.get(output.name, "")
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def out_of_distribution(self) -> bool | None:
        """True when not assessed (the column's meaning for older readers)."""
        return not self.assessed if self.checked else None

    @property
    def reason(self) -> str:
        """The refusals in plain words, each once."""
        return "; ".join(dict.fromkeys(r.words for r in self.refusals))

    @property
    def details(self) -> list[str]:
        """The figures behind each refusal (a page's "details")."""
        return [f"{r.words}: {r.detail}" if r.detail else r.words for r in self.refusals]

    def values(self, outputs: Sequence[ModelOutput]) -> dict[str, Any]:
        """Column -> value for `outputs` (`model.outputs.table_columns`, less path/error)."""
        values: dict[str, Any] = {
            "state": self.state,
            "out_of_distribution": self.out_of_distribution,
            "reason": self.reason,
            "guard_score": self.guard_score,
            "ood_score": self.ood_score,
        }
        for output in outputs:
            number = self.probabilities.get(output.name)
            values[output.probability_column] = number if self.assessed else None
            values[output.label_column] = self.labels.get(output.name, "")
            values[output.unassessed_column] = None if self.assessed else number
        return values


def scores_from_outputs(
    decision: Decision,
    logits: np.ndarray,
    ood_scores: np.ndarray,
    guard_scores: np.ndarray | None = None,
    answer_logits: dict[str, np.ndarray] | None = None,
) -> Scores:
    """Probability, decision and OOD flag from raw outputs: the only place they are made.
    The flag is the OOD score's or, for a model with a guard, either score's."""
    logits = np.asarray(logits, dtype=np.float64)
    probabilities = probability(logits, decision.temperature)
    ood_scores = np.asarray(ood_scores, dtype=np.float64)
    cutoff = decision.ood_cutoff
    flags = ood_scores > cutoff if cutoff is not None else np.zeros(len(logits), bool)
    guard_cutoff = decision.guard_cutoff
    if guard_scores is not None and guard_cutoff is not None:
        guard_scores = np.asarray(guard_scores, dtype=np.float64)
        flags = flags | (guard_scores > guard_cutoff)
    else:
        guard_scores = None
    given = {output.name for output in outputs_of(decision)}
    return Scores(
        logits,
        probabilities,
        decide(probabilities, decision.threshold),
        ood_scores,
        flags,
        guard_scores,
        answers={
            name: probability(np.asarray(logit, dtype=np.float64))
            for name, logit in (answer_logits or {}).items()
            if name in given
        },
    )


def refusals(
    decision: Decision,
    use: IntendedUse,
    scores: Scores,
    position: int,
    facts: ImageFacts | None,
) -> list[Refusal]:
    """Why image `position` is outside the model's use: what the file says (colour, DICOM
    header; `model.intended_use`), then the feature scores against their cut-offs (one
    "features" reason however many scores say so)."""
    refusals = out_of_scope(facts, use)
    figures = []
    guard, cutoff = scores.guard_scores, decision.guard_cutoff
    if guard is not None and cutoff is not None and guard[position] > cutoff:
        figures.append(f"guard score {guard[position]:.1f} > cut-off {cutoff:.1f}")
    ood, ood_cutoff = scores.ood_scores[position], decision.ood_cutoff
    if ood_cutoff is not None and np.isfinite(ood) and ood > ood_cutoff:
        figures.append(f"OOD score {ood:.2f} > cut-off {ood_cutoff:.2f}")
    if figures:
        refusals.append(Refusal("features", "; ".join(figures)))
    return refusals


def results(
    decision: Decision,
    use: IntendedUse,
    scores: Scores,
    facts: Sequence[ImageFacts | None] | None = None,
) -> list[ImageResult]:
    """One `ImageResult` per scored image, in order; `facts` (from the loader) let the
    colour and DICOM-header checks speak."""
    outputs = outputs_of(decision)
    numbers = scores.by_output()
    checks = decision.ood_cutoff is not None or decision.guard_cutoff is not None
    answers = []
    for position in range(len(scores.probabilities)):
        fact = facts[position] if facts else None
        refused = refusals(decision, use, scores, position, fact)
        probabilities = {o.name: float(numbers[o.name][position]) for o in outputs}
        labels: dict[str, str] = {}
        if not refused:
            for output in outputs:
                given = output.asks_given
                if given is None or labels.get(given[0]) == given[1]:
                    chosen = decide(probabilities[output.name], output.cut(decision))
                    labels[output.name] = output.classes(decision)[int(chosen)]
        guard = None if scores.guard_scores is None else float(scores.guard_scores[position])
        ood = float(scores.ood_scores[position])
        answers.append(
            ImageResult(
                state="not assessed" if refused else "assessed",
                probabilities=probabilities,
                labels=labels,
                guard_score=guard,
                ood_score=ood if np.isfinite(ood) else None,
                refusals=tuple(refused),
                checked=checks or bool(refused),
            )
        )
    return answers
