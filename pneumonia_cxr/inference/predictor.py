"""The one inference path: a model file -> images -> logits -> probabilities -> decisions.

`Predictor.open` opens a `.pt` or `.onnx` model file, checks its input contract once and picks
the engine and device by one policy (an `.onnx` file on ONNX Runtime or OpenVINO needs no
PyTorch: the light install scores through this same module); `score_files` turns paths into
scores batch by batch (labelled records for `evaluate`, unlabelled paths for `predict`, the
validation split for the threshold fit), `load_input` / `input_from_bytes` serve single
images (Grad-CAM, the service). The probability formula and the threshold decision are
`model.decision`'s, applied in `scores_from_outputs` only; `results` turns scores into one
`ImageResult` per image.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.loader import (
    ImageFacts,
    decode_xray_with_facts,
    load_xray,
    load_xray_with_facts,
)
from pneumonia_cxr.data.preprocess import Steps, evaluation_stages
from pneumonia_cxr.data.workers import worker_init
from pneumonia_cxr.errors import ImageLoadError, ModelFileError
from pneumonia_cxr.inference import AUTO_CPU_ENGINES, ENGINES
from pneumonia_cxr.inference.contract import check_model_contract
from pneumonia_cxr.inference.engines import (
    Engine,
    OnnxEngine,
    OpenVinoEngine,
    cached_export,
    cached_onnx_engine,
    file_export_path,
)
from pneumonia_cxr.model.decision import Decision, decide, label_name, probability
from pneumonia_cxr.model.intended_use import Refusal, out_of_scope
from pneumonia_cxr.model.onnx_format import FULL_INSTALL_HINT
from pneumonia_cxr.model.outputs import ModelOutput, outputs_of

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from pneumonia_cxr.model.model_file import ModelBundle

log = logging.getLogger(__name__)

READER_THREAD = "pneumonia-cxr-reader"
"""Name prefix of the thread that decodes ahead of ONNX Runtime / OpenVINO (`iter_files`)."""


@dataclass
class Scores:
    """Per-image results of one or more batches, all shape (N,)."""

    logits: np.ndarray
    probabilities: np.ndarray
    decisions: np.ndarray
    """1 = PNEUMONIA (probability >= the model's threshold), 0 = NORMAL."""
    ood_scores: np.ndarray
    """NaN when the model carries no OOD statistics."""
    ood_flags: np.ndarray
    """True where the image is out of distribution (score above the model's cut-off)."""
    type_logits: np.ndarray | None = None
    """VIRAL-vs-BACTERIAL logits; None for a model without a type head."""
    p_viral: np.ndarray | None = None
    """P(VIRAL | PNEUMONIA) = sigmoid(type logit); None without a type head."""
    guard_scores: np.ndarray | None = None
    """The applicability guard's feature score; None for a model without a guard."""

    def by_output(self) -> dict[str, np.ndarray]:
        """Probabilities per `model.outputs` name: the one place a score array meets its
        output's name."""
        numbers = {"pneumonia": self.probabilities}
        if self.p_viral is not None:
            numbers["type"] = self.p_viral
        return numbers

    @classmethod
    def concat(cls, parts: Sequence[Scores]) -> Scores:
        names = ("logits", "probabilities", "decisions", "ood_scores", "ood_flags")
        if not parts:
            empty = np.zeros(0)
            return cls(empty, empty, empty.astype(np.int64), empty, empty.astype(bool))
        extra = {
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in ("type_logits", "p_viral", "guard_scores")
            if all(getattr(p, name) is not None for p in parts)
        }
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in names), **extra)


@dataclass(frozen=True)
class ImageResult:
    """One image's verdict, made in one place (`Predictor.results`); predict (every mode), the
    API, the service and evaluate only format it (`values`).

    "Not assessed" is a state, not a flag beside a label: such an image has no label for any
    output and no heatmap anywhere; the network's numbers stay readable as `unassessed_*`.
    """

    state: str
    """"assessed" or "not assessed" (`model.outputs.STATES`)."""
    probabilities: dict[str, float]
    """The network's probability per output name (`model.outputs`), temperature applied."""
    labels: dict[str, str]
    """Per output, its class at its threshold; only for an assessed image, and only where the
    output answers (the type of a pneumonia for an image called PNEUMONIA)."""
    guard_score: float | None = None
    """The applicability guard's score; None for a model without a guard."""
    ood_score: float | None = None
    """The older pooled-feature OOD score; None for a model without its statistics."""
    refusals: tuple[Refusal, ...] = ()
    checked: bool = True
    """Whether anything judged applicability (a guard, OOD statistics or a refusal)."""

    @property
    def assessed(self) -> bool:
        return self.state == "assessed"

    @property
    def probability(self) -> float | None:
        """P(PNEUMONIA) as a decision's input; None when not assessed."""
        return self.probabilities.get("pneumonia") if self.assessed else None

    @property
    def label(self) -> str:
        return self.labels.get("pneumonia", "")

    @property
    def p_viral(self) -> float | None:
        return self.probabilities.get("type") if self.assessed else None

    @property
    def pneumonia_type(self) -> str:
        return self.labels.get("type", "")

    @property
    def out_of_distribution(self) -> bool | None:
        """True when not assessed (the column's meaning for older readers)."""
        return not self.assessed if self.checked else None

    @property
    def reason(self) -> str:
        """The refusals in plain words, each once."""
        return "; ".join(dict.fromkeys(r.words for r in self.refusals))

    @property
    def details(self) -> list[str]:
        """The figures behind each refusal (a page's "details")."""
        return [f"{r.words}: {r.detail}" if r.detail else r.words for r in self.refusals]

    def values(self, outputs: Sequence[ModelOutput]) -> dict[str, Any]:
        """Column -> value for `outputs` (`model.outputs.table_columns`, less path/error)."""
        values: dict[str, Any] = {
            "state": self.state,
            "out_of_distribution": self.out_of_distribution,
            "reason": self.reason,
            "guard_score": self.guard_score,
            "ood_score": self.ood_score,
        }
        for output in outputs:
            number = self.probabilities.get(output.name)
            values[output.probability_column] = number if self.assessed else None
            values[output.label_column] = self.labels.get(output.name, "")
            values[output.unassessed_column] = None if self.assessed else number
        return values


@dataclass
class ScoredBatch:
    """One batch of files: which indices were scored, their scores, and which failed why."""

    indices: list[int]
    scores: Scores
    inputs: np.ndarray | None
    originals: list[np.ndarray | None]
    errors: list[tuple[int, str]]
    facts: list[ImageFacts | None] = field(default_factory=list)
    """What each scored file says about itself (colour, DICOM header), in `indices` order."""


@dataclass
class FileScores:
    """Every file of a `score_files` call: scores of the readable ones (in file order)."""

    indices: list[int]
    scores: Scores
    errors: dict[int, str] = field(default_factory=dict)


@dataclass
class RecordScores:
    """Scores of labelled records (evaluate, the threshold fit): the readable ones in order."""

    scores: Scores
    labels: np.ndarray
    kept: list[ImageRecord]
    errors: dict[int, str]
    """Index into the scored records -> why that file could not be read."""


def one_line(error: BaseException) -> str:
    """The error's reason on one line, in words (no class name), without the path (the caller
    has it)."""
    if isinstance(error, ImageLoadError):
        reason = error.reason
    elif isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:
        reason = str(error)
    return " ".join(reason.split())


def load_input(
    path: str | Path, transform, image_size: int, keep_original: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The one loader, then the model's transforms: (model input, decoded gray image).

    The input always comes from the same decode (JPEG draft decoding down to `image_size`), so
    asking for the full-resolution original (overlays) never changes a probability.
    """
    image, original, _ = load_input_with_facts(path, transform, image_size, keep_original)
    return image, original


def load_input_with_facts(
    path: str | Path, transform, image_size: int, keep_original: bool = False
) -> tuple[np.ndarray, np.ndarray, ImageFacts]:
    """`load_input` and the file's `ImageFacts` (the applicability checks read them)."""
    gray, facts = load_xray_with_facts(path, min_side=image_size)
    original = load_xray(path) if keep_original else gray
    return transform(gray), original, facts


class _FileInputs:
    """Path -> the per-image part of the model's input (uint8, resized, the JPEG step), or the
    error text; keeps the original pixels when asked (overlays). `_Collate` finishes the batch.
    A map-style dataset (length and indexing), which PyTorch's DataLoader also takes (DDP).

    Decoding uses JPEG draft mode (a speed hint) unless the originals are kept: overlays want
    the full-resolution film.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        transform,
        image_size: int,
        keep_original: bool,
        first_index: int = 0,
    ):
        # The transform and size only, not the engine: worker processes receive a pickled copy.
        self.paths, self.transform = list(paths), transform
        self.image_size, self.keep_original = image_size, keep_original
        self.first_index = first_index
        """Index of `paths[0]` in the whole listing (a `part` keeps the listing's indices)."""

    def __len__(self) -> int:
        return len(self.paths)

    def part(self, start: int, size: int) -> _FileInputs:
        """Files start .. start + size - 1 as their own dataset (what one worker task holds)."""
        paths = self.paths[start : start + size]
        first = self.first_index + start
        return _FileInputs(paths, self.transform, self.image_size, self.keep_original, first)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image, gray, facts = load_input_with_facts(
                self.paths[index], self.transform, self.image_size, self.keep_original
            )
        except (ImageLoadError, OSError) as error:
            return {"index": self.first_index + index, "error": one_line(error)}
        original = gray if self.keep_original else None
        listed = self.first_index + index
        return {"index": listed, "image": image, "original": original, "facts": facts}


class _Collate:
    """Stack the readable images (uint8) and finish them as one batch (`evaluation_stages`);
    a class, not a closure, so that loader workers can receive it."""

    def __init__(self, batch_transform) -> None:
        self.batch_transform = batch_transform

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        good = [s for s in samples if "image" in s]
        images = self.batch_transform(np.stack([s["image"] for s in good])) if good else None
        return {
            "image": images,
            "index": [s["index"] for s in good],
            "original": [s["original"] for s in good],
            "facts": [s.get("facts") for s in good],
            "errors": [(s["index"], s["error"]) for s in samples if "error" in s],
        }


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


def _read_ahead(batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The same batches, each decoded by a reader thread while the caller scores the one before.

    Decoding and the JPEG step release the GIL and fill the gaps that ONNX Runtime's and
    OpenVINO's thread pools leave (0.4-0.9 s of 18 s on 1,872 test files in alternated runs
    here, within the noise in others: a small gain, never a loss measured). Not in the
    service: one request is one image.
    """
    reader = ThreadPoolExecutor(1, thread_name_prefix=READER_THREAD)
    try:
        pending = reader.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = reader.submit(next, batches, None)
            yield batch
    finally:
        reader.shutdown(cancel_futures=True)


def _batches(
    dataset: _FileInputs, collate: _Collate, batch_size: int, num_workers: int
) -> Iterator[dict[str, Any]]:
    """Collated batches in file order: decoded here, or by `num_workers` processes that each
    take whole batches, at most two batches per worker ahead (memory stays bounded on an
    archive); a worker dies with its parent (`data.workers`)."""
    starts = range(0, len(dataset), batch_size)
    if num_workers == 0:
        for start in starts:
            yield _decode_batch(dataset.part(start, batch_size), collate)
        return
    # spawn: a fork beside ONNX Runtime's and OpenVINO's running threads may deadlock, and the
    # parent check of `data.workers` holds only for a child of this process (not forkserver's)
    context = multiprocessing.get_context("spawn")
    initializer = worker_init()
    with ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=initializer, initargs=(0,)
    ) as pool:
        pending: deque[Future] = deque()
        for start in starts:  # each task carries its own paths only, not the whole listing
            pending.append(pool.submit(_decode_batch, dataset.part(start, batch_size), collate))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _decode_batch(part: _FileInputs, collate: _Collate) -> dict[str, Any]:
    return collate([part[index] for index in range(len(part))])


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


class Predictor:
    """A model ready to score images: engine, contract, transforms, threshold and OOD cut-off."""

    def __init__(self, engine: Engine, source: str | Path = "model file") -> None:
        check_model_contract(engine, source)
        self.engine, self.source = engine, str(source)
        # Files are finished batch by batch (the two stages); one image runs both in a row
        # (training's `build_transforms(preprocessing)` wraps the same steps).
        self._file_stages = evaluation_stages(engine.preprocessing)
        self.transform = Steps(*self._file_stages)

    @classmethod
    def open(
        cls,
        model_path: str | Path,
        *,
        engine: str = "auto",
        device: Any = None,
        gradcam: bool = False,
    ) -> Predictor:
        """Open a model file with the fastest engine that gives the model's own labels.

        "auto": on the CPU (an `.onnx` file always is), the first of `AUTO_CPU_ENGINES` that
        opens (a cached export of a `.pt` file; several times PyTorch eager here, identical
        labels: benchmarks/inference_throughput.py); PyTorch on a GPU or when Grad-CAM is
        asked for. A failing fast path falls back to the next one, never fails a prediction.
        A `.pt` file whose export is cached opens without building its PyTorch network.
        """
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
            runtimes = AUTO_CPU_ENGINES if engine == "auto" else (engine,)
            return cls(_first_runtime(runtimes, lambda r: _onnx_file_engine(path, r)), path)
        if not path.is_file():
            raise ModelFileError(
                f"{path}: model file not found; train one with `pneumonia-cxr train`"
            )
        fast_cpu = engine != "torch" and not gradcam and _on_cpu(device)
        if fast_cpu and (twin := _shipped_twin(path)) is not None:
            runtimes = AUTO_CPU_ENGINES if engine == "auto" else (engine,)
            try:
                return cls(_first_runtime(runtimes, lambda r: _onnx_file_engine(twin, r)), path)
            except (ImportError, OSError, RuntimeError, ValueError, ModelFileError) as error:
                if engine != "auto" or importlib.util.find_spec("torch") is None:
                    raise
                log.warning("the shipped ONNX twin does not open (%s); reading the .pt", error)
        _require_torch(path)
        from pneumonia_cxr.model.model_file import bundle_from_payload, read_model_file

        model_file = read_model_file(path)  # missing, foreign, corrupt: raised before any engine
        bundle = functools.cache(lambda: bundle_from_payload(model_file.payload, path))
        export = file_export_path(model_file.sha256)
        if not export.is_file():
            bundle()  # no export stands in: build now, so an inconsistent file fails here, once
        return cls._on_engine(
            bundle,
            lambda runtime: cached_export(export, bundle, runtime=runtime),
            device,
            path,
            engine=engine,
            gradcam=gradcam,
        )

    @classmethod
    def from_bundle(
        cls,
        bundle: ModelBundle,
        device: Any = None,
        source: str | Path = "model",
        *,
        engine: str = "torch",
        gradcam: bool = False,
    ) -> Predictor:
        """A model in memory (the end of training, tests, a caller that also needs the bundle)
        on the PyTorch engine, or on the engine `open` would pick (`engine="auto"`)."""
        return cls._on_engine(
            lambda: bundle,
            lambda runtime: cached_onnx_engine(bundle, runtime=runtime),
            device,
            source,
            engine=engine,
            gradcam=gradcam,
        )

    @classmethod
    def _on_engine(
        cls,
        bundle: Callable[[], ModelBundle],
        open_export: Callable[[str], OnnxEngine],
        device: Any,
        source: str | Path,
        *,
        engine: str,
        gradcam: bool,
    ) -> Predictor:
        """The one engine policy: PyTorch when asked, for Grad-CAM, or on a GPU under "auto";
        else the first exported-graph runtime that opens, and under "auto" PyTorch when none
        does. `bundle()` is only called when PyTorch runs or an export must be made."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        on_cpu = _on_cpu(device)
        if engine == "torch" or gradcam or (engine == "auto" and not on_cpu):
            return cls(_torch_engine(bundle(), device), source)
        runtimes = AUTO_CPU_ENGINES if engine == "auto" else (engine,)
        try:
            fast = _first_runtime(runtimes, open_export)
        except (ImportError, OSError, RuntimeError, ValueError, ModelFileError) as error:
            if engine != "auto":
                raise
            # Same labels either way, only slower: never fail a prediction over the fast path.
            log.warning("no exported-graph engine available (%s); predicting with PyTorch", error)
            return cls(_torch_engine(bundle(), device), source)
        return cls(fast, source)

    @property
    def bundle(self) -> ModelBundle | None:
        """The PyTorch model file (Grad-CAM needs it); None on ONNX Runtime."""
        return getattr(self.engine, "bundle", None)

    @property
    def device(self) -> Any:
        """The PyTorch engine's `torch.device`; "cpu" for the ONNX engines."""
        return getattr(self.engine, "device", "cpu")

    @property
    def image_size(self) -> int:
        return int(self.engine.preprocessing.image_size)

    @property
    def decision(self) -> Decision:
        """The model's whole decision (threshold, cut-offs, type, calibration record)."""
        return self.engine.decision

    @property
    def threshold(self) -> float:
        return float(self.engine.decision.threshold)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.engine.decision.class_names)

    def label(self, decision: int) -> str:
        return label_name(decision, self.class_names)

    def load_input(
        self, path: str | Path, keep_original: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The one loader and the model's transforms: (model input, decoded gray image)."""
        return load_input(path, self.transform, self.image_size, keep_original)

    def input_from_bytes(
        self, data: bytes, name: str, keep_original: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """`load_input` for an upload held in memory (never written to disk)."""
        image, original, _ = self.input_and_facts_from_bytes(data, name, keep_original)
        return image, original

    def input_and_facts_from_bytes(
        self, data: bytes, name: str, keep_original: bool = False
    ) -> tuple[np.ndarray, np.ndarray, ImageFacts]:
        """`input_from_bytes` and the upload's `ImageFacts`."""
        gray, facts = decode_xray_with_facts(data, name, min_side=self.image_size)
        original = decode_xray_with_facts(data, name)[0] if keep_original else gray
        return self.transform(gray), original, facts

    def scores_from_outputs(
        self,
        logits: np.ndarray,
        ood_scores: np.ndarray,
        type_logits: np.ndarray | None = None,
        guard_scores: np.ndarray | None = None,
    ) -> Scores:
        """Probability, decision and OOD flag from raw outputs: the only place they are made.
        The flag is the OOD score's or, for a model with a guard, either score's."""
        logits = np.asarray(logits, dtype=np.float64)
        probabilities = probability(logits, self.decision.temperature)
        ood_scores = np.asarray(ood_scores, dtype=np.float64)
        cutoff = self.decision.ood_cutoff
        flags = ood_scores > cutoff if cutoff is not None else np.zeros(len(logits), bool)
        guard_cutoff = self.decision.guard_cutoff
        if guard_scores is not None and guard_cutoff is not None:
            guard_scores = np.asarray(guard_scores, dtype=np.float64)
            flags = flags | (guard_scores > guard_cutoff)
        else:
            guard_scores = None
        kinds = p_viral = None
        if type_logits is not None and self.decision.type is not None:
            kinds = np.asarray(type_logits, dtype=np.float64)
            p_viral = probability(kinds)
        return Scores(
            logits,
            probabilities,
            decide(probabilities, self.threshold),
            ood_scores,
            flags,
            kinds,
            p_viral,
            guard_scores,
        )

    def refusals(self, scores: Scores, position: int, facts: ImageFacts | None) -> list[Refusal]:
        """Why image `position` is outside the model's use: what the file says (colour, DICOM
        header; `model.intended_use`), then the feature scores against their cut-offs (one
        "features" reason however many scores say so)."""
        refusals = out_of_scope(facts, self.engine.intended_use)
        figures = []
        guard, cutoff = scores.guard_scores, self.decision.guard_cutoff
        if guard is not None and cutoff is not None and guard[position] > cutoff:
            figures.append(f"guard score {guard[position]:.1f} > cut-off {cutoff:.1f}")
        ood, ood_cutoff = scores.ood_scores[position], self.decision.ood_cutoff
        if ood_cutoff is not None and np.isfinite(ood) and ood > ood_cutoff:
            figures.append(f"OOD score {ood:.2f} > cut-off {ood_cutoff:.2f}")
        if figures:
            refusals.append(Refusal("features", "; ".join(figures)))
        return refusals

    @property
    def outputs(self) -> list[ModelOutput]:
        """The answers this model gives (`model.outputs`)."""
        return outputs_of(self.decision)

    def results(
        self, scores: Scores, facts: Sequence[ImageFacts | None] | None = None
    ) -> list[ImageResult]:
        """One `ImageResult` per scored image, in order; `facts` (from the loader) let the
        colour and DICOM-header checks speak."""
        outputs = self.outputs
        numbers = scores.by_output()
        checks = self.decision.ood_cutoff is not None or self.decision.guard_cutoff is not None
        results = []
        for position in range(len(scores.probabilities)):
            refusals = self.refusals(scores, position, facts[position] if facts else None)
            probabilities = {o.name: float(numbers[o.name][position]) for o in outputs}
            labels: dict[str, str] = {}
            if not refusals:
                for output in outputs:
                    given = output.asks_given
                    if given is None or labels.get(given[0]) == given[1]:
                        chosen = decide(probabilities[output.name], output.threshold(self.decision))
                        labels[output.name] = output.class_names(self.decision)[int(chosen)]
            guard = None if scores.guard_scores is None else float(scores.guard_scores[position])
            ood = float(scores.ood_scores[position])
            results.append(
                ImageResult(
                    state="not assessed" if refusals else "assessed",
                    probabilities=probabilities,
                    labels=labels,
                    guard_score=guard,
                    ood_score=ood if np.isfinite(ood) else None,
                    refusals=tuple(refusals),
                    checked=checks or bool(refusals),
                )
            )
        return results

    def scores(self, images: np.ndarray) -> Scores:
        """Scores of a batch of model inputs (from `load_input` or `transform`)."""
        output = self.engine.score(images)
        return self.scores_from_outputs(
            output.logits, output.ood_scores, output.type_logits, output.guard_scores
        )

    def input_loader(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        keep_original: bool = False,
    ) -> DataLoader:
        """`iter_inputs`' batches as a PyTorch DataLoader, for Lightning's prediction loop,
        which shards it across ranks (`predict --devices`; the full install)."""
        from torch.utils.data import DataLoader

        dataset, collate = self._inputs(paths, batch_size, keep_original)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate,
            worker_init_fn=worker_init() if num_workers > 0 else None,
        )

    def _inputs(
        self, paths: Sequence[str | Path], batch_size: int, keep_original: bool
    ) -> tuple[_FileInputs, _Collate]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        per_image, per_batch = self._file_stages
        files = _FileInputs([Path(p) for p in paths], per_image, self.image_size, keep_original)
        return files, _Collate(per_batch)

    def iter_inputs(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        keep_original: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Decoded, transformed batches in file order: {"image" (or None), "index", "original",
        "errors"}; an unreadable file is an error entry, never a default image.
        `num_workers` processes decode ahead (0: this process)."""
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        dataset, collate = self._inputs(paths, batch_size, keep_original)
        yield from _batches(dataset, collate, batch_size, num_workers)

    def iter_files(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        keep_original: bool = False,
    ) -> Iterator[ScoredBatch]:
        """`iter_inputs`, scored. Beside ONNX Runtime or OpenVINO, files decoded in this
        process are read ahead by a thread (`_read_ahead`); loader workers
        (`num_workers > 0`) read ahead by themselves."""
        batches = iter(
            self.iter_inputs(
                paths, batch_size=batch_size, num_workers=num_workers, keep_original=keep_original
            )
        )
        if isinstance(self.engine, OnnxEngine) and num_workers == 0:
            batches = _read_ahead(batches)
        for batch in batches:
            images = batch["image"]
            scores = self.scores(images) if images is not None else Scores.concat([])
            yield ScoredBatch(
                batch["index"],
                scores,
                images,
                batch["original"],
                batch["errors"],
                batch.get("facts") or [],
            )

    def score_files(
        self, paths: Sequence[str | Path], *, batch_size: int = 32, num_workers: int = 0
    ) -> FileScores:
        """All files at once: scores of the readable ones in file order, errors by index."""
        indices: list[int] = []
        parts: list[Scores] = []
        errors: dict[int, str] = {}
        for batch in self.iter_files(paths, batch_size=batch_size, num_workers=num_workers):
            indices += batch.indices
            parts.append(batch.scores)
            errors.update(batch.errors)
        return FileScores(indices, Scores.concat(parts), errors)

    def score_records(
        self, records: Sequence[ImageRecord], *, batch_size: int = 32, num_workers: int = 0
    ) -> RecordScores:
        """`score_files` over labelled records, with the labels of the readable ones."""
        result = self.score_files(
            [r.path for r in records], batch_size=batch_size, num_workers=num_workers
        )
        kept = [records[i] for i in result.indices]
        labels = np.array([r.label for r in kept], dtype=np.int64)
        return RecordScores(result.scores, labels, kept, result.errors)
