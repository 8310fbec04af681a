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
from pneumonia_cxr.model.classifier import LinearProbe
from pneumonia_cxr.model.decision import probability
from pneumonia_cxr.model.model_file import ModelBundle
from pneumonia_cxr.model.onnx_format import (
    CAM_OUTPUT,
    GUARD_OUTPUT,
    INPUT_NAME,
    LOGIT_OUTPUT,
    METADATA_KEY,
    ONNX_FORMAT_NAME,
    ONNX_FORMAT_VERSION,
    OOD_OUTPUT,
    PROBABILITY_OUTPUT,
    TYPE_CAM_OUTPUT,
    TYPE_OUTPUT,
    require_optional,
)
from pneumonia_cxr.model.outputs import output_named
from pneumonia_cxr.storage import atomic_write

DEFAULT_OPSET = 17
"""Old enough for every current runtime (ONNX Runtime >= 1.14, TensorRT, OpenVINO); ResNet and
EfficientNet need nothing newer."""


def _mlp_linears(head: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of a head that is Linear (ReLU Linear)* with dropouts between (the
    classifier's and the type head's shape), or None for any other head."""
    layers = [m for m in head if not isinstance(m, nn.Dropout)]
    linears = layers[::2]
    if not all(isinstance(m, nn.Linear) for m in linears) or not all(
        isinstance(m, nn.ReLU) for m in layers[1::2]
    ):
        return None
    return linears if len(layers) == 2 * len(linears) - 1 else None


def head_gradcam(linears: list[nn.Linear], feature_map: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of a ReLU MLP head on the globally averaged `feature_map` (N, C, h, w), in
    closed form, so that an ONNX graph (no autograd) carries the heatmap: the gradient of the
    logit with respect to the pooled features is the head's weights chained through its ReLU
    masks, the same at every position of the map (average pooling), so Grad-CAM's channel
    weights are that gradient / (h w) and the map is ReLU(sum_c weight_c * map_c) (N, h, w)."""
    x = feature_map.mean(dim=(2, 3))
    masks = []
    for linear in linears[:-1]:
        x = linear(x)
        masks.append((x > 0).to(x.dtype))
        x = torch.relu(x)
    gradient = linears[-1].weight  # (1, hidden): broadcast over the batch by the first mask
    for linear, mask in zip(reversed(linears[:-1]), reversed(masks), strict=True):
        gradient = (gradient * mask) @ linear.weight
    weights = gradient / (feature_map.shape[2] * feature_map.shape[3])
    return torch.relu((weights[:, :, None, None] * feature_map).sum(dim=1))


def probe_gradcam(probe: LinearProbe, width: int, feature_map: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of a `LinearProbe` whose last `width` inputs are `feature_map` (N, C, h, w)
    mean-pooled, in closed form as `head_gradcam`: the gradient is the probe's weights over
    its scale, the same at every position, so the channel weights are that / (h w)."""
    gradient = probe.input_gradient()[:, -width:]
    weights = gradient / (feature_map.shape[2] * feature_map.shape[3])
    return torch.relu((weights[:, :, None, None] * feature_map).sum(dim=1))


def _cam_heads(bundle: ModelBundle) -> list[str]:
    """The heads whose Grad-CAM the graph can carry, by attribute name ("head", "type_head"):
    one network whose heads read its Grad-CAM layer's map pooled (the backbone's output for
    an MLP head, the deepest probed layer for a `LinearProbe`); [] otherwise."""
    members = bundle.model.members
    if len(members) != 1:
        return []
    network = members[0]
    if network.probe_layers:
        return ["head"] + (["type_head"] if network.type_head is not None else [])
    heads = ["head"] + (["type_head"] if network.type_head is not None else [])
    linears = [_mlp_linears(getattr(network, head)) for head in heads]
    if any(found is None or len(found) < 2 for found in linears):
        return []
    size = int(bundle.preprocessing.image_size)
    probe_image = torch.zeros(1, int(bundle.preprocessing.channels), size, size)
    copy_ = (
        copy.deepcopy(network).to(device="cpu", dtype=torch.float32).eval()
    )  # caller's untouched
    seen: list[torch.Tensor] = []
    handle = copy_.cam_target_layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.inference_mode():
            output = copy_.backbone(probe_image)
    finally:
        handle.remove()
    return heads if seen and seen[-1] is output else []


def _head_cam(network: nn.Module, head: str, feature_map: torch.Tensor) -> torch.Tensor:
    """`probe_gradcam` or `head_gradcam` of one of `network`'s heads (the traced network's
    own modules: a closure over another copy would put its weights in as constants)."""
    module = getattr(network, head)
    if isinstance(module, LinearProbe):
        return probe_gradcam(module, network.probe_widths[-1], feature_map)
    return head_gradcam(_mlp_linears(module), feature_map)


class _ExportedGraph(nn.Module):
    """The exported graph: logit, the one probability formula, the OOD score, and where the
    model allows it the Grad-CAM maps (`head_gradcam`, `probe_gradcam`) from the same pass."""

    def __init__(self, bundle: ModelBundle) -> None:
        super().__init__()
        self.scoring = bundle.scoring_model()
        self.temperature = float(bundle.temperature)
        self.typed = bundle.type_decision is not None
        self.guarded = bundle.guard is not None
        self.cam_heads = _cam_heads(bundle)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps: list[torch.Tensor] = []
        handle = None
        if self.cam_heads:
            layer = self.scoring.classifier.members[0].cam_target_layer
            handle = layer.register_forward_hook(lambda _m, _i, out: maps.append(out))
        try:
            logit, ood_score, type_logit, guard_score, *further = self.scoring(image)
        finally:
            if handle is not None:
                handle.remove()
        outputs = [logit, probability(logit, self.temperature), ood_score]
        if self.typed:
            outputs.append(type_logit)
        if self.guarded:
            outputs.append(guard_score)
        outputs += further  # one logit per further registry output, in the network's order
        network = self.scoring.classifier.members[0]
        outputs += [_head_cam(network, head, maps[-1]) for head in self.cam_heads]
        return tuple(outputs)


def output_names(bundle: ModelBundle) -> list[str]:
    """The graph's outputs, in order: the type's and the guard's only when the model has them,
    then the Grad-CAM maps the graph can carry (`_cam_heads`)."""
    names = [LOGIT_OUTPUT, PROBABILITY_OUTPUT, OOD_OUTPUT]
    if bundle.type_decision is not None:
        names.append(TYPE_OUTPUT)
    if bundle.guard is not None:
        names.append(GUARD_OUTPUT)
    names += [output_named(name).logit_output for name in bundle.model.members[0].further_outputs]
    return names + [CAM_OUTPUT, TYPE_CAM_OUTPUT][: len(_cam_heads(bundle))]


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
        **(
            {
                "extra_outputs": {
                    name: decision.to_payload()
                    for name, decision in bundle.further_decisions.items()
                }
            }
            if bundle.further_decisions
            else {}
        ),
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
            CAM_OUTPUT: "Grad-CAM of the PNEUMONIA logit on the last feature map, (batch, h, w), "
            "unscaled; only where the graph carries it",
            TYPE_CAM_OUTPUT: "the same for the type logit",
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
