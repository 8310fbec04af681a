"""Transforms from configuration, class weights, and the DataModule on synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pneumonia_cxr.config import AugmentConfig, DataConfig, Preprocessing
from pneumonia_cxr.data.datamodule import XrayDataModule, balanced_class_weights
from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.data.split import make_patient_split
from pneumonia_cxr.data.transforms import build_transforms


def _gray(h: int = 60, w: int = 90) -> torch.Tensor:
    return torch.arange(h * w, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(1, h, w)


def test_eval_transform_is_deterministic_and_shaped() -> None:
    transform = build_transforms(Preprocessing(image_size=32))
    first, second = transform(_gray()), transform(_gray())
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, second)
    std = torch.tensor(Preprocessing().std).view(3, 1, 1)
    mean = torch.tensor(Preprocessing().mean).view(3, 1, 1)
    gray = first * std + mean  # undo normalization: the three channels are one gray image
    assert torch.allclose(gray[0], gray[1], atol=1e-6) and torch.allclose(
        gray[1], gray[2], atol=1e-6
    )


@pytest.mark.parametrize(
    ("normalization", "pixel", "expected_channel0"),
    [
        ("imagenet", 255, (1.0 - 0.485) / 0.229),
        ("imagenet", 0, (0.0 - 0.485) / 0.229),
        ("unit", 255, 1.0),
        ("unit", 51, 0.2),
    ],
)
def test_normalization_values(normalization: str, pixel: int, expected_channel0: float) -> None:
    image = torch.full((1, 8, 8), pixel, dtype=torch.uint8)
    out = build_transforms(Preprocessing(image_size=8, normalization=normalization))(image)
    assert out[0].mean().item() == pytest.approx(expected_channel0, abs=1e-5)


def test_squash_resize_ignores_aspect_ratio() -> None:
    out = build_transforms(Preprocessing(image_size=16))(_gray(20, 200))
    assert out.shape == (3, 16, 16)


def test_train_augmentation_is_random_but_seeded() -> None:
    transform = build_transforms(Preprocessing(image_size=32), AugmentConfig(rotation_degrees=20))
    torch.manual_seed(0)
    a = transform(_gray())
    torch.manual_seed(0)
    b = transform(_gray())
    c = transform(_gray())
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_no_augmentation_configured_means_identity_geometry() -> None:
    off = AugmentConfig(0, 0, 0, 0, False)
    assert torch.equal(
        build_transforms(Preprocessing(image_size=32), off)(_gray()),
        build_transforms(Preprocessing(image_size=32))(_gray()),
    )


@pytest.mark.parametrize(
    ("labels", "expected"),
    [([0, 1], (1.0, 1.0)), ([0, 1, 1, 1], (2.0, 2 / 3)), ([0] * 3 + [1] * 7, (10 / 6, 10 / 14))],
)
def test_balanced_class_weights(labels: list[int], expected: tuple[float, float]) -> None:
    assert balanced_class_weights(labels) == pytest.approx(expected)


def test_class_weights_need_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        balanced_class_weights([1, 1])


def test_datamodule_batches(tiny_synthetic: Path) -> None:
    records = [r for r in list_images(tiny_synthetic) if r.split != "test"]
    split = make_patient_split(records, 0.25, seed=0)
    config = DataConfig(batch_size=8, num_workers=0, balanced_sampler=True)
    dm = XrayDataModule(split.train, split.val, config, Preprocessing(image_size=40))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 40, 40)
    assert set(batch["label"].tolist()) <= {0.0, 1.0}
    assert batch["skipped"].numel() == 0
    val_labels = torch.cat([b["label"] for b in dm.val_dataloader()])
    assert len(val_labels) == len(split.val)


def test_robust_augmentation_changes_intensity_but_keeps_shape_and_range() -> None:
    augment = AugmentConfig(
        brightness=0.2,
        contrast=0.2,
        gamma=0.25,
        blur_prob=1.0,
        noise_std=0.02,
        crop_scale_min=0.75,
        jpeg_quality_min=40,
        resample_jitter=True,
    )
    pre = Preprocessing(image_size=64, normalization="unit")
    train_tf, eval_tf = build_transforms(pre, augment), build_transforms(pre)
    gray = torch.linspace(0, 255, 200 * 180).reshape(1, 200, 180).to(torch.uint8)
    torch.manual_seed(0)
    outputs = [train_tf(gray) for _ in range(4)]
    assert all(o.shape == (3, 64, 64) and o.min() >= 0.0 and o.max() <= 1.0 for o in outputs)
    assert not torch.equal(outputs[0], outputs[1])
    assert torch.equal(eval_tf(gray), eval_tf(gray))  # evaluation stays deterministic


def test_label_smoothing_pulls_targets_toward_one_half() -> None:
    from pneumonia_cxr.model.classifier import PneumoniaNet
    from pneumonia_cxr.training.module import PneumoniaLitModule

    module = PneumoniaLitModule(PneumoniaNet("resnet18"), stage=1, lr=1e-3, label_smoothing=0.2)
    logits, labels = torch.tensor([8.0, -8.0]), torch.tensor([1.0, 0.0])
    plain, smoothed = module._loss(logits, labels), module._loss(logits, labels, 0.2)
    assert smoothed > plain  # a confident, correct logit is penalized once targets are 0.9/0.1


def test_jpeg_quality_step_reproduces_the_copies_compression() -> None:
    """The model file's JPEG step is deterministic, is the same encoder as torchvision's, and is
    absent from files written before it existed (they load with jpeg_quality 0)."""
    from torchvision.transforms.v2 import functional as TF

    gray = torch.randint(0, 256, (1, 300, 260), dtype=torch.uint8)
    plain = Preprocessing(image_size=64, normalization="unit", channels=1)
    step = Preprocessing(image_size=64, normalization="unit", channels=1, jpeg_quality=75)
    resized = build_transforms(plain).transforms[1](gray)
    expected = TF.to_dtype(TF.jpeg(resized, quality=75), torch.float32, scale=True)
    once, twice = build_transforms(step)(gray), build_transforms(step)(gray)
    assert torch.equal(once, twice)
    assert torch.allclose(once, expected)
    assert not torch.allclose(once, build_transforms(plain)(gray))
    raw = {k: v for k, v in step.__dict__.items() if k != "jpeg_quality"}
    assert Preprocessing.from_dict(raw).jpeg_quality == 0
    with pytest.raises(ValueError, match="jpeg_quality"):
        Preprocessing(jpeg_quality=101)


def test_frame_fill_replaces_edge_bands_with_the_mean_and_only_them() -> None:
    from pneumonia_cxr.data.transforms import RandomFrameFill

    torch.manual_seed(1)
    image = torch.rand(3, 60, 50)
    never, always = RandomFrameFill(0.0, 0.2), RandomFrameFill(1.0, 0.2)
    assert torch.equal(never(image), image)
    filled = always(image)
    assert torch.equal(filled[:, 12:48, 10:40], image[:, 12:48, 10:40])  # the centre stays
    changed = (filled != image).any(dim=0)
    assert changed.any()
    assert torch.allclose(filled[:, changed], image.mean().expand(3, int(changed.sum())))
    config = AugmentConfig(frame_fill_prob=0.5)
    names = [type(t).__name__ for t in build_transforms(Preprocessing(), config).transforms]
    assert "RandomFrameFill" in names
