"""The probability formula and the threshold decision, each written once.

Every consumer (training's threshold fit, evaluate, predict, the ONNX graph, the service,
the metrics) calls these two functions, so a temperature or a `>=` can never differ between
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from pneumonia_cxr import CLASS_NAMES

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
