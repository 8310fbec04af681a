"""The engines behind one small protocol: ONNX Runtime and OpenVINO (CPU, fast, no PyTorch)
here, PyTorch (CPU or GPU, Grad-CAM) in `inference.torch_engine`. All take normalized image
batches (numpy) and return logits and OOD scores; everything after that (probability,
decision, flag) happens once, in `inference.predictor`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pneumonia_cxr import __version__
from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.model.decision import Decision
from pneumonia_cxr.model.intended_use import IntendedUse
from pneumonia_cxr.model.onnx_format import (
    CAM_OUTPUT,
    GUARD_OUTPUT,
    INPUT_NAME,
    LOGIT_OUTPUT,
    METADATA_KEY,
    ONNX_FORMAT_NAME,
    ONNX_FORMAT_VERSION,
    OOD_OUTPUT,
    PROBABILITY_OUTPUT,
    require_optional,
)
from pneumonia_cxr.model.outputs import OUTPUTS, answers_after_first
from pneumonia_cxr.storage import cache_root

if TYPE_CHECKING:
    import onnxruntime

    from pneumonia_cxr.model.model_file import ModelBundle

log = logging.getLogger(__name__)


@dataclass
class EngineOutput:
    """Raw outputs of one batch: logits and OOD scores (NaN without statistics), shape (N,)."""

    logits: np.ndarray
    ood_scores: np.ndarray
    guard_scores: np.ndarray | None = None
    """The applicability guard's feature score, shape (N,); None for a model without one."""
    answer_logits: dict[str, np.ndarray] = field(default_factory=dict)
    """The logits (N,) of every answer after P(PNEUMONIA) that the model gives
    (`model.outputs.answers_after_first`), by output name."""


class Engine(Protocol):
    """What a `Predictor` needs from a model, whichever runtime holds it."""

    preprocessing: Preprocessing
    decision: Decision
    """Threshold, rule, temperature, cut-offs, type decision, calibration record."""
    backbone_name: str
    data_fingerprint: str | None
    intended_use: IntendedUse

    @property
    def backbone_names(self) -> tuple[str, ...]: ...

    def score(self, images: np.ndarray) -> EngineOutput: ...

    def fingerprint(self) -> str: ...


def available_cpus() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _session(path: Path, num_threads: int | None) -> onnxruntime.InferenceSession:
    """A CPU session with every graph optimization (conv+BN fusion, NCHWc layouts)."""
    ort = require_optional("onnxruntime")
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


def _read_metadata(
    path: Path, raw: str | None, inputs: list[str], outputs: set[str]
) -> dict[str, Any]:
    """The export's pneumonia-cxr metadata document, checked against the graph's names."""
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
    if inputs != [INPUT_NAME] or not {LOGIT_OUTPUT, PROBABILITY_OUTPUT} <= outputs:
        raise ModelFileError(
            f"{path}: graph inputs {inputs} / outputs {sorted(outputs)} differ from "
            f"['{INPUT_NAME}'] / ['{LOGIT_OUTPUT}', '{PROBABILITY_OUTPUT}']; export it again"
        )
    return meta


class OnnxEngine:
    """An exported model run by ONNX Runtime on CPU, with the same fields as a `ModelBundle`.

    `OpenVinoEngine` runs the same file with OpenVINO; only `_open` and `_run` differ.

    Attributes:
        path: The .onnx file.
        preprocessing, threshold, threshold_rule, temperature, class_names: as stored by
            `export_onnx`, so `data.preprocess.evaluation_transform(preprocessing)` gives its
            input.
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
        raw, inputs, outputs = self._open(num_threads)
        meta = _read_metadata(self.path, raw, inputs, outputs)
        try:
            self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
            self.decision = Decision.from_metadata(meta)
            self.backbone_name = str(meta["backbone"])
            self.backbone_names = tuple(meta.get("backbones") or [self.backbone_name])
            self.data_fingerprint = meta.get("data_fingerprint")
            self.intended_use = IntendedUse.from_payload(meta.get("intended_use"))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(
                f"{self.path}: pneumonia-cxr metadata is incomplete ({error}); export it again"
            ) from error
        self.metadata = meta
        self._has_ood_output = OOD_OUTPUT in outputs
        unknown = set(self.decision.further) - {output.name for output in OUTPUTS}
        if unknown:
            raise ModelFileError(
                f"{self.path}: the model gives answers this package does not know "
                f"({sorted(unknown)}); use the package version that wrote it"
            )
        wanted = [(self.decision.guard_cutoff, GUARD_OUTPUT)]
        wanted += [(True, o.logit_output) for o in answers_after_first(self.decision)]
        for present, name in wanted:
            if present is not None and name not in outputs:
                raise ModelFileError(
                    f"{self.path}: metadata names an output the graph lacks ('{name}'); "
                    "export it again"
                )

    def _open(self, num_threads: int | None) -> tuple[str | None, list[str], set[str]]:
        """Load the graph; return its raw metadata, input names and output names."""
        self._session = _session(self.path, num_threads)
        raw = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        inputs = [node.name for node in self._session.get_inputs()]
        return raw, inputs, {node.name for node in self._session.get_outputs()}

    def _run(self, outputs: list[str], array: np.ndarray) -> list[np.ndarray]:
        return self._session.run(outputs, {INPUT_NAME: array})

    def fingerprint(self) -> str:
        """The weights hash of the model file it was exported from (same as its `fingerprint()`)."""
        return str(self.metadata.get("fingerprint", ""))

    def _as_input(self, images: np.ndarray) -> np.ndarray:
        if hasattr(images, "detach"):  # a torch.Tensor, without importing torch
            images = images.detach().cpu().float().contiguous().numpy()
        array = np.ascontiguousarray(images, dtype=np.float32)
        size = int(self.preprocessing.image_size)
        expected = (int(self.preprocessing.channels), size, size)
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise ValueError(
                f"{self.path.name} takes normalized images of shape (N, {expected[0]}, {size}, "
                f"{size}); got {tuple(array.shape)}. Build them with "
                "Predictor.transform (data.preprocess.evaluation_transform)."
            )
        return array

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and probabilities, both shape (N,), from one pass."""
        array = self._as_input(images)
        if len(array) == 0:
            empty = np.zeros(0, dtype=np.float32)
            return empty, empty.copy()
        logit, probability = self._run([LOGIT_OUTPUT, PROBABILITY_OUTPUT], array)
        return logit.reshape(-1), probability.reshape(-1)

    def score(self, images: np.ndarray) -> EngineOutput:
        """Logits and OOD scores (NaN when the export has no statistics), shape (N,) each."""
        array = self._as_input(images)
        if len(array) == 0:
            return EngineOutput(np.zeros(0, np.float32), np.zeros(0, np.float32))
        outputs = [LOGIT_OUTPUT]
        if self._has_ood_output:
            outputs.append(OOD_OUTPUT)
        if self.decision.guard_cutoff is not None:
            outputs.append(GUARD_OUTPUT)
        answers = {o.name: o.logit_output for o in answers_after_first(self.decision)}
        outputs += list(answers.values())
        values = dict(zip(outputs, self._run(outputs, array), strict=True))
        logits = values[LOGIT_OUTPUT].reshape(-1)
        ood = (
            values[OOD_OUTPUT].reshape(-1) if self._has_ood_output else np.full_like(logits, np.nan)
        )
        guard = values[GUARD_OUTPUT].reshape(-1) if GUARD_OUTPUT in values else None
        logits_of = {name: values[output].reshape(-1) for name, output in answers.items()}
        return EngineOutput(logits, ood, guard, logits_of)

    def graph_outputs(self) -> set[str]:
        """The names of the graph's outputs (`cam` and `type_cam` only where the export could
        carry them: `export.output_names`)."""
        return {node.name for node in self._session.get_outputs()}

    def cams(self, images: np.ndarray, output_name: str = CAM_OUTPUT) -> np.ndarray:
        """The graph's Grad-CAM maps (`export.head_gradcam`) of a batch, raw: shape (N, h, w)
        at the feature map's resolution, before any scaling (`explain.overlay.graph_cams`
        scales them as pytorch-grad-cam does). `output_name`: "cam" (PNEUMONIA) or
        "type_cam" (the type). The light install's heatmaps: no PyTorch, no gradients."""
        if output_name not in self.graph_outputs():
            raise ModelFileError(
                f"{self.path.name}: this export carries no Grad-CAM map '{output_name}' (only a "
                "single network with an MLP head can); heatmaps of it need PyTorch and the .pt "
                "model file"
            )
        array = self._as_input(images)
        if len(array) == 0:
            return np.zeros((0, 0, 0), dtype=np.float32)
        [maps] = self._run([output_name], array)
        maps = np.asarray(maps, dtype=np.float32)
        return maps.reshape(len(array), *maps.shape[-2:])

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Raw PNEUMONIA logits, shape (N,)."""
        return self.run(images)[0]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """P(PNEUMONIA) with the stored temperature applied, shape (N,).

        Unlike `ModelBundle.probabilities`, which takes logits, this takes images: the
        temperature is applied inside the graph.
        """
        return self.run(images)[1]


OPENVINO_PRECISIONS: tuple[str, ...] = ("f32", "bf16")


class OpenVinoEngine(OnnxEngine):
    """The same ONNX export compiled by OpenVINO for the CPU.

    float32 by default: OpenVINO's own default on CPUs with bf16 units (AMX, AVX512-BF16) is
    bfloat16, which changes some labels near the threshold, so reduced precision is only used
    when asked for (`precision="bf16"`), never silently.
    """

    def __init__(
        self, path: str | Path, *, num_threads: int | None = None, precision: str = "f32"
    ) -> None:
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"precision must be one of {OPENVINO_PRECISIONS}, not {precision!r}")
        self.precision = precision
        super().__init__(path, num_threads=num_threads)

    def _open(self, num_threads: int | None) -> tuple[str | None, list[str], set[str]]:
        ov = require_optional("openvino")
        try:
            core = ov.Core()
            model = core.read_model(str(self.path))
            # OpenVINO keeps the ONNX metadata_props under rt_info["framework"] (no `onnx`
            # import: its ml_dtypes costs 0.6 s of every start)
            where = ["framework", METADATA_KEY]
            raw = model.get_rt_info(where).astype(str) if model.has_rt_info(where) else None
            self._compiled = core.compile_model(
                model,
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": self.precision,
                    "INFERENCE_NUM_THREADS": num_threads or available_cpus(),
                    "PERFORMANCE_HINT": "LATENCY",
                },
            )
        except Exception as error:  # protobuf and OpenVINO raise their own types
            first_line = (str(error).splitlines() or [""])[0][:200]
            raise ModelFileError(
                f"{self.path}: OpenVINO cannot read this ONNX model ({type(error).__name__}: "
                f"{first_line}); export it again with `pneumonia-cxr export`."
            ) from error
        inputs = [i.get_any_name() for i in self._compiled.inputs]
        outputs = {name for o in self._compiled.outputs for name in o.get_names()}
        return raw, inputs, outputs

    def graph_outputs(self) -> set[str]:
        return {name for output in self._compiled.outputs for name in output.get_names()}

    def _run(self, outputs: list[str], array: np.ndarray) -> list[np.ndarray]:
        result = self._compiled(array)
        return [np.asarray(result[self._compiled.output(name)]) for name in outputs]


def _readable_by_onnxruntime(path: Path) -> bool:
    try:
        OnnxEngine(path, num_threads=1)
    except (ImportError, ModelFileError):
        return False
    return True


def cached_onnx_engine(
    bundle: ModelBundle,
    cache_dir: str | Path | None = None,
    *,
    num_threads: int | None = None,
    runtime: str = "onnx",
    precision: str = "f32",
) -> OnnxEngine:
    """The fast CPU path for a model in memory: export it once, then run it with ONNX Runtime.

    Why: on CPU, ONNX Runtime runs these networks several times faster than PyTorch eager with
    the same labels (benchmarks/inference_throughput.py), but users hold `.pt` files. The
    export costs seconds, so it is cached under a key of the weights and every metadata field
    (threshold, temperature, preprocessing, OOD cut-off, package version): a recalibrated or
    retrained model never reuses a stale export. A cached file that no longer opens is exported
    again. A model *file* is looked up by its bytes instead (`file_export_path`).

    Args:
        bundle: A loaded model file.
        cache_dir: Folder for the exports; default `<storage.cache_root()>/onnx`.
        num_threads: intra-op threads; default every usable core.
        runtime: "onnx" (ONNX Runtime) or "openvino" (OpenVINO, `precision` "f32" or "bf16").

    Raises:
        ImportError: onnx or the runtime is missing (names the extra to install).
    """
    from pneumonia_cxr.export import onnx_metadata

    key = hashlib.sha256(json.dumps(onnx_metadata(bundle), sort_keys=True).encode()).hexdigest()
    path = _export_dir(cache_dir) / f"model-{key[:16]}.onnx"
    return cached_export(
        path, lambda: bundle, num_threads=num_threads, runtime=runtime, precision=precision
    )


def file_export_path(model_sha256: str, cache_dir: str | Path | None = None) -> Path:
    """Where the export of the model file with these bytes (`model_file.read_model_file`) is
    cached: opening it needs no PyTorch network, which saves about half a second at every start
    (timm's import and the network's construction, paid by one network as by an ensemble). A
    rewritten file (recalibration) is a new key; the key also covers the code that reads model
    files and exports them, so an upgraded package never reuses an export its own code would
    make differently."""
    digest = hashlib.sha256(f"{_export_code_stamp()}:{model_sha256}".encode()).hexdigest()
    return _export_dir(cache_dir) / f"file-{digest[:16]}.onnx"


def _export_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or cache_root() / "onnx")


@functools.cache
def _export_code_stamp() -> str:
    """A digest of this package's version, the library versions and the source of the modules
    that read model files and build and export their networks."""
    import importlib.metadata

    package = Path(__file__).resolve().parents[1]
    sources = [package / "config.py", package / "export.py", *sorted(package.glob("model/*.py"))]
    digest = hashlib.sha256(f"{ONNX_FORMAT_NAME}:{ONNX_FORMAT_VERSION}:{__version__}".encode())
    for library in ("torch", "timm", "onnx"):
        try:
            version = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f":{library}={version}".encode())
    for source in sources:
        digest.update(source.read_bytes())
    return digest.hexdigest()


def cached_export(
    path: Path,
    load: Callable[[], ModelBundle],
    *,
    num_threads: int | None = None,
    runtime: str = "onnx",
    precision: str = "f32",
) -> OnnxEngine:
    """Open the cached export at `path` with the runtime, exporting `load()` there first when
    it is missing or damaged (`load` is only called then)."""

    def engine(path: Path) -> OnnxEngine:
        if runtime == "openvino":
            return OpenVinoEngine(path, num_threads=num_threads, precision=precision)
        return OnnxEngine(path, num_threads=num_threads)

    require_optional("openvino" if runtime == "openvino" else "onnxruntime")
    if path.is_file():
        try:
            return engine(path)
        except ModelFileError:
            if runtime == "openvino" and _readable_by_onnxruntime(path):
                raise  # the export is fine, OpenVINO is not: the caller falls back
            # a damaged cache entry (disk full, killed copy): export it again below
    from pneumonia_cxr.export import export_onnx  # PyTorch: only to write a missing export

    export_onnx(load(), path)
    return engine(path)
