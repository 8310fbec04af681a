"""The one inference path: a model file -> images -> logits -> probabilities -> decisions.

`Predictor.open` opens a `.pt` or `.onnx` model file with the engine `engine_choice` picks,
checks its input contract once, and holds its transforms; `score_files` turns paths into scores
batch by batch (`batching`: labelled records for `evaluate`, unlabelled paths for `predict`, the
validation split for the threshold fit); `load_input` / `input_from_bytes` serve single images
(Grad-CAM, the service). The probability formula, the thresholds and the "not assessed" state
are `decisions`' (`scores_from_outputs`, `results`); this class only binds them to one model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.loader import ImageFacts, decode_xray_with_facts
from pneumonia_cxr.data.preprocess import Steps, evaluation_stages
from pneumonia_cxr.data.workers import worker_init
from pneumonia_cxr.inference.batching import (
    READER_THREAD,
    Collate,
    FileInputs,
    iter_batches,
    load_input,
    one_line,
    read_ahead,
)
from pneumonia_cxr.inference.contract import check_model_contract
from pneumonia_cxr.inference.decisions import (
    ImageResult,
    Scores,
    refusals,
    results,
    scores_from_outputs,
)
from pneumonia_cxr.inference.engine_choice import engine_for_bundle, engine_for_file
from pneumonia_cxr.inference.engines import Engine, OnnxEngine
from pneumonia_cxr.model.decision import Decision, label_name
from pneumonia_cxr.model.intended_use import Refusal
from pneumonia_cxr.model.outputs import ModelOutput, outputs_of

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from pneumonia_cxr.model.model_file import ModelBundle

__all__ = [
    "READER_THREAD",
    "FileScores",
    "ImageResult",
    "Predictor",
    "RecordScores",
    "ScoredBatch",
    "Scores",
    "load_input",
    "one_line",
]


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
        """Open a model file with the fastest engine that gives the model's own labels
        (`engine_choice.engine_for_file`: OpenVINO or ONNX Runtime on the CPU, PyTorch on a GPU
        or for Grad-CAM; a failing fast path falls back, never fails a prediction)."""
        return cls(
            engine_for_file(model_path, engine=engine, device=device, gradcam=gradcam), model_path
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
        chosen = engine_for_bundle(lambda: bundle, None, device, engine=engine, gradcam=gradcam)
        return cls(chosen, source)

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
        guard_scores: np.ndarray | None = None,
        answer_logits: dict[str, np.ndarray] | None = None,
    ) -> Scores:
        """`decisions.scores_from_outputs` with this model's decision record."""
        return scores_from_outputs(self.decision, logits, ood_scores, guard_scores, answer_logits)

    def refusals(self, scores: Scores, position: int, facts: ImageFacts | None) -> list[Refusal]:
        """Why image `position` is outside this model's use (`decisions.refusals`)."""
        return refusals(self.decision, self.engine.intended_use, scores, position, facts)

    @property
    def outputs(self) -> list[ModelOutput]:
        """The answers this model gives (`model.outputs`)."""
        return outputs_of(self.decision)

    def results(
        self, scores: Scores, facts: Sequence[ImageFacts | None] | None = None
    ) -> list[ImageResult]:
        """One `ImageResult` per scored image, in order (`decisions.results`); `facts` (from
        the loader) let the colour and DICOM-header checks speak."""
        return results(self.decision, self.engine.intended_use, scores, facts)

    def scores(self, images: np.ndarray) -> Scores:
        """Scores of a batch of model inputs (from `load_input` or `transform`)."""
        output = self.engine.score(images)
        return self.scores_from_outputs(
            output.logits, output.ood_scores, output.guard_scores, output.answer_logits
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
    ) -> tuple[FileInputs, Collate]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        per_image, per_batch = self._file_stages
        files = FileInputs([Path(p) for p in paths], per_image, self.image_size, keep_original)
        return files, Collate(per_batch)

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
        yield from iter_batches(dataset, collate, batch_size, num_workers)

    def iter_files(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        keep_original: bool = False,
    ) -> Iterator[ScoredBatch]:
        """`iter_inputs`, scored. Beside ONNX Runtime or OpenVINO, files decoded in this
        process are read ahead by a thread (`batching.read_ahead`); loader workers
        (`num_workers > 0`) read ahead by themselves."""
        batches = iter(
            self.iter_inputs(
                paths, batch_size=batch_size, num_workers=num_workers, keep_original=keep_original
            )
        )
        if isinstance(self.engine, OnnxEngine) and num_workers == 0:
            batches = read_ahead(batches)
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
