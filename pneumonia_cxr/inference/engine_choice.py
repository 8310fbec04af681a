"""Which engine scores a model file: the one device and engine policy, written once.

On the CPU an exported graph (OpenVINO, else ONNX Runtime; the shipped model's pinned ONNX twin
without reading its `.pt`) gives PyTorch's labels several times faster; PyTorch runs on a GPU,
for Grad-CAM, or when asked. A failing fast path falls back to the next one under "auto", never
failing a prediction (`_fast_or_fallback`: the one fallback).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from glob import glob
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.inference import AUTO_CPU_ENGINES, ENGINES
from pneumonia_cxr.inference.engines import (
    Engine,
    OnnxEngine,
    OpenVinoEngine,
    cached_export,
    cached_onnx_engine,
    file_export_path,
)
from pneumonia_cxr.model.onnx_format import FULL_INSTALL_HINT

if TYPE_CHECKING:
    from pneumonia_cxr.model.model_file import ModelBundle

log = logging.getLogger(__name__)

OPEN_ERRORS = (ImportError, OSError, RuntimeError, ValueError, ModelFileError)
"""What a runtime that cannot open a graph raises (missing package, bad file, unsupported op)."""


def _onnx_file_engine(path: Path, runtime: str) -> OnnxEngine:
    return OpenVinoEngine(path) if runtime == "openvino" else OnnxEngine(path)


def _first_runtime(runtimes: Sequence[str], open_one: Any) -> OnnxEngine:
    """The first runtime that opens; the last one's error when none does."""
    for runtime in runtimes[:-1]:
        try:
            return open_one(runtime)
        except (ImportError, OSError, RuntimeError, ValueError, ModelFileError) as error:
            log.info("%s unavailable (%s); trying %s", runtime, error, runtimes[-1])
    return open_one(runtimes[-1])


def has_cuda_gpu() -> bool:
    """Whether PyTorch is installed and sees a GPU: asked of PyTorch only where a GPU driver
    shows a device (NVIDIA, WSL2's /dev/dxg, ROCm's /dev/kfd; PNEUMONIA_CXR_ASK_TORCH_FOR_GPU=1
    asks anyway), so a CPU machine never pays PyTorch's import (1-2 s) to learn no."""
    if importlib.util.find_spec("torch") is None:
        return False
    devices = glob("/dev/nvidia[0-9]*") + glob("/dev/dxg") + glob("/dev/kfd")
    if not devices and not os.environ.get("PNEUMONIA_CXR_ASK_TORCH_FOR_GPU"):
        return False
    import torch

    return torch.cuda.is_available()


def _on_cpu(device: Any) -> bool:
    """The one device policy: the device asked for, else the GPU when there is one, else CPU."""
    if device is None:
        return not has_cuda_gpu()
    return str(device).split(":")[0] == "cpu"


def _torch_engine(bundle: ModelBundle, device: Any) -> Engine:
    from pneumonia_cxr.inference.torch_engine import TorchEngine

    return TorchEngine(bundle, device)


def _shipped_twin(path: Path) -> Path | None:
    """The shipped ONNX export when `path` is the shipped model file (both pinned): scoring it
    on the CPU then reads no `.pt` and imports no PyTorch (a second of every start)."""
    from pneumonia_cxr.model import shipped

    if path.suffix.lower() != ".pt" or not shipped.is_shipped_model(path):
        return None
    try:
        if shipped.pinned_file_sha256(path) != shipped.SHIPPED_MODEL_SHA256:
            return None
        return shipped.shipped_onnx_path()
    except (OSError, ModelFileError) as error:
        log.warning("%s; reading the model file instead", error)
        return None


def _require_torch(path: Path) -> None:
    """A `.pt` file is read by PyTorch: say what to do where the light install has none."""
    if importlib.util.find_spec("torch") is None:
        raise ModelFileError(
            f"{path}: a PyTorch model file (.pt) needs the full install ({FULL_INSTALL_HINT}); "
            "this install scores ONNX exports: use the model's .onnx (the shipped model has "
            "one; `pneumonia-cxr export --model_path M` writes one with the full install)"
        )


def _runtimes(engine: str) -> tuple[str, ...]:
    return AUTO_CPU_ENGINES if engine == "auto" else (engine,)


def _fast_or_fallback(
    engine: str,
    open_fast: Callable[[str], OnnxEngine],
    fallback: Callable[[], Engine] | None,
    what: str,
) -> Engine:
    """The first exported-graph runtime that opens; under "auto", `fallback()` (PyTorch) when
    none does and there is one: same labels either way, only slower."""
    try:
        return _first_runtime(_runtimes(engine), open_fast)
    except OPEN_ERRORS as error:
        if engine != "auto" or fallback is None:
            raise
        log.warning("%s: %s; predicting with PyTorch", what, error)
        return fallback()


def engine_for_file(
    model_path: str | Path, *, engine: str = "auto", device: Any = None, gradcam: bool = False
) -> Engine:
    """The engine `Predictor.open` scores a model file with (see the module docstring). A
    `.pt` file whose export is cached opens without building its PyTorch network."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    path = Path(model_path)
    if path.suffix.lower() == ".onnx":
        if engine == "torch" or gradcam:
            raise ModelFileError(
                f"{path}: an ONNX export runs without PyTorch, so without the PyTorch engine "
                "and Grad-CAM overlays; for those use the .pt model file with the full "
                f"install ({FULL_INSTALL_HINT})"
            )
        return _first_runtime(_runtimes(engine), lambda r: _onnx_file_engine(path, r))
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found; train one with `pneumonia-cxr train`")
    fast_cpu = engine != "torch" and not gradcam and _on_cpu(device)
    if fast_cpu and (twin := _shipped_twin(path)) is not None:
        has_torch = importlib.util.find_spec("torch") is not None
        opened = _fast_or_fallback(
            engine,
            lambda r: _onnx_file_engine(twin, r),
            (lambda: None) if has_torch else None,  # None: read the .pt below instead
            "the shipped ONNX twin does not open",
        )
        if opened is not None:
            return opened
    _require_torch(path)
    from pneumonia_cxr.model.model_file import bundle_from_payload, read_model_file

    model_file = read_model_file(path)  # missing, foreign, corrupt: raised before any engine
    bundle = functools.cache(lambda: bundle_from_payload(model_file.payload, path))
    export = file_export_path(model_file.sha256)
    if not export.is_file():
        bundle()  # no export stands in: build now, so an inconsistent file fails here, once
    return engine_for_bundle(
        bundle,
        lambda runtime: cached_export(export, bundle, runtime=runtime),
        device,
        engine=engine,
        gradcam=gradcam,
    )


def engine_for_bundle(
    bundle: Callable[[], ModelBundle],
    open_export: Callable[[str], OnnxEngine] | None = None,
    device: Any = None,
    *,
    engine: str,
    gradcam: bool,
) -> Engine:
    """The one engine policy: PyTorch when asked, for Grad-CAM, or on a GPU under "auto";
    else the first exported-graph runtime that opens, and under "auto" PyTorch when none
    does. `bundle()` is only called when PyTorch runs or an export must be made."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if open_export is None:
        open_export = lambda runtime: cached_onnx_engine(bundle(), runtime=runtime)  # noqa: E731
    if engine == "torch" or gradcam or (engine == "auto" and not _on_cpu(device)):
        return _torch_engine(bundle(), device)
    return _fast_or_fallback(
        engine,
        open_export,
        lambda: _torch_engine(bundle(), device),
        "no exported-graph engine opens",
    )
