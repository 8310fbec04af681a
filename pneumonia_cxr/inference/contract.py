"""The model file's half of the input contract, checked once when a model is opened."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.config import BACKBONE_NORMALIZATION, Preprocessing
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.model.decision import Decision

MIN_IMAGE_SIZE = 32
"""Smallest model input the registered backbones accept (five stride-2 stages: 32 -> 1 px)."""

SUPPORTED_RESIZE: frozenset[str] = frozenset({"squash"})
"""Resize modes `data.preprocess.resize` implements; a model file asking for another is refused."""

_MEAN_STD_TOLERANCE = 1e-6


class DescribedModel(Protocol):
    """What the contract reads: a `ModelBundle` or an ONNX engine's metadata."""

    preprocessing: Preprocessing
    decision: Decision

    @property
    def backbone_names(self) -> tuple[str, ...]: ...


def check_model_contract(model: DescribedModel, source: str | Path = "model file") -> None:
    """Refuse a model file whose stored preprocessing cannot be right for the data it meets.

    The check is concrete, because the data side imposes little: every image is decoded to
    grayscale by `load_xray` and resized to the model's size, so any image size and any of
    JPEG/PNG/DICOM works. What can be wrong is the model file's half of the contract:

    - class names: they must be exactly `CLASS_NAMES` in that order, the classes and label
      indices that dataset discovery produces (a file trained with other classes, or with the
      indices swapped, would turn every probability into that of the wrong class);
    - channels: 3, since every registered backbone takes RGB input (gray replicated);
    - size: at least `MIN_IMAGE_SIZE` pixels; resize mode one the transforms implement;
    - normalization "imagenet": mean and std equal (to 1e-6) those
      `config.BACKBONE_NORMALIZATION` lists for the pretrained weights of every member's
      backbone (an ensemble whose members disagree on preprocessing is refused here);
      normalization "unit": mean 0, std 1.

    Raises:
        ModelFileError: naming the file, the mismatch and what to do.
    """
    problems = _contract_problems(model)
    if problems:
        raise ModelFileError(
            f"{source}: its preprocessing does not match this data and backbone "
            f"({'; '.join(problems)}). Retrain with `pneumonia-cxr train`, or use the "
            "unmodified final_pneumonia_model.pt of a run."
        )


def _contract_problems(model: DescribedModel) -> list[str]:
    pre = model.preprocessing
    problems = []
    class_names = model.decision.class_names
    if tuple(class_names) != tuple(CLASS_NAMES):
        problems.append(
            f"class names {list(class_names)} differ from the dataset's classes "
            f"{list(CLASS_NAMES)} (index 1 = positive)"
        )
    if pre.channels != 3:
        problems.append(f"channels {pre.channels}, but the backbones take 3")
    if int(pre.image_size) < MIN_IMAGE_SIZE:
        problems.append(f"image_size {pre.image_size} is below {MIN_IMAGE_SIZE} pixels")
    if pre.resize not in SUPPORTED_RESIZE:
        problems.append(f"resize {pre.resize!r} is not one of {sorted(SUPPORTED_RESIZE)}")
    for backbone in dict.fromkeys(model.backbone_names):
        problems += _normalization_problems(pre, backbone)
    return problems


def _normalization_problems(pre: Preprocessing, backbone: str) -> list[str]:
    if pre.normalization == "imagenet":
        if backbone not in BACKBONE_NORMALIZATION:
            return [f"unknown backbone {backbone!r} (known: {sorted(BACKBONE_NORMALIZATION)})"]
        mean, std = BACKBONE_NORMALIZATION[backbone]
        expected = {"mean": mean, "std": std}
    else:
        expected = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    problems = []
    for name, values in expected.items():
        stored = getattr(pre, name)
        if len(stored) != len(values) or any(
            abs(a - b) > _MEAN_STD_TOLERANCE for a, b in zip(stored, values, strict=False)
        ):
            problems.append(
                f"{name} {list(stored)} differs from {list(values)}, the {pre.normalization} "
                f"normalization of backbone {backbone}"
            )
    return problems
