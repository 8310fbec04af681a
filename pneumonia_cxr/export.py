"""ONNX export of a model file; `inference.engines` runs the result (ONNX Runtime, OpenVINO).

The exported file is self-describing like the `.pt` model file: its metadata carries the
preprocessing, threshold, temperature and class names (`onnx_metadata`), so `predict` needs
nothing else.

Graph contract (opset `DEFAULT_OPSET` unless asked otherwise):

- input  ``image``: float32 (N, 3, S, S), already normalized by the model's own steps
  (`data.preprocess.evaluation_transform(preprocessing)`); N is dynamic.
- output ``logit``: float32 (N, 1), the network's raw PNEUMONIA logit (what PyTorch returns).
- output ``probability``: float32 (N, 1), ``sigmoid(logit / temperature)`` = P(PNEUMONIA), traced
  from `model.decision.probability`. The temperature is baked into the graph so a
  consumer in another language cannot forget it; it is also in the metadata for reference.
- output ``ood_score``: float32 (N,), the out-of-distribution score (`model.ood`), NaN when the
  model file carries no statistics; an image is flagged when it exceeds metadata ``ood.cutoff``.

An ensemble exports as one graph (its members' logits averaged inside it).

Writing an export needs PyTorch and onnx (the full install); running one needs only ONNX Runtime
or OpenVINO (the light install, `inference.engines`). They are imported when an ONNX function
is called (`require_optional`).
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumonia_cxr import __version__
from pneumonia_cxr.model.decision import probability
from pneumonia_cxr.model.model_file import ModelBundle
from pneumonia_cxr.model.onnx_format import (
    GUARD_OUTPUT,
    INPUT_NAME,
    LOGIT_OUTPUT,
    METADATA_KEY,
    ONNX_FORMAT_NAME,
    ONNX_FORMAT_VERSION,
    OOD_OUTPUT,
    PROBABILITY_OUTPUT,
    TYPE_OUTPUT,
    require_optional,
)
from pneumonia_cxr.storage import atomic_write

DEFAULT_OPSET = 17
"""Old enough for every current runtime (ONNX Runtime >= 1.14, TensorRT, OpenVINO); ResNet and
EfficientNet need nothing newer."""


class _ExportedGraph(nn.Module):
    """The exported graph: logit, the one probability formula, and the OOD score."""

    def __init__(self, bundle: ModelBundle) -> None:
        super().__init__()
        self.scoring = bundle.scoring_model()
        self.temperature = float(bundle.temperature)
        self.typed = bundle.type_decision is not None
        self.guarded = bundle.guard is not None

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logit, ood_score, type_logit, guard_score = self.scoring(image)
        outputs = [logit, probability(logit, self.temperature), ood_score]
        if self.typed:
            outputs.append(type_logit)
        if self.guarded:
            outputs.append(guard_score)
        return tuple(outputs)


def output_names(bundle: ModelBundle) -> list[str]:
    """The graph's outputs, in order: the type's and the guard's only when the model has them."""
    names = [LOGIT_OUTPUT, PROBABILITY_OUTPUT, OOD_OUTPUT]
    if bundle.type_decision is not None:
        names.append(TYPE_OUTPUT)
    if bundle.guard is not None:
        names.append(GUARD_OUTPUT)
    return names


def onnx_metadata(bundle: ModelBundle) -> dict[str, Any]:
    pre = bundle.preprocessing
    size = int(pre.image_size)
    return {
        "format": ONNX_FORMAT_NAME,
        "format_version": ONNX_FORMAT_VERSION,
        "preprocessing": asdict(pre),
        "threshold": float(bundle.threshold),
        "threshold_rule": bundle.threshold_rule,
        "temperature": float(bundle.temperature),
        "class_names": list(bundle.class_names),
        "backbone": bundle.model.backbone_name,
        "backbones": list(bundle.backbone_names),
        "ood": (
            {
                "cutoff": bundle.ood.cutoff,
                "quantile": bundle.ood.quantile,
                "fingerprint": bundle.ood.fingerprint(),
            }
            if bundle.ood
            else None
        ),
        "fingerprint": bundle.fingerprint(),
        "data_fingerprint": bundle.data_fingerprint,
        "calibration": bundle.extra.get("calibration"),
        "min_sensitivity": bundle.extra.get("min_sensitivity"),
        "type_decision": (
            bundle.type_decision.to_payload() if bundle.type_decision is not None else None
        ),
        "guard": (
            {
                "cutoff": bundle.guard.cutoff,
                "quantile": bundle.guard.quantile,
                "layers": list(bundle.guard.layers),
                "fitted_on": bundle.guard.fitted_on,
                "fingerprint": bundle.guard.fingerprint(),
            }
            if bundle.guard is not None
            else None
        ),
        "intended_use": bundle.intended_use.to_payload(),
        "package_version": __version__,
        "trained_with_package_version": bundle.package_version,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", int(pre.channels), size, size],
            "dtype": "float32",
            "normalized": f"{pre.normalization}: (x / 255 - mean) / std per channel",
        },
        "outputs": {
            LOGIT_OUTPUT: "raw PNEUMONIA logit, shape (batch, 1)",
            PROBABILITY_OUTPUT: "sigmoid(logit / temperature) = P(PNEUMONIA), shape (batch, 1)",
            OOD_OUTPUT: "out-of-distribution score, shape (batch,); NaN without statistics; "
            "flag when > ood.cutoff",
        },
    }


def _trace_to_onnx(bundle: ModelBundle, target: Path, opset: int) -> None:
    """Run torch's TorchScript-based exporter on a CPU float32 copy of the model.

    Why this exporter: torch 2.14's default (`dynamo=True`) needs the onnxscript package, which
    is not a dependency; the TorchScript exporter is built into torch, works offline and gives
    a plain static graph for these convolutional networks. It warns that it is deprecated; the
    warning is silenced here because the user cannot act on it. A copy is exported so the
    caller's model keeps its device, dtype, memory format and train/eval mode.
    """
    wrapper = copy.deepcopy(_ExportedGraph(bundle)).to(device="cpu", dtype=torch.float32)
    wrapper = wrapper.to(memory_format=torch.contiguous_format).eval()
    size = int(bundle.preprocessing.image_size)
    example = torch.zeros(2, int(bundle.preprocessing.channels), size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            str(target),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=output_names(bundle),
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *output_names(bundle)]},
            opset_version=opset,
            do_constant_folding=True,
        )


def export_onnx(bundle: ModelBundle, path: str | Path, *, opset: int | None = None) -> Path:
    """Write `bundle` as a self-describing ONNX file with a dynamic batch axis.

    The file is checked with `onnx.checker` and written atomically (temp file, then rename), so a
    failed export never leaves a half-written model where `predict` would pick it up.

    Args:
        bundle: A loaded model file (`load_model`).
        path: Target file; must end in ``.onnx`` so `load_predictor` recognizes it.
        opset: ONNX opset to target; default `DEFAULT_OPSET`.

    Returns:
        The path written.

    Raises:
        ValueError: the path does not end in ``.onnx``.
        ImportError: onnx is not installed (names the extra to install).
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{path}: an ONNX model file must end in .onnx so predict recognizes it")
    onnx = require_optional("onnx")
    with tempfile.TemporaryDirectory(prefix="pneumonia-cxr-export-") as scratch:
        traced = Path(scratch) / "traced.onnx"
        _trace_to_onnx(bundle, traced, opset or DEFAULT_OPSET)
        proto = onnx.load(str(traced))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(onnx_metadata(bundle), sort_keys=True)
    proto.doc_string = (
        f"pneumonia-cxr {bundle.model.backbone_name}: input '{INPUT_NAME}' (N,3,S,S) "
        f"normalized float32 -> '{LOGIT_OUTPUT}', '{PROBABILITY_OUTPUT}' (N,1), "
        f"'{OOD_OUTPUT}' (N,); metadata key '{METADATA_KEY}' holds preprocessing and threshold"
    )
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, lambda handle: handle.write(proto.SerializeToString()))
    return path
