"""One configuration object per run, saved as JSON in the run folder and inside the model file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)
CAFFE_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)
"""Keras' "caffe" input of its ResNet-50 weights: BGR, 0-255, minus these means, no scaling."""
BACKBONE_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "resnet50": (IMAGENET_MEAN, IMAGENET_STD),
    "resnet18": (IMAGENET_MEAN, IMAGENET_STD),
    # caffe input on the 0-1 scale the contract starts from: (x - m / 255) / (1 / 255).
    "resnet50_keras": (tuple(m / 255 for m in CAFFE_MEAN_BGR), (1 / 255,) * 3),
    "densenet121": (IMAGENET_MEAN, IMAGENET_STD),
    # TF's (x - 127) / 128 input scaling of the EfficientNet-Lite weights: mean = std = 0.5.
    **{f"efficientnet_lite{k}": (_HALF, _HALF) for k in range(3)},
}
"""(mean, std) of each registered backbone's pretrained weights. Here, without PyTorch, so that
an ONNX model's contract is checked in the light install; `model.backbones` registers from it."""

T = TypeVar("T")

NORMALIZATIONS: tuple[str, ...] = ("imagenet", "unit")
TYPE_HEAD_MODES: tuple[str, ...] = ("off", "on", "auto")
MONITORS: tuple[str, ...] = ("val_auc", "val_type_auc", "val_mean_auc", "val_loss")
VALIDATIONS: tuple[str, ...] = ("patient", "official")
PRESETS: tuple[str, ...] = ("reference", "reference_protocol")


def monitor_mode(monitor: str) -> str:
    """ "min" for a loss, "max" for an AUC: how checkpoints, early stopping and the plateau
    compare epochs."""
    return "min" if monitor.endswith("loss") else "max"


ADAPT_MIN_SENSITIVITY = 0.90
"""`adapt`'s default target sensitivity (the issue's measured recipe reached it on a site)."""


@dataclass
class Preprocessing:
    """What turns a loaded grayscale image into model input; stored in every model file.

    `normalization` is "imagenet" (mean/std of the pretrained weights) or "unit" (the
    reference's plain 1/255 scaling). Images are squashed to a square, as the reference does.
    """

    image_size: int = 224
    normalization: str = "imagenet"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channels: int = 3
    resize: str = "squash"
    jpeg_quality: int = 0
    """After resizing, re-encode as JPEG at this quality (0 = off). The public 224-px copies are
    JPEG q75; a model that learned from them answers the same on an uncompressed original once
    the original goes through the same compression (benchmarks/resolution_agreement.py)."""

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, not {self.normalization!r}"
            )
        if self.normalization == "unit":
            self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if not all(self.std):
            raise ValueError(f"std must be non-zero in every channel, not {self.std}")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 0..100 (0 = off), not {self.jpeg_quality}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        """From the JSON/model-file form (lists for tuples); unknown keys are an error."""
        return _build(cls, raw)


@dataclass
class AugmentConfig:
    """Train-only augmentation as in the reference (Keras ImageDataGenerator-style ranges)."""

    rotation_degrees: float = 15.0
    width_shift: float = 0.1
    height_shift: float = 0.1
    zoom: float = 0.1
    horizontal_flip: bool = True
    crop_scale_min: float = 1.0
    """Random resized crop keeping this share of the area at least; 1.0 = off."""
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    """Random gamma in [1 - gamma, 1 + gamma]; 0 = off."""
    blur_prob: float = 0.0
    noise_std: float = 0.0
    jpeg_quality_min: int = 0
    """Re-encode as JPEG at a random quality in [this, 100]; 0 = off."""
    resample_jitter: bool = False
    """Resize with a random filter (bilinear, nearest, bicubic) instead of always bilinear."""
    frame_fill_prob: float = 0.0
    """With this probability, fill a band of random width (up to `frame_fill_max` of the side)
    along each edge with the image's mean: the frame (markers, collimation, shoulders) stops
    being a reliable cue (issue 18's shortcut audit); 0 = off."""
    frame_fill_max: float = 0.2


@dataclass
class DataConfig:
    dataset_path: str | None = None
    image_size: int = 224
    normalization: str = "imagenet"
    validation: str = "patient"
    """"patient": a patient-level share (`val_fraction`) of train + val; "official": the
    official val folder as it is (16 Kermany images: the reference's early stopping)."""
    val_fraction: float = 0.15
    split_seed: int | None = None
    """Seed of the patient-level split; None = the training seed. Runs meant for one ensemble
    share it (their threshold is fitted on validation images no member trained on)."""
    jpeg_quality: int = 0
    """Stored in the model's Preprocessing: every image is JPEG re-encoded at this quality after
    resizing, in training, validation and inference alike (0 = off)."""
    batch_size: int = 32
    num_workers: int = 2
    balanced_sampler: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.validation not in VALIDATIONS:
            raise ValueError(f"validation must be one of {VALIDATIONS}, not {self.validation!r}")


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    weights: str = "imagenet"
    head_dims: tuple[int, int] = (512, 256)
    head_dropouts: tuple[float, float] = (0.5, 0.3)
    unfreeze_layers: int = 30
    """Stage 2 unfreezes this many of the backbone's top layers; -1 unfreezes all."""
    init_from: str | None = None
    """A trained model file whose network (and preprocessing) this run starts from."""
    type_head: str = "off"
    """The bacterial-vs-viral head (issue 27): "on" (the training split must carry both types),
    "auto" (when it does), "off"."""

    def __post_init__(self) -> None:
        if self.type_head not in TYPE_HEAD_MODES:
            raise ValueError(f"type_head must be one of {TYPE_HEAD_MODES}, not {self.type_head!r}")


@dataclass
class TrainConfig:
    stage1_epochs: int = 8
    stage2_epochs: int = 5
    stage1_lr: float = 1e-4
    stage2_lr: float = 1e-5
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay."""
    label_smoothing: float = 0.0
    """BCE targets become y * (1 - s) + s / 2: less extreme logits, which transfer better."""
    monitor: str = "val_auc"
    """Best checkpoint, early stopping and the LR plateau follow it: "val_auc" (pneumonia),
    "val_type_auc" or "val_mean_auc" (the mean of both; needs a type head)."""
    type_loss_weight: float = 1.0
    """Weight of the type head's BCE beside the pneumonia BCE."""
    early_stopping_patience: int = 3
    lr_patience: int = 1
    lr_factor: float = 0.2
    class_weights: bool = True
    seed: int = 42
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    threshold_rule: str = "max_specificity_at_sensitivity"
    min_sensitivity: float = 0.95
    calibrate: bool = False
    output_dir: str = "outputs"
    run_name: str | None = None
    limit_train_batches: float | int | None = None
    limit_val_batches: float | int | None = None

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, not {self.monitor!r}")


@dataclass
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015): the BCE target of each training image is
    (1 - alpha) * its label + alpha * the teacher's probability for it. The teacher's
    probabilities are computed once, on unaugmented images, and kept in the run folder."""

    teacher: str | None = None
    """The teacher model file; None = plain training."""
    teacher_sha256: str = ""
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], not {self.alpha}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Atomically: `--resume` reads it back, so a kill mid-write must leave none or all."""
        from pneumonia_cxr.storage import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        return _build(cls, raw)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def demo_config(data_dir: str | Path, output_dir: str, run_name: str = "demo") -> RunConfig:
    """The `make demo` preset: a few minutes on 2 CPU cores, with offline ImageNet weights."""
    config = RunConfig()
    config.data.dataset_path = str(data_dir)
    config.data.image_size, config.data.batch_size = 128, 32
    config.model.backbone, config.model.weights = "efficientnet_lite0", "imagenet"
    config.model.unfreeze_layers = -1
    config.train.stage1_epochs, config.train.stage2_epochs = 3, 4
    config.train.stage1_lr, config.train.stage2_lr = 1e-3, 3e-4
    config.train.output_dir, config.train.run_name = output_dir, run_name
    return config


REFERENCE_UNFROZEN_LAYERS = 18
"""The reference unfreezes Keras' top 30 layers of its 175-layer ResNet-50 base: all of stage 5
but its first block's first convolution and BatchNorm (10 + 10 + 10 of 12 layers, counting
activations and adds). Here a layer is one with parameters, so the same set is 18."""


def preset_config(name: str) -> RunConfig:
    """A named recipe (`train --preset`), before any explicit flag changes it.

    "reference": the reference as written: Keras ResNet-50 with ImageNet weights, inputs scaled
    by 1/255 (which does not match those weights' own caffe preprocessing: the reference did
    this), its head, 8 + 5 epochs at 1e-4 / 1e-5 with the top 30 Keras layers unfrozen, class
    weights, its augmentation ranges, early stopping and LR plateau on the loss of the official
    16-image val folder, threshold 0.5. "reference_protocol": the same network under this
    project's protocol: caffe preprocessing, patient-level validation split, checkpoints on
    validation AUC, the threshold fitted on validation."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    config = RunConfig()
    config.model.backbone, config.model.weights = "resnet50_keras", "imagenet"
    config.model.unfreeze_layers = REFERENCE_UNFROZEN_LAYERS
    config.train.stage1_epochs, config.train.stage2_epochs = 8, 5
    config.train.stage1_lr, config.train.stage2_lr = 1e-4, 1e-5
    if name == "reference":
        config.data.normalization, config.data.validation = "unit", "official"
        config.train.monitor, config.train.threshold_rule = "val_loss", "fixed_0.5"
    return config


def _build(cls: type[T], raw: dict[str, Any]) -> T:
    """Rebuild nested dataclasses from JSON; unknown keys are an error, not silently dropped."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(raw) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        default = getattr(cls(), name)
        if is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = _build(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
