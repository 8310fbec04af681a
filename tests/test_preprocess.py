"""One input contract, two Python implementations: training's PyTorch steps equal torchvision's
bit for bit, scoring's numpy/Pillow steps equal them (exactly without a resize, within one grey
level on a few pixels with one), and scoring never imports torchvision or PyTorch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.data import preprocess
from pneumonia_cxr.data.loader import load_xray
from pneumonia_cxr.data.preprocess import (
    evaluation_stages,
    evaluation_transform,
    jpeg_roundtrip,
    to_unit_float,
)
from pneumonia_cxr.data.transforms import build_transforms
from pneumonia_cxr.data.transforms import jpeg_roundtrip as tensor_jpeg_roundtrip
from pneumonia_cxr.data.transforms import resize as tensor_resize


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


def _grays(real_data_root: Path) -> list[np.ndarray]:
    """Real copies (224 px: the JPEG step), full-resolution originals when CI provides them
    (the resize), and synthetic noise of odd sizes."""
    copies = sorted((real_data_root / "train" / "PNEUMONIA").iterdir())[:3]
    copies += sorted((real_data_root / "train" / "NORMAL").iterdir())[:3]
    grays = [load_xray(path) for path in copies]
    fullres = os.environ.get("PNEUMONIA_CXR_FULLRES")
    if fullres and Path(fullres).is_dir():
        originals = sorted(p for p in Path(fullres).rglob("*.jpeg"))[:3]
        grays += [load_xray(path, min_side=224) for path in originals]
    generator = np.random.default_rng(0)
    for shape in ((1, 300, 260), (1, 97, 450)):
        grays.append(generator.integers(0, 256, shape, dtype=np.uint8))
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
        expected = reference(torch.from_numpy(gray))
        assert torch.equal(training_eval(gray), expected)
        size = pre.image_size
        if gray.shape[1:] != (size, size):
            continue  # the resize: test_scoring_resize_is_within_one_grey_level
        batch = np.stack([per_image(gray), per_image(gray)])
        assert np.array_equal(per_batch(batch)[1], expected.numpy())
        assert np.array_equal(one_image(gray), expected.numpy())
        assert one_image(gray).shape == (pre.channels, size, size)


def test_scoring_resize_is_within_one_grey_level(real_data_root: Path) -> None:
    """Pillow's antialiased bilinear kernel (scoring) and PyTorch's (training) round apart on a
    few pixels; the JPEG step after them is the same codec (Pillow) on both sides."""
    grays = _grays(real_data_root)
    for position, gray in enumerate(grays):
        x_ray = position < len(grays) - 2  # the last two are uniform noise (worst case)
        for size in (64, 224, 240):
            ours = preprocess.resize(gray, size)
            theirs = tensor_resize(torch.from_numpy(gray), size).numpy()
            difference = np.abs(ours.astype(int) - theirs.astype(int))
            assert difference.max() <= 1
            assert not x_ray or (difference > 0).mean() < 0.015
            same = tensor_jpeg_roundtrip(torch.from_numpy(ours), 75).numpy()
            assert np.array_equal(preprocess.jpeg_roundtrip(ours, 75), same)


def test_training_steps_leave_a_label_alone() -> None:
    pre = Preprocessing(image_size=16)
    image, label = build_transforms(pre)(torch.zeros(1, 20, 30, dtype=torch.uint8), 1)
    assert image.shape == (3, 16, 16) and label == 1


def test_steps_refuse_what_they_were_not_made_for() -> None:
    with pytest.raises(ValueError, match=r"\(1, H, W\) uint8"):
        jpeg_roundtrip(np.zeros((3, 8, 8), dtype=np.uint8), 75)
    with pytest.raises(ValueError, match=r"\(1, H, W\) uint8"):
        jpeg_roundtrip(np.zeros((1, 8, 8), dtype=np.float32), 75)
    already_float = np.ones((1, 4, 4), dtype=np.float32)
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


GOLDEN = Path(__file__).parent / "golden" / "preprocessing.json"


@pytest.mark.realdata
def test_both_python_implementations_give_the_golden_vectors(real_data_root: Path) -> None:
    """benchmarks/golden_vectors.py wrote them; the browser's script is held to the same file
    (tests/test_web_browser.py)."""
    import hashlib
    import json

    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.model.shipped import SHIPPED_ONNX_SHA256, shipped_onnx_path

    golden = json.loads(GOLDEN.read_text())
    assert golden["model_onnx_sha256"] == SHIPPED_ONNX_SHA256, "rerun benchmarks/golden_vectors.py"
    predictor = Predictor.open(shipped_onnx_path())
    per_image, per_batch = evaluation_stages(predictor.engine.preprocessing)
    training = build_transforms(predictor.engine.preprocessing)
    digest = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()  # noqa: E731
    for vector in golden["vectors"]:
        path = real_data_root / vector["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == vector["file_sha256"]
        gray = load_xray(path, min_side=predictor.image_size)
        pixels = per_image(gray)
        assert digest(pixels) == vector["uint8_sha256"]
        model_input = per_batch(pixels[None])[0]
        assert digest(model_input) == vector["float32_sha256"]
        assert digest(training(gray).numpy()) == vector["float32_sha256"]
        [result] = predictor.results(predictor.scores(model_input[None]))
        assert result.probability == pytest.approx(vector["probability"], abs=1e-6)
        assert result.p_viral == pytest.approx(vector["p_viral"], abs=1e-6)
        assert result.guard_score == pytest.approx(vector["guard_score"], abs=1e-4)
