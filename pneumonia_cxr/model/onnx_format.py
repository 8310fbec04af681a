"""The ONNX form of a model file, as both sides read it: `export` writes it (PyTorch), the
engines and the browser page run it (no PyTorch). Names only, so the light install imports it."""

from __future__ import annotations

import importlib
from typing import Any

ONNX_FORMAT_NAME = "pneumonia-cxr-onnx"
ONNX_FORMAT_VERSION = 1
METADATA_KEY = "pneumonia_cxr"
"""The one metadata_props key; its value is the JSON document `export.onnx_metadata` builds."""

INPUT_NAME = "image"
LOGIT_OUTPUT = "logit"
PROBABILITY_OUTPUT = "probability"
OOD_OUTPUT = "ood_score"
TYPE_OUTPUT = "type_logit"
"""Only in the graph of a model with a pneumonia type head: VIRAL-vs-BACTERIAL logit (N,)."""
GUARD_OUTPUT = "guard_score"
"""Only in the graph of a model with an applicability guard: its feature score (N,)."""

CAM_OUTPUT = "cam"
"""Only in the graph of one network whose head is a ReLU MLP on the pooled map of its Grad-CAM
layer: that map's Grad-CAM of the PNEUMONIA logit, (N, h, w), before scaling."""
TYPE_CAM_OUTPUT = "type_cam"
"""The same for the type logit, in a graph with a type head."""

INSTALL_HINT = "pip install 'pneumonia-cxr[score]'"
FULL_INSTALL_HINT = "pip install 'pneumonia-cxr[full]'"
"""PyTorch and the training stack: train, distill, Grad-CAM, reading and exporting `.pt` files."""


def require_optional(module: str) -> Any:
    """Import an optional dependency, or say which install provides it (`onnx`, which writes
    exports, comes with the full install; the runtimes with either)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        hint = FULL_INSTALL_HINT if module == "onnx" else INSTALL_HINT
        raise ImportError(f"ONNX support needs the package {module!r}: {hint}") from error
