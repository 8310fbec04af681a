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
from pneumonia_cxr.data.preprocess import evaluation_stages, jpeg_roundtrip
from pneumonia_cxr.data.transforms import build_transforms


def _torchvision_evaluation(pre: Preprocessing) -> v2.Compose:
    """The evaluation pipeline as it was built before (torchvision's transforms): the models
    shipped so far were fitted through it."""
    size = (pre.image_size, pre.image_size)
    steps = [v2.Resize(size, antialias=True)]
    steps += [v2.JPEG(quality=pre.jpeg_quality)] if pre.jpeg_quality else []
    steps += [v2.ToDtype(torch.float32, scale=True)]
    steps += [v2.RGB() if pre.channels == 3 else v2.Identity()]
    return v2.Compose([*steps, v2.Normalize(mean=list(pre.mean), std=list(pre.std))])


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
    per_image, per_batch = evaluation_stages(pre)
    reference = _torchvision_evaluation(pre)
    training_eval = build_transforms(pre)
    for gray in _grays(real_data_root):
        expected = reference(gray)
        assert torch.equal(per_batch(per_image(gray)), expected)
        assert torch.equal(training_eval(gray), expected)


def test_jpeg_roundtrip_refuses_what_is_not_one_gray_image() -> None:
    with pytest.raises(ValueError, match=r"\(1, H, W\) uint8"):
        jpeg_roundtrip(torch.zeros(3, 8, 8, dtype=torch.uint8), 75)
    with pytest.raises(ValueError, match=r"\(1, H, W\) uint8"):
        jpeg_roundtrip(torch.zeros(1, 8, 8), 75)


def test_the_inference_path_never_imports_torchvision() -> None:
    """Its import costs ~1.2 s of every `predict` start; a module-level import anywhere on the
    path (CLI, predictor, engines, model files, the service) brings it back."""
    code = (
        "import sys\n"
        "import pneumonia_cxr.cli, pneumonia_cxr.inference.predictor, pneumonia_cxr.serve.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
