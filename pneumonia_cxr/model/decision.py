"""The probability formula and the threshold decision, each written once.

Every consumer (training's threshold fit, evaluate, predict, the ONNX graph, the service,
the metrics) calls these two functions, so a temperature or a `>=` can never differ between
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from pneumonia_cxr import CLASS_NAMES, TYPE_NAMES

ArrayT = TypeVar("ArrayT")


def probability(logits: ArrayT, temperature: float = 1.0) -> ArrayT:
    """P(PNEUMONIA) = sigmoid(logit / T), T fitted on validation (1.0 = none).

    Tensors stay tensors (float32, so the ONNX graph traces it); arrays become float64 arrays
    (numpy, so scoring needs no PyTorch; the two agree to 1e-16).
    """
    if hasattr(logits, "sigmoid"):  # a torch.Tensor, without importing torch
        return (logits.float() / temperature).sigmoid()
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    # sigmoid without overflow: exp of a negative number only
    positive = np.exp(-np.abs(scaled))
    return np.where(scaled >= 0, 1.0 / (1.0 + positive), positive / (1.0 + positive))


def decide(probabilities: np.ndarray | Sequence[float] | float, threshold: float) -> np.ndarray:
    """1 (PNEUMONIA) where probability >= threshold, else 0 (NORMAL)."""
    return (np.asarray(probabilities) >= threshold).astype(np.int64)


def label_name(decision: int, class_names: Sequence[str] = CLASS_NAMES) -> str:
    return class_names[int(decision)]


TYPE_RULE = "youden"
"""The type threshold's rule: Youden's J on the validation pneumonia images of known type, i.e.
the highest balanced accuracy (mean of bacterial and viral recall). Neither error is cheap
(antibiotics withheld or given for nothing), and balanced accuracy does not reward calling the
commoner type (2:1 bacterial in Kermany's training split)."""


@dataclass(frozen=True)
class TypeDecision:
    """How P(VIRAL | PNEUMONIA) becomes a type: threshold, the rule that chose it, where it was
    fitted, and the class names (index 1 = the positive class)."""

    threshold: float = 0.5
    rule: str = "fixed_0.5"
    class_names: tuple[str, str] = TYPE_NAMES
    fitted_on: str = ""
    """"validation (N images)" or the site calibration that refitted it."""

    def to_payload(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["class_names"] = list(self.class_names)
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TypeDecision:
        return cls(
            threshold=float(payload["threshold"]),
            rule=str(payload["rule"]),
            class_names=tuple(payload["class_names"]),
            fitted_on=str(payload.get("fitted_on", "")),
        )

    def name(self, p_viral: float) -> str:
        return self.class_names[int(p_viral >= self.threshold)]


@dataclass(frozen=True)
class OperatingPoint:
    """Where P(PNEUMONIA) is cut: the threshold, the rule and target that chose it, and the
    temperature, fitted together (`evaluation.threshold.fit_operating_point`)."""

    threshold: float
    rule: str
    min_sensitivity: float | None
    temperature: float = 1.0
    fitted_n: int = 0
    """How many labelled images it was fitted on."""


@dataclass(frozen=True)
class Decision:
    """A model's whole decision, one record for every reader: the model file
    (`ModelBundle.decision`), both engines, the ONNX metadata and the service."""

    threshold: float = 0.5
    rule: str = "fixed_0.5"
    temperature: float = 1.0
    min_sensitivity: float | None = None
    class_names: tuple[str, ...] = CLASS_NAMES
    ood_cutoff: float | None = None
    """The OOD score's cut-off; None for a model without OOD statistics."""
    guard_cutoff: float | None = None
    """The applicability guard's cut-off; None for a model without a guard."""
    type: TypeDecision | None = None
    """How P(VIRAL | PNEUMONIA) becomes a type; None without a type head."""
    calibration: dict[str, Any] | None = None
    """The site calibration record of a `calibrate`d model file, else None."""
    further: dict[str, TypeDecision] = field(default_factory=dict)
    """How each further output of the registry (`model.outputs`, beyond pneumonia and type)
    becomes a class: its threshold, rule and class names, by output name."""

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Decision:
        """Read back what `export.onnx_metadata` writes (KeyError/TypeError/ValueError when a
        required field is missing or malformed)."""
        ood, guard, kind = meta.get("ood"), meta.get("guard"), meta.get("type_decision")
        return cls(
            threshold=float(meta["threshold"]),
            rule=str(meta["threshold_rule"]),
            temperature=float(meta["temperature"]),
            min_sensitivity=meta.get("min_sensitivity"),
            class_names=tuple(str(name) for name in meta["class_names"]),
            ood_cutoff=float(ood["cutoff"]) if ood else None,
            guard_cutoff=float(guard["cutoff"]) if guard else None,
            type=TypeDecision.from_payload(kind) if kind else None,
            calibration=meta.get("calibration"),
            further={
                name: TypeDecision.from_payload(payload)
                for name, payload in (meta.get("extra_outputs") or {}).items()
            },
        )


def calibration_line(record: dict[str, Any] | None) -> str | None:
    """ "calibrated on N local images (...)" for a site-calibrated model file (`calibrate`),
    None otherwise: what reports and the page say instead of the parent's test figures."""
    if not record:
        return None
    total = sum(record.get("images", {}).values())
    if record.get("adapted"):
        return (
            f"adapted on {total} local images ({str(record.get('date', ''))[:10]}, "
            f"{record['adapted']}, out-of-fold target sensitivity {record.get('min_sensitivity')})"
        )
    return (
        f"calibrated on {total} local images ({str(record.get('date', ''))[:10]}, "
        f"{record.get('threshold_rule')}, target sensitivity {record.get('min_sensitivity')})"
    )
