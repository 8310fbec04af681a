"""The self-describing model file: weights plus everything needed to use them correctly.

It is a plain dict of tensors, strings and numbers written with torch.save, so it loads with
`torch.load(weights_only=True)`: no arbitrary object is ever unpickled.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pneumonia_cxr import CLASS_NAMES, __version__
from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.model.classifier import PneumoniaNet

FORMAT_NAME = "pneumonia-cxr-model"
FORMAT_VERSION = 1
FINAL_MODEL_NAME = "final_pneumonia_model.pt"


@dataclass
class ModelBundle:
    """A trained model with its preprocessing, decision threshold and provenance."""

    model: PneumoniaNet
    preprocessing: Preprocessing
    threshold: float = 0.5
    threshold_rule: str = "fixed_0.5"
    temperature: float = 1.0
    class_names: tuple[str, ...] = CLASS_NAMES
    config: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    package_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone_name(self) -> str:
        return self.model.backbone_name

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """P(PNEUMONIA), with the temperature fitted on validation data (1.0 = none)."""
        return torch.sigmoid(logits.float() / self.temperature)

    def fingerprint(self) -> str:
        """A short hash of the weights: which model produced a result."""
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temp file beside the target, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(bundle: ModelBundle, path: str | Path) -> Path:
    model = bundle.model
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "backbone": model.backbone_name,
        "head_dims": [model.head[0].out_features, model.head[3].out_features],
        "head_dropouts": [model.head[2].p, model.head[5].p],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
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
    atomic_torch_save(payload, path)
    return Path(path)


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found; train one with `pneumonia-cxr train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
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
    return payload


def load_model(path: str | Path) -> ModelBundle:
    """Rebuild the model and its preprocessing; the weights are never downloaded again."""
    path = Path(path)
    payload = _read_payload(path)
    try:
        model = PneumoniaNet(
            payload["backbone"],
            weights="none",
            head_dims=tuple(payload["head_dims"]),
            head_dropouts=tuple(payload["head_dropouts"]),
        )
        model.load_state_dict(payload["state_dict"])
        preprocessing = Preprocessing(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in payload["preprocessing"].items()
            }
        )
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
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
    )
