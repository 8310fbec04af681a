"""ONNX export of a model file, and an ONNX Runtime predictor that reads it back.

The exported file is self-describing like the `.pt` model file: its metadata carries the
preprocessing, threshold, temperature and class names, so `predict` needs nothing else.

Graph contract (opset `DEFAULT_OPSET` unless asked otherwise):

- input  ``image``: float32 (N, 3, S, S), already normalized by the transforms that
  `build_transforms(preprocessing)` builds; N is dynamic.
- output ``logit``: float32 (N, 1), the network's raw PNEUMONIA logit (what PyTorch returns).
- output ``probability``: float32 (N, 1), ``sigmoid(logit / temperature)`` = P(PNEUMONIA), the
  same formula as `ModelBundle.probabilities`. The temperature is baked into the graph so a
  consumer in another language cannot forget it; it is also in the metadata for reference.

onnx and onnxruntime are optional dependencies (`pip install 'pneumonia-cxr[export]'`); they are
imported only when an ONNX function is called.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pneumonia_cxr import __version__
from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.model.model_file import ModelBundle, load_model

if TYPE_CHECKING:
    import onnxruntime

ONNX_FORMAT_NAME = "pneumonia-cxr-onnx"
ONNX_FORMAT_VERSION = 1
METADATA_KEY = "pneumonia_cxr"
"""The one metadata_props key; its value is the JSON document `_metadata` builds."""

INPUT_NAME = "image"
LOGIT_OUTPUT = "logit"
PROBABILITY_OUTPUT = "probability"

DEFAULT_OPSET = 17
"""Old enough for every current runtime (ONNX Runtime >= 1.14, TensorRT, OpenVINO); ResNet and
EfficientNet need nothing newer."""

INSTALL_HINT = "pip install 'pneumonia-cxr[export]'"


def _require(module: str) -> Any:
    """Import an optional dependency, or say which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"ONNX support needs the optional package {module!r}: {INSTALL_HINT}"
        ) from error


def available_cpus() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class _LogitAndProbability(nn.Module):
    """The exported graph: the classifier plus the temperature-scaled sigmoid."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.model(image)
        return logit, torch.sigmoid(logit / self.temperature)


def _metadata(bundle: ModelBundle) -> dict[str, Any]:
    pre = bundle.preprocessing
    size = int(pre.image_size)
    return {
        "format": ONNX_FORMAT_NAME,
        "format_version": ONNX_FORMAT_VERSION,
        "preprocessing": asdict(pre),
        "threshold": float(bundle.threshold),
        "threshold_rule": bundle.threshold_rule,
        "temperature": float(bundle.temperature),
        "class_names": list(bundle.class_names),
        "backbone": bundle.model.backbone_name,
        "fingerprint": bundle.fingerprint(),
        "data_fingerprint": bundle.data_fingerprint,
        "package_version": __version__,
        "trained_with_package_version": bundle.package_version,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", int(pre.channels), size, size],
            "dtype": "float32",
            "normalized": f"{pre.normalization}: (x / 255 - mean) / std per channel",
        },
        "outputs": {
            LOGIT_OUTPUT: "raw PNEUMONIA logit, shape (batch, 1)",
            PROBABILITY_OUTPUT: "sigmoid(logit / temperature) = P(PNEUMONIA), shape (batch, 1)",
        },
    }


def _trace_to_onnx(bundle: ModelBundle, target: Path, opset: int) -> None:
    """Run torch's TorchScript-based exporter on a CPU float32 copy of the model.

    Why this exporter: torch 2.14's default (`dynamo=True`) needs the onnxscript package, which
    is not a dependency; the TorchScript exporter is built into torch, works offline and gives
    a plain static graph for these convolutional networks. It warns that it is deprecated; the
    warning is silenced here because the user cannot act on it. A copy is exported so the
    caller's model keeps its device, dtype, memory format and train/eval mode.
    """
    model = copy.deepcopy(bundle.model).to(device="cpu", dtype=torch.float32)
    model = model.to(memory_format=torch.contiguous_format).eval()
    wrapper = _LogitAndProbability(model, bundle.temperature).eval()
    size = int(bundle.preprocessing.image_size)
    example = torch.zeros(2, int(bundle.preprocessing.channels), size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            str(target),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[LOGIT_OUTPUT, PROBABILITY_OUTPUT],
            dynamic_axes={
                INPUT_NAME: {0: "batch"},
                LOGIT_OUTPUT: {0: "batch"},
                PROBABILITY_OUTPUT: {0: "batch"},
            },
            opset_version=opset,
            do_constant_folding=True,
        )


def export_onnx(bundle: ModelBundle, path: str | Path, *, opset: int | None = None) -> Path:
    """Write `bundle` as a self-describing ONNX file with a dynamic batch axis.

    The file is checked with `onnx.checker` and written atomically (temp file, then rename), so a
    failed export never leaves a half-written model where `predict` would pick it up.

    Args:
        bundle: A loaded model file (`load_model`).
        path: Target file; must end in ``.onnx`` so `load_predictor` recognizes it.
        opset: ONNX opset to target; default `DEFAULT_OPSET`.

    Returns:
        The path written.

    Raises:
        ValueError: the path does not end in ``.onnx``.
        ImportError: onnx is not installed (names the extra to install).
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{path}: an ONNX model file must end in .onnx so predict recognizes it")
    onnx = _require("onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _trace_to_onnx(bundle, tmp, opset or DEFAULT_OPSET)
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(_metadata(bundle), sort_keys=True)
        proto.doc_string = (
            f"pneumonia-cxr {bundle.model.backbone_name}: input '{INPUT_NAME}' (N,3,S,S) "
            f"normalized float32 -> '{LOGIT_OUTPUT}', '{PROBABILITY_OUTPUT}' (N,1); "
            f"metadata key '{METADATA_KEY}' holds preprocessing and threshold"
        )
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _session(path: Path, num_threads: int | None) -> onnxruntime.InferenceSession:
    """A CPU session with every graph optimization (conv+BN fusion, NCHWc layouts)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or available_cpus()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are not actionable here
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own pybind types for every kind of bad file
        first_line = (str(error).splitlines() or [""])[0][:200]
        raise ModelFileError(
            f"{path}: not a readable ONNX model ({type(error).__name__}: {first_line}). It may "
            "be truncated or corrupt; export it again with "
            "`pneumonia-cxr export --model_path M --format onnx`."
        ) from error


def _read_metadata(path: Path, session: onnxruntime.InferenceSession) -> dict[str, Any]:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT_NAME:
        raise ModelFileError(
            f"{path}: an ONNX model without pneumonia-cxr metadata (exported by another "
            "program?); its preprocessing and threshold are unknown. Export it with "
            "`pneumonia-cxr export --model_path M --format onnx`."
        )
    if meta.get("format_version", 0) > ONNX_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by a newer pneumonia-cxr (ONNX format {meta['format_version']}); "
            "upgrade the package"
        )
    inputs = [node.name for node in session.get_inputs()]
    outputs = {node.name for node in session.get_outputs()}
    if inputs != [INPUT_NAME] or not {LOGIT_OUTPUT, PROBABILITY_OUTPUT} <= outputs:
        raise ModelFileError(
            f"{path}: graph inputs {inputs} / outputs {sorted(outputs)} differ from "
            f"['{INPUT_NAME}'] / ['{LOGIT_OUTPUT}', '{PROBABILITY_OUTPUT}']; export it again"
        )
    return meta


class OnnxPredictor:
    """An exported model run by ONNX Runtime on CPU, with the same fields as a `ModelBundle`.

    Attributes:
        path: The .onnx file.
        preprocessing, threshold, threshold_rule, temperature, class_names: as stored by
            `export_onnx`, so `build_transforms(predictor.preprocessing)` gives its input.
        backbone_name: The backbone the file was exported from.
        metadata: The whole metadata document.
    """

    def __init__(self, path: str | Path, *, num_threads: int | None = None) -> None:
        """Open the file; `num_threads` defaults to every core this process may use."""
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(
                f"{self.path}: ONNX model file not found; write one with "
                "`pneumonia-cxr export --model_path M --format onnx`"
            )
        self._session = _session(self.path, num_threads)
        meta = _read_metadata(self.path, self._session)
        try:
            self.preprocessing = Preprocessing(
                **{
                    key: tuple(value) if isinstance(value, list) else value
                    for key, value in meta["preprocessing"].items()
                }
            )
            self.threshold = float(meta["threshold"])
            self.threshold_rule = str(meta["threshold_rule"])
            self.temperature = float(meta["temperature"])
            self.class_names = tuple(str(name) for name in meta["class_names"])
            self.backbone_name = str(meta["backbone"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(
                f"{self.path}: pneumonia-cxr metadata is incomplete ({error}); export it again"
            ) from error
        self.metadata = meta

    def fingerprint(self) -> str:
        """The weights hash of the model file it was exported from (same as its `fingerprint()`)."""
        return str(self.metadata.get("fingerprint", ""))

    def _as_input(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(images, torch.Tensor):
            images = images.detach().to("cpu", torch.float32).contiguous().numpy()
        array = np.ascontiguousarray(images, dtype=np.float32)
        size = int(self.preprocessing.image_size)
        expected = (int(self.preprocessing.channels), size, size)
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise ValueError(
                f"{self.path.name} takes normalized images of shape (N, {expected[0]}, {size}, "
                f"{size}); got {tuple(array.shape)}. Build them with "
                "build_transforms(predictor.preprocessing)."
            )
        return array

    def run(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and probabilities, both shape (N,), from one pass."""
        array = self._as_input(images)
        if len(array) == 0:
            empty = np.zeros(0, dtype=np.float32)
            return empty, empty.copy()
        logit, probability = self._session.run(
            [LOGIT_OUTPUT, PROBABILITY_OUTPUT], {INPUT_NAME: array}
        )
        return logit.reshape(-1), probability.reshape(-1)

    def logits(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Raw PNEUMONIA logits, shape (N,)."""
        return self.run(images)[0]

    def probabilities(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """P(PNEUMONIA) with the stored temperature applied, shape (N,).

        Unlike `ModelBundle.probabilities`, which takes logits, this takes images: the
        temperature is applied inside the graph.
        """
        return self.run(images)[1]


def default_cache_dir() -> Path:
    """Where `cached_onnx_predictor` keeps its exports: $XDG_CACHE_HOME or ~/.cache."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "pneumonia_cxr" / "onnx"


def cached_onnx_predictor(
    bundle: ModelBundle, cache_dir: str | Path | None = None, *, num_threads: int | None = None
) -> OnnxPredictor:
    """The fast CPU path for a `.pt` model: export it once, then run it with ONNX Runtime.

    Why: on CPU, ONNX Runtime runs these networks several times faster than PyTorch eager with
    the same labels (benchmarks/inference_throughput.py), but users hold `.pt` files. The
    export costs seconds, so it is cached under a key of the weights and every metadata field
    (threshold, temperature, preprocessing, package version): a recalibrated or retrained model
    never reuses a stale export. A cached file that no longer opens is exported again.

    Args:
        bundle: A loaded model file.
        cache_dir: Folder for the exports; default `default_cache_dir()`.
        num_threads: ONNX Runtime intra-op threads; default every usable core.

    Raises:
        ImportError: onnx or onnxruntime is missing (names the extra to install).
    """
    _require("onnxruntime")
    key = hashlib.sha256(json.dumps(_metadata(bundle), sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir or default_cache_dir()) / f"{bundle.model.backbone_name}-{key[:16]}.onnx"
    if path.is_file():
        try:
            return OnnxPredictor(path, num_threads=num_threads)
        except ModelFileError:
            pass  # a damaged cache entry (disk full, killed copy): export it again below
    export_onnx(bundle, path)
    return OnnxPredictor(path, num_threads=num_threads)


def load_predictor(path: str | Path) -> ModelBundle | OnnxPredictor:
    """Open a model by its suffix: ``.onnx`` with ONNX Runtime, anything else as a `.pt` file."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxPredictor(path)
    return load_model(path)
