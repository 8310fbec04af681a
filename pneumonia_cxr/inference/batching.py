"""Files to model input, batch by batch: the one loader, the model's transforms, errors as
entries (never a default image), decoding ahead in a thread or in worker processes."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia_cxr.data.loader import ImageFacts, load_xray, load_xray_with_facts
from pneumonia_cxr.data.workers import worker_init
from pneumonia_cxr.errors import ImageLoadError

READER_THREAD = "pneumonia-cxr-reader"
"""Name prefix of the thread that decodes ahead of ONNX Runtime / OpenVINO (`read_ahead`)."""


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


class FileInputs:
    """Path -> the per-image part of the model's input (uint8, resized, the JPEG step), or the
    error text; keeps the original pixels when asked (overlays). `Collate` finishes the batch.
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

    def part(self, start: int, size: int) -> FileInputs:
        """Files start .. start + size - 1 as their own dataset (what one worker task holds)."""
        paths = self.paths[start : start + size]
        first = self.first_index + start
        return FileInputs(paths, self.transform, self.image_size, self.keep_original, first)

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


class Collate:
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


def read_ahead(batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
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


def iter_batches(
    dataset: FileInputs, collate: Collate, batch_size: int, num_workers: int
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


def _decode_batch(part: FileInputs, collate: Collate) -> dict[str, Any]:
    return collate([part[index] for index in range(len(part))])
