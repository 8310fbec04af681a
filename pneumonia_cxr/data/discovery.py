"""Find the Kermany chest X-ray set on disk (or download it) and list its images strictly.

The layout is the official one, ``{train,val,test}/{NORMAL,PNEUMONIA}/<file>``. Discovery is
strict on purpose: a missing or empty class folder, or a stray class such as ``COVID``, would
otherwise silently change what the model learns and what the metrics mean.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.data import SPLITS
from pneumonia_cxr.data.loader import is_image_file
from pneumonia_cxr.errors import DatasetLayoutError, DataUnavailableError
from pneumonia_cxr.storage import cache_root

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "PNEUMONIA_CXR_DATA"
KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}"

_SEARCH_DEPTH = 2
"""Levels below the given folder searched for the layout (Kaggle nests chest_xray/chest_xray/)."""
_IGNORED_DIRS = frozenset({"__MACOSX"})
_EXPECTED = "{train,val,test}/{NORMAL,PNEUMONIA}/<image files>"
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset with its official split and its label."""

    path: Path
    split: str
    label: int

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


def _ignored(entry: Path) -> bool:
    return entry.name.startswith(".") or entry.name in _IGNORED_DIRS


def _has_splits(folder: Path) -> bool:
    return all((folder / split).is_dir() for split in SPLITS)


def find_layout_root(path: str | Path) -> Path:
    """Return the folder that holds ``train/``, ``val/`` and ``test/``.

    Accepts that folder itself or a folder a couple of levels above it, as the Kaggle archive
    unpacks to ``chest_xray/`` (and a copy under ``chest_xray/chest_xray/``) next to
    ``__MACOSX/``. The shallowest match wins; dot-folders and ``__MACOSX`` are never searched.
    """
    start = Path(path).expanduser()
    if not start.exists():
        raise DatasetLayoutError(
            f"dataset folder {start} does not exist: pass the folder that holds {_EXPECTED}"
        )
    if not start.is_dir():
        raise DatasetLayoutError(
            f"dataset path {start} is a file, not a folder: unzip it and pass the folder that "
            f"holds {_EXPECTED}"
        )
    level = [start]
    for _ in range(_SEARCH_DEPTH + 1):
        for folder in level:
            if _has_splits(folder):
                return folder
        level = sorted(
            child
            for folder in level
            for child in folder.iterdir()
            if child.is_dir() and not _ignored(child)
        )
    present = [split for split in SPLITS if (start / split).is_dir()]
    hint = f" (it has {', '.join(present)} but not all of {', '.join(SPLITS)})" if present else ""
    raise DatasetLayoutError(
        f"no dataset layout found in {start}{hint}: expected {_EXPECTED} in that folder or up "
        f"to {_SEARCH_DEPTH} levels below it"
    )


def _instructions(cache_dir: Path) -> str:
    return (
        f"Get the Kermany chest X-ray set from {KAGGLE_URL}: the automatic download needs "
        "network access and Kaggle credentials (~/.kaggle/kaggle.json, or KAGGLE_USERNAME and "
        "KAGGLE_KEY). Or download and unzip it yourself and point to it with --dataset_path "
        f"PATH, with the environment variable {DATA_ENV_VAR}=PATH, or by putting it in "
        f"{cache_dir} (PATH is the folder holding {_EXPECTED}, or the unzipped chest_xray/)."
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {text}"


def _existing_root(path: str | Path, origin: str) -> Path:
    candidate = Path(path).expanduser()
    if not candidate.exists():
        raise DatasetLayoutError(
            f"dataset path {candidate} (from {origin}) does not exist: pass the folder that "
            f"holds {_EXPECTED}"
        )
    return find_layout_root(candidate)


def _download(target: Path) -> Path:
    """Download through kagglehub into ``target``; returns the folder it reports."""
    import kagglehub  # lazy: only a download needs it, and it is slow to import

    target.mkdir(parents=True, exist_ok=True)
    if "output_dir" in inspect.signature(kagglehub.dataset_download).parameters:
        return Path(kagglehub.dataset_download(KAGGLE_DATASET, output_dir=str(target)))
    # Older kagglehub: steer its cache instead (read at call time, not import time).
    previous = os.environ.get("KAGGLEHUB_CACHE")
    os.environ["KAGGLEHUB_CACHE"] = str(target)
    try:
        return Path(kagglehub.dataset_download(KAGGLE_DATASET))
    finally:
        if previous is None:
            os.environ.pop("KAGGLEHUB_CACHE", None)
        else:
            os.environ["KAGGLEHUB_CACHE"] = previous


def resolve_dataset(path: str | Path | None = None, *, download: bool = True) -> Path:
    """Return the dataset's layout root, downloading it into the cache as a last resort.

    Order: ``path`` -> ``$PNEUMONIA_CXR_DATA`` -> ``<cache>/kermany`` -> Kaggle download. An
    explicit location that is wrong is an error, never a silent fallback to another copy.
    """
    if path is not None:
        return _existing_root(path, "--dataset_path")
    from_env = os.environ.get(DATA_ENV_VAR)
    if from_env:
        return _existing_root(from_env, f"${DATA_ENV_VAR}")
    cache_dir = cache_root() / "kermany"
    if cache_dir.is_dir():
        try:
            return find_layout_root(cache_dir)
        except DatasetLayoutError:
            logger.info("cache %s holds no complete dataset; downloading again", cache_dir)
    if not download:
        raise DataUnavailableError(
            f"dataset not found and download disabled. {_instructions(cache_dir)}"
        )
    logger.info("downloading %s into %s", KAGGLE_DATASET, cache_dir)
    try:
        downloaded = _download(cache_dir)
    except Exception as error:  # any failure (offline, no credentials, no kagglehub) is one message
        raise DataUnavailableError(
            f"dataset not found and its download failed ({_one_line(error)}). "
            f"{_instructions(cache_dir)}"
        ) from error
    return find_layout_root(downloaded)


def class_folders(split_dir: Path) -> list[Path]:
    """Check that a split folder holds exactly NORMAL and PNEUMONIA; return them in label order."""
    if not split_dir.is_dir():
        raise DatasetLayoutError(
            f"split folder {split_dir} is missing: expected {_EXPECTED} under {split_dir.parent}"
        )
    found = sorted(
        entry.name for entry in split_dir.iterdir() if entry.is_dir() and not _ignored(entry)
    )
    for name in found:
        if name not in CLASS_NAMES:
            raise DatasetLayoutError(
                f"unexpected folder {split_dir / name}: a split may hold only "
                f"{' and '.join(CLASS_NAMES)}; remove or move it (this model is binary)"
            )
    for name in CLASS_NAMES:
        if name not in found:
            raise DatasetLayoutError(
                f"class folder {split_dir / name} is missing (found: {', '.join(found) or 'none'}):"
                f" every split needs {' and '.join(CLASS_NAMES)}"
            )
    return [split_dir / name for name in CLASS_NAMES]


TYPE_FOLDERS: frozenset[str] = frozenset({"bacterial", "bacteria", "viral", "virus"})
"""Subfolders a PNEUMONIA folder may hold: the pneumonia type of their images (issue 27)."""


def class_images(class_dir: Path, skipped: list[Path], *, nested: bool = False) -> list[Path]:
    """Image files of one class folder; non-image files go to ``skipped``. A PNEUMONIA folder
    may keep its images in type folders (`PNEUMONIA/BACTERIAL/`, `PNEUMONIA/VIRAL/`)."""
    images = []
    for entry in sorted(class_dir.iterdir()):
        if _ignored(entry):
            continue
        typed = class_dir.name.upper() == CLASS_NAMES[1] and entry.name.lower() in TYPE_FOLDERS
        if entry.is_dir() and typed and not nested:
            images.extend(class_images(entry, skipped, nested=True))
            continue
        if entry.is_dir():
            raise DatasetLayoutError(
                f"unexpected folder {entry} inside class folder {class_dir}: move its images up "
                "into the class folder or remove it (a PNEUMONIA folder may hold type folders "
                "BACTERIAL/ and VIRAL/)"
            )
        if is_image_file(entry):
            images.append(entry)
        else:
            skipped.append(entry)
    if not images:
        raise DatasetLayoutError(
            f"class folder {class_dir} holds no images: add its images (.jpeg/.jpg/.png/.dcm) or "
            "fix the dataset path"
        )
    return images


def list_images(root: str | Path, splits: Sequence[str] = SPLITS) -> list[ImageRecord]:
    """List every image under ``root`` (the layout root), validating the layout strictly.

    Records come sorted by (split in ``SPLITS`` order, label, file name) so that every run sees
    the same order. Non-image files are skipped with one warning.
    """
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}: choose from {SPLITS}")
    root = Path(root).expanduser()
    records: list[ImageRecord] = []
    skipped: list[Path] = []
    for split in sorted(dict.fromkeys(splits), key=SPLITS.index):
        for label, class_dir in enumerate(class_folders(root / split)):
            images = class_images(class_dir, skipped)
            records.extend(ImageRecord(path=path, split=split, label=label) for path in images)
    if skipped:
        examples = ", ".join(str(path.relative_to(root)) for path in skipped[:_MAX_EXAMPLES])
        logger.warning("ignored %d non-image file(s) in %s (e.g. %s)", len(skipped), root, examples)
    return records


def resolve_dataset_for_model(
    dataset_path: str | Path | None, model_config: dict | None = None
) -> Path:
    """The dataset to evaluate a model on: --dataset_path, then $PNEUMONIA_CXR_DATA, then the
    dataset the model was trained on (when it is still on disk), then the cache or a download.

    The model's own dataset comes after the environment variable so that CI and users keep one
    switch, and before the download so a model trained on the synthetic demo set is evaluated
    on that set's test split without extra flags.
    """
    if dataset_path is None and not os.environ.get(DATA_ENV_VAR):
        trained_on = ((model_config or {}).get("data") or {}).get("dataset_path")
        if trained_on and Path(trained_on).is_dir():
            return resolve_dataset(trained_on)
    return resolve_dataset(dataset_path)
