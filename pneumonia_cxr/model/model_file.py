"""The self-describing model file: weights plus everything needed to use them correctly.

It is a plain dict of tensors, strings and numbers written with torch.save, so it loads with
`torch.load(weights_only=True)`: no arbitrary object is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pneumonia_cxr import CLASS_NAMES, __version__
from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.model.classifier import PneumoniaNet
from pneumonia_cxr.model.decision import Decision, OperatingPoint, TypeDecision, probability
from pneumonia_cxr.model.ensemble import PneumoniaEnsemble
from pneumonia_cxr.model.guard import LayerGuard
from pneumonia_cxr.model.intended_use import KERMANY_INTENDED_USE, IntendedUse
from pneumonia_cxr.model.ood import OodScorer, ScoringModel
from pneumonia_cxr.storage import atomic_torch_save

FORMAT_NAME = "pneumonia-cxr-model"
FORMAT_VERSION = 3
"""3: a member may carry a pneumonia type head, and the file its `type_decision`, and the file
an applicability guard (`guard`), and a member a linear probe on several layers
(`probe_layers`, written by `adapt`); written only by files that have one of them (any other model
is still written as 2, so older packages read it);
2: a list of members (an ensemble of one or more networks) and optional OOD statistics;
version 1 files (one network at the top level) still load."""
BINARY_FORMAT_VERSION = 2
FINAL_MODEL_NAME = "final_pneumonia_model.pt"


@dataclass
class ModelBundle:
    """A trained model with its preprocessing, decision threshold and provenance."""

    model: PneumoniaNet | PneumoniaEnsemble
    preprocessing: Preprocessing
    threshold: float = 0.5
    threshold_rule: str = "fixed_0.5"
    temperature: float = 1.0
    class_names: tuple[str, ...] = CLASS_NAMES
    config: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    package_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    ood: OodScorer | None = None
    stored_half: bool = False
    """The file keeps float16 weights: a rewrite (recalibration) keeps them so, losslessly."""
    type_decision: TypeDecision | None = None
    """How P(VIRAL | PNEUMONIA) becomes a type; None for a model without a type head."""
    guard: LayerGuard | None = None
    """The applicability guard's feature part (several layers); None in older files, which
    keep their OOD score (`ood`) alone."""
    intended_use: IntendedUse = KERMANY_INTENDED_USE
    further_decisions: dict[str, TypeDecision] = field(default_factory=dict)
    """How each further registry output (`model.outputs`) becomes a class, by name."""

    @property
    def decision(self) -> Decision:
        """The whole decision as one record (what the engines and the service read)."""
        return Decision(
            threshold=float(self.threshold),
            rule=self.threshold_rule,
            temperature=float(self.temperature),
            min_sensitivity=self.extra.get("min_sensitivity"),
            class_names=tuple(self.class_names),
            ood_cutoff=self.ood.cutoff if self.ood is not None else None,
            guard_cutoff=self.guard.cutoff if self.guard is not None else None,
            type=self.type_decision,
            calibration=self.extra.get("calibration"),
            further=dict(self.further_decisions),
        )

    def set_operating_point(self, point: OperatingPoint) -> None:
        """Store a fitted operating point (threshold, rule, target, temperature)."""
        self.threshold, self.threshold_rule = point.threshold, point.rule
        self.temperature = point.temperature
        self.extra.update(val_n=point.fitted_n, min_sensitivity=point.min_sensitivity)

    @property
    def has_type_head(self) -> bool:
        return all(m.has_type_head for m in self.model.members)

    @property
    def backbone_name(self) -> str:
        return self.model.backbone_name

    @property
    def backbone_names(self) -> tuple[str, ...]:
        """One per member (an ensemble may mix backbones that share one preprocessing)."""
        return self.model.backbone_names

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """P(PNEUMONIA) with the stored temperature (`model.decision.probability`)."""
        return probability(logits, self.temperature)

    def scoring_model(self) -> ScoringModel:
        """images -> (logit, OOD score) in one pass: what engines and the ONNX export run."""
        return ScoringModel(self.model, self.ood, self.guard)

    def fingerprint(self) -> str:
        """A short hash of the weights: which model produced a result."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def _member_payload(member: PneumoniaNet, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "backbone": member.backbone_name,
        "head_dims": list(member.head_dims),
        "head_dropouts": list(member.head_dropouts),
        **({"type_head": member.type_head_width} if member.has_type_head else {}),
        **({"further_outputs": list(member.further_outputs)} if member.further_outputs else {}),
        **({"probe_layers": list(member.probe_layers)} if member.probe_layers else {}),
        "state_dict": {
            k: v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu()
            for k, v in member.state_dict().items()
        },
    }


def save_model(bundle: ModelBundle, path: str | Path, *, half: bool = False) -> Path:
    """Write the model file atomically. `half` stores weights as float16 (half the size; the
    caller should fit the threshold on `round_to_half(model)` so the file is what was measured).
    """
    dtype = torch.float16 if half else torch.float32
    typed = any(m.has_type_head for m in bundle.model.members)
    if typed and (not bundle.has_type_head or bundle.type_decision is None):
        raise ValueError("a model with a type head needs one on every member and a type_decision")
    probed = any(m.probe_layers for m in bundle.model.members)
    payload = {
        "format": FORMAT_NAME,
        "format_version": (
            FORMAT_VERSION if typed or probed or bundle.guard is not None else BINARY_FORMAT_VERSION
        ),
        "members": [_member_payload(m, dtype) for m in bundle.model.members],
        "ood": bundle.ood.to_payload() if bundle.ood is not None else None,
        "preprocessing": asdict(bundle.preprocessing),
        "threshold": float(bundle.threshold),
        "threshold_rule": bundle.threshold_rule,
        "temperature": float(bundle.temperature),
        "class_names": list(bundle.class_names),
        "config": bundle.config,
        "data_fingerprint": bundle.data_fingerprint,
        "package_version": bundle.package_version,
        "extra": bundle.extra,
    }
    if typed:
        payload["type_decision"] = bundle.type_decision.to_payload()
    further = set(bundle.model.members[0].further_outputs)
    if further != set(bundle.further_decisions):
        raise ValueError(
            f"further outputs {sorted(further)} need a decision each; "
            f"decisions given: {sorted(bundle.further_decisions)}"
        )
    if further:
        payload["further_decisions"] = {
            name: decision.to_payload() for name, decision in bundle.further_decisions.items()
        }
    if bundle.guard is not None:
        payload["guard"] = bundle.guard.to_payload()
    payload["intended_use"] = bundle.intended_use.to_payload()
    atomic_torch_save(payload, path)
    return Path(path)


@dataclass(frozen=True)
class ModelFile:
    """A model file's checked contents and the SHA-256 of the very bytes they came from (the
    key of its cached ONNX export: a file replaced meanwhile cannot pair old contents with a
    new key)."""

    payload: dict[str, Any]
    sha256: str


def read_model_file(path: str | Path) -> ModelFile:
    """Read and check a model file without building its network (`bundle_from_payload` does,
    `load_model` does both). Raises `ModelFileError` for a missing, unreadable, foreign or
    newer file; an inconsistent one is only found when it is built."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found; train one with `pneumonia-cxr train`")
    data = path.read_bytes()
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, random bytes
        raise ModelFileError(
            f"{path}: not a readable pneumonia-cxr model file ({type(error).__name__}: "
            f"{(str(error).splitlines() or [''])[0][:200]}). It may be truncated, corrupt, or from "
            "another program; use the final_pneumonia_model.pt of a training run."
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path}: this is not a pneumonia-cxr model file (a foreign checkpoint?). "
            "Use the final_pneumonia_model.pt written by `pneumonia-cxr train`."
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by a newer pneumonia-cxr (format {payload['format_version']}); "
            "upgrade the package"
        )
    return ModelFile(payload, hashlib.sha256(data).hexdigest())


def round_to_half(model: torch.nn.Module) -> torch.nn.Module:
    """Round floating weights to float16 and back, in place: what `save_model(half=True)` keeps."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model


def _build_member(entry: dict[str, Any]) -> PneumoniaNet:
    member = PneumoniaNet(
        entry["backbone"],
        weights="none",
        head_dims=tuple(entry["head_dims"]),
        head_dropouts=tuple(entry["head_dropouts"]),
        type_head=entry.get("type_head"),
        further_outputs=tuple(entry.get("further_outputs", ())),
        probe_layers=tuple(entry.get("probe_layers", ())),
    )
    member.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in entry["state_dict"].items()}
    )
    return member


def _build_model(payload: dict[str, Any]) -> PneumoniaNet | PneumoniaEnsemble:
    """Version 1: one network at the top level; version 2: a list of members."""
    entries = payload.get("members", [payload])
    if not entries:
        raise ValueError("the file lists no member network")
    members = [_build_member(entry) for entry in entries]
    return members[0] if len(members) == 1 else PneumoniaEnsemble(members)


def load_model(path: str | Path) -> ModelBundle:
    """Rebuild the model and its preprocessing; the weights are never downloaded again."""
    return bundle_from_payload(read_model_file(path).payload, path)


def bundle_from_payload(payload: dict[str, Any], path: str | Path) -> ModelBundle:
    """The model of a `read_model_file` payload; `path` names the file in errors."""
    try:
        model = _build_model(payload)
        preprocessing = Preprocessing.from_dict(payload["preprocessing"])
        ood = OodScorer.from_payload(payload["ood"]) if payload.get("ood") else None
        if ood is not None:
            ood.check_matches(model)
        heads = {m.has_type_head for m in model.members}
        if len(heads) > 1:
            raise ValueError("some members have a pneumonia type head and some do not")
        type_decision = None
        if heads == {True}:
            type_decision = TypeDecision.from_payload(payload["type_decision"])
        guard = LayerGuard.from_payload(payload["guard"]) if payload.get("guard") else None
        if guard is not None:
            guard.check_matches(model.members[0])
        intended_use = IntendedUse.from_payload(payload.get("intended_use"))
        further_decisions = {
            name: TypeDecision.from_payload(payload["further_decisions"][name])
            for name in model.members[0].further_outputs
        }
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as error:
        raise ModelFileError(
            f"{path}: model file is incomplete or inconsistent ({error})"
        ) from error
    model.eval()
    return ModelBundle(
        model=model,
        preprocessing=preprocessing,
        threshold=payload["threshold"],
        threshold_rule=payload["threshold_rule"],
        temperature=payload.get("temperature", 1.0),
        class_names=tuple(payload["class_names"]),
        config=payload.get("config", {}),
        data_fingerprint=payload.get("data_fingerprint", ""),
        package_version=payload.get("package_version", "unknown"),
        extra=payload.get("extra", {}),
        ood=ood,
        type_decision=type_decision,
        guard=guard,
        intended_use=intended_use,
        further_decisions=further_decisions,
        stored_half=any(
            tensor.dtype == torch.float16
            for entry in payload.get("members", [payload])
            for tensor in entry["state_dict"].values()
        ),
    )
