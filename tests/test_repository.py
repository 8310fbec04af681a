"""Large-file guard: no weights, no data images, nothing big is ever committed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000
WEIGHT_SUFFIXES = {".pt", ".pth", ".ckpt", ".onnx", ".safetensors", ".h5", ".bin"}
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom"}


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines()]


SHIPPED_MAX_BYTES = 50_000_000


def test_no_weights_no_data_images_no_large_files() -> None:
    """The one exception: the shipped model and its ONNX twin, each at most 50 MB and pinned
    by its sha256."""
    from pneumonia_cxr.data.split import file_sha256
    from pneumonia_cxr.model import shipped

    files = _tracked()
    assert files
    pinned = {
        shipped.WEIGHTS_DIR / shipped.SHIPPED_MODEL_FILE: shipped.SHIPPED_MODEL_SHA256,
        shipped.WEIGHTS_DIR / shipped.SHIPPED_ONNX_FILE: shipped.SHIPPED_ONNX_SHA256,
    }
    weights = sorted(f for f in files if f.suffix.lower() in WEIGHT_SUFFIXES)
    assert weights in ([], sorted(pinned))
    for model in weights:
        assert model.stat().st_size <= SHIPPED_MAX_BYTES
        assert file_sha256(model) == pinned[model]
    files = [f for f in files if f not in pinned]
    # Images only as small figures under assets/ (plots, the Grad-CAM grid), never data.
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    assert all(f.parent == ROOT / "assets" for f in images), images
    assert not [f for f in files if f.is_file() and f.stat().st_size > MAX_BYTES]
