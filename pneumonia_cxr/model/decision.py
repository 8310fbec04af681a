"""The probability formula and the threshold decision, each written once.

Every consumer (training's threshold fit, evaluate, predict, the ONNX graph, the service,
the metrics) calls these two functions, so a temperature or a `>=` can never differ between
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from pneumonia_cxr import CLASS_NAMES, TYPE_NAMES

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def probability(logits: ArrayT, temperature: float = 1.0) -> ArrayT:
    """P(PNEUMONIA) = sigmoid(logit / T), T fitted on validation (1.0 = none).

    Tensors stay tensors (float32, so the ONNX graph traces it); arrays stay float64 arrays.
    """
    if isinstance(logits, torch.Tensor):
        return torch.sigmoid(logits.float() / temperature)
    scaled = torch.from_numpy(np.asarray(logits, dtype=np.float64) / temperature)
    return torch.sigmoid(scaled).numpy()


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
