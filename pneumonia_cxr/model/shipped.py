"""The detector that ships inside the package, pinned by its sha256 (as torchxrayvision pins its
weight files): every command uses it when no --model_path is given (`resolve_model_path`).

It ships twice: the PyTorch model file, and its ONNX export (`pneumonia-cxr export`, byte for
byte: tests/test_light_install.py), which the light install (no PyTorch) scores with and the
full install uses as the model file's export instead of writing one at first use.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

from pneumonia_cxr.data.split import file_sha256
from pneumonia_cxr.errors import ModelFileError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SHIPPED_MODEL_FILE = "pneumonia_cxr_effnet_lite0_typed.pt"
SHIPPED_METRICS_FILE = "pneumonia_cxr_effnet_lite0_typed.test_metrics.json"
"""Its evaluation on the official test split (a copy of results/kermany_test/metrics.json)."""
SHIPPED_MODEL_SHA256: str | None = (
    "2094dfec4980348bbfd652b76e961d657959cc9fadbf8428c925f04a763d5809"
)
"""None until a model is committed: then every load checks the file against this digest."""
SHIPPED_ONNX_FILE = "pneumonia_cxr_effnet_lite0_typed.onnx"
SHIPPED_ONNX_SHA256 = "4596e95be1beb8098cd30c1dfdddb24d33e5e0e7e3fbda222ed6a86c2e4bcb6d"
"""The export of the shipped model file, pinned the same way."""


def is_shipped_model(path: str | Path) -> bool:
    return Path(path).resolve() in (
        WEIGHTS_DIR / SHIPPED_MODEL_FILE,
        WEIGHTS_DIR / SHIPPED_ONNX_FILE,
    )


def default_model_path() -> Path:
    """The shipped model, after checking it is the one this version of the code pins: the
    PyTorch file, or its ONNX export where PyTorch is not installed (the light install).

    Raises:
        ModelFileError: the package ships no model, the file is missing, or its sha256 differs
            (a damaged install or a replaced file): never a silent fallback to another model.
    """
    if importlib.util.find_spec("torch") is None:
        return shipped_onnx_path()
    return _checked(WEIGHTS_DIR / SHIPPED_MODEL_FILE, SHIPPED_MODEL_SHA256)


def shipped_onnx_path() -> Path:
    """The shipped model's ONNX export, checked against its pinned sha256."""
    return _checked(WEIGHTS_DIR / SHIPPED_ONNX_FILE, SHIPPED_ONNX_SHA256)


def _checked(path: Path, pinned: str | None) -> Path:
    if pinned is None:
        raise ModelFileError(
            "this version of pneumonia-cxr ships no trained model yet; pass --model_path "
            "(a final_pneumonia_model.pt from `pneumonia-cxr train`)"
        )
    if not path.is_file():
        raise ModelFileError(
            f"{path}: the shipped model file is missing; reinstall the package "
            "(`pip install --force-reinstall pneumonia-cxr`) or pass --model_path"
        )
    actual = pinned_file_sha256(path)
    if actual != pinned:
        raise ModelFileError(
            f"{path}: sha256 {actual[:16]}... differs from the pinned "
            f"{pinned[:16]}...; the file is damaged or was replaced. "
            "Reinstall the package or pass --model_path"
        )
    return path


def pinned_file_sha256(path: Path) -> str:
    """The file's sha256, computed once per file state (size, mtime): the shipped files are
    checked by `default_model_path` and again when the `.pt` is opened (`Predictor.open`)."""
    stat = path.stat()
    return _sha256_of(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def resolve_model_path(model_path: str | Path | None) -> Path:
    """The one answer to "no --model_path given": the model file asked for, else the shipped
    one (checked against its pinned sha256), said on stderr so a user knows which answers."""
    if model_path is not None:
        return Path(model_path)
    path = default_model_path()
    print(f"model: {path} (shipped with pneumonia-cxr)", file=sys.stderr)
    return path
