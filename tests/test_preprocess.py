"""The torchvision-free evaluation input equals torchvision's, and inference never imports it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.data.loader import load_xray
from pneumonia_cxr.data.preprocess import (
    evaluation_stages,
    evaluation_transform,
    jpeg_roundtrip,
    to_unit_float,
)
from pneumonia_cxr.data.transforms import build_transforms


def _torchvision_evaluation(pre: Preprocessing) -> v2.Compose:
    """The evaluation pipeline as it was built before (torchvision's transforms): the models
    shipped so far were fitted through it."""
    size = (pre.image_size, pre.image_size)
    steps = [v2.Resize(size, antialias=True)]
    steps += [v2.JPEG(quality=pre.jpeg_quality)] if pre.jpeg_quality else []
    steps += [v2.ToDtype(torch.float32, scale=True)]
    steps += [v2.RGB() if pre.channels == 3 else v2.Identity()]
    # One value per channel the image has (torchvision broadcast a gray image to three).
    mean, std = list(pre.mean[: pre.channels]), list(pre.std[: pre.channels])
    return v2.Compose([*steps, v2.Normalize(mean=mean, std=std)])


def _grays(real_data_root: Path) -> list[torch.Tensor]:
    """Real copies (224 px: the JPEG step), full-resolution originals when CI provides them
    (the resize), and synthetic noise of odd sizes."""
    copies = sorted((real_data_root / "train" / "PNEUMONIA").iterdir())[:3]
    copies += sorted((real_data_root / "train" / "NORMAL").iterdir())[:3]
    grays = [load_xray(path) for path in copies]
    fullres = os.environ.get("PNEUMONIA_CXR_FULLRES")
    if fullres and Path(fullres).is_dir():
        originals = sorted(p for p in Path(fullres).rglob("*.jpeg"))[:3]
        grays += [load_xray(path, min_side=224) for path in originals]
    generator = torch.Generator().manual_seed(0)
    for shape in ((1, 300, 260), (1, 97, 450)):
        grays.append(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator))
    return grays


@pytest.mark.parametrize(
    "pre",
    [
        Preprocessing(image_size=224, mean=(0.5,) * 3, std=(0.5,) * 3, jpeg_quality=75),
        Preprocessing(image_size=224),
        Preprocessing(image_size=64, normalization="unit", channels=1, jpeg_quality=90),
    ],
    ids=["lite-jpeg75", "imagenet", "unit-gray"],
)
def test_evaluation_input_equals_torchvisions_bit_for_bit(
    real_data_root: Path, pre: Preprocessing
) -> None:
    from torchvision.transforms.v2.functional._geometry import _do_native_uint8_resize_on_cpu

    if not _do_native_uint8_resize_on_cpu(v2.InterpolationMode.BILINEAR):
        pytest.skip("torchvision resizes uint8 through float on this CPU (one grey level off)")
    per_image, per_batch = evaluation_stages(pre)
    reference = _torchvision_evaluation(pre)
    training_eval, one_image = build_transforms(pre), evaluation_transform(pre)
    for gray in _grays(real_data_root):
        expected = reference(gray)
        batch = torch.stack([per_image(gray), per_image(gray)])
        assert torch.equal(per_batch(batch)[1], expected)
        assert torch.equal(one_image(gray), expected)
        assert torch.equal(training_eval(gray), expected)
        assert one_image(gray).shape == (pre.channels, pre.image_size, pre.image_size)


def test_training_steps_leave_a_label_alone() -> None:
    pre = Preprocessing(image_size=16)
    image, label = build_transforms(pre)(torch.zeros(1, 20, 30, dtype=torch.uint8), 1)
    assert image.shape == (3, 16, 16) and label == 1


def test_steps_refuse_what_they_were_not_made_for() -> None:
    with pytest.raises(ValueError, match=r"\(1, H, W\) uint8"):
        jpeg_roundtrip(torch.zeros(3, 8, 8, dtype=torch.uint8), 75)
    with pytest.raises(ValueError, match=r"\(1, H, W\) uint8"):
        jpeg_roundtrip(torch.zeros(1, 8, 8), 75)
    already_float = torch.ones(1, 4, 4)
    with pytest.raises(TypeError, match="uint8"):
        to_unit_float(already_float)  # scaling it again would be silently wrong
    with pytest.raises(ValueError, match="std"):
        Preprocessing(std=(0.2, 0.0, 0.2))


def test_the_inference_path_never_imports_torchvision() -> None:
    """Its import costs 1.2-1.7 s of every `predict` start; a module-level import anywhere on
    the path (CLI, predict, predictor, engines, model files, the service) brings it back."""
    modules = (
        "pneumonia_cxr.cli pneumonia_cxr.predict pneumonia_cxr.inference.predictor "
        "pneumonia_cxr.model.model_file pneumonia_cxr.serve.app pneumonia_cxr.serve.service"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}.split(): importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
