"""`predict --devices N`: scoring on Lightning's prediction loop, DDP across GPUs and nodes.

Each rank scores its share of the files (Lightning's distributed sampler) through the model
file's own PyTorch network and the one decision path (`Predictor.scores_from_outputs`,
`Predictor.results`); a prediction writer appends each batch's rows to a per-rank part file;
rank 0 then joins the parts in file order, each file once (the sampler pads ranks with
repeats), into the CSV or JSON a single process writes (same columns, same values: the rows are
`predict.PredictionRow`s as `predict.rows_to_records` makes them, written by
`predict.write_records`), and counts them by the same
`predict.Summary`. Under Slurm, `run/run.sh predict ...` starts
one task per GPU and Lightning reads the Slurm environment.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.model_file import load_model
from pneumonia_cxr.model.outputs import ModelOutput
from pneumonia_cxr.predict import (
    PredictionRow,
    Summary,
    expand_paths,
    rows_to_records,
    write_records,
)
from pneumonia_cxr.storage import check_table_path


class ScoringModule(L.LightningModule):
    """The model file's network (moved to each rank's device by Lightning) and its decisions."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor
        self.scoring = predictor.engine.scoring  # a submodule: Lightning places it

    def on_predict_start(self) -> None:
        # Lightning has placed the network on this rank's device; the engine scores there.
        self.predictor.engine.device = self.device

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[tuple[int, Any]]:
        """(file index, its `ImageResult` or error text) per file of the batch."""
        out: list[tuple[int, Any]] = list(batch["errors"])
        if batch["image"] is not None:
            # The engine's own score (its float32-without-TF32 setting included), no copy of it.
            scores = self.predictor.scores(batch["image"])
            results = self.predictor.results(scores, batch.get("facts"))
            out.extend(zip(batch["index"], results, strict=True))
        return out


class PartWriter(BasePredictionWriter):
    """Each rank appends its batches' rows (file index, then the CSV row every mode writes,
    `predict.rows_to_records`, one JSON object a line) to its own part file."""

    def __init__(self, output: Path, paths: Sequence[Path], outputs: list[ModelOutput]) -> None:
        super().__init__(write_interval="batch")
        self.output, self.paths, self.outputs = output, paths, outputs

    def part(self, rank: int) -> Path:
        return self.output.with_name(f".{self.output.name}.rank{rank}.part")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, *_):
        lines = []
        for index, answer in prediction:
            row = PredictionRow(path=str(self.paths[index]))
            if isinstance(answer, str):
                row.error = answer
            else:
                row.result = answer
            (record,) = rows_to_records([row], self.outputs, heatmap=False)
            lines.append(f"{index}\t{json.dumps(record)}\n")
        with open(self.part(trainer.global_rank), "a", encoding="utf-8") as handle:
            handle.write("".join(lines))


@contextlib.contextmanager
def _environment_kept() -> Iterator[None]:
    """Lightning writes MASTER_ADDR/MASTER_PORT, ranks and OMP_NUM_THREADS into this process's
    environment; left there, a later DDP run started from this process (a notebook, the test
    suite) inherits a port that may be taken (EADDRINUSE). Put the environment back."""
    before = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


def predict_distributed(
    model_path: str | Path,
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    batch_size: int = 32,
    num_workers: int = 0,
) -> Summary | None:
    """Score every file on `devices` processes; rank 0 writes `output` (the CSV or JSON the
    plain mode writes) and returns the run's `Summary`; other ranks return None."""
    with _environment_kept():
        return _predict_distributed(
            model_path, paths, output, accelerator=accelerator, devices=devices,
            num_nodes=num_nodes, strategy=strategy, batch_size=batch_size, num_workers=num_workers,
        )  # fmt: skip


def _predict_distributed(
    model_path: str | Path,
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    accelerator: str,
    devices: int | str,
    num_nodes: int,
    strategy: str,
    batch_size: int,
    num_workers: int,
) -> Summary | None:
    output = check_table_path(output)
    files = expand_paths(paths)
    predictor = Predictor.from_bundle(load_model(model_path), "cpu", source=str(model_path))
    outputs = predictor.outputs
    writer = PartWriter(output, files, outputs)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        callbacks=[writer],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if trainer.is_global_zero:
        for rank in range(trainer.world_size):
            writer.part(rank).unlink(missing_ok=True)
    trainer.strategy.barrier()
    loader = predictor.input_loader(files, batch_size=batch_size, num_workers=num_workers)
    trainer.predict(ScoringModule(predictor), loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    found: dict[int, dict[str, Any]] = {}
    for rank in range(trainer.world_size):
        part = writer.part(rank)
        for line in part.read_text(encoding="utf-8").splitlines():
            index, record = line.split("\t", 1)
            found.setdefault(int(index), json.loads(record))  # the sampler pads with repeats
        part.unlink()
    records = [found[i] for i in sorted(found)]
    summary = Summary(positive=predictor.class_names[1])
    for record in records:
        summary.add(record["state"], record["label"], record["path"])
    write_records(records, output, outputs)
    return summary
