"""Exceptions a user can act on: each names the file or folder and what to do."""

from __future__ import annotations

from pathlib import Path


class PneumoniaCxrError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ImageLoadError(PneumoniaCxrError):
    """An image file could not be turned into model input."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class EmptyFileError(ImageLoadError):
    """The file has zero bytes."""


class CorruptImageError(ImageLoadError):
    """Truncated or damaged image data."""


class NotAnImageError(ImageLoadError):
    """The file is not an image in a supported format, whatever its extension says."""


class ImageTooLargeError(ImageLoadError):
    """More pixels than any real radiograph: a likely decompression bomb."""


class UnsupportedDicomError(ImageLoadError):
    """A DICOM file without pixel data, multi-frame, or otherwise out of contract."""


class DatasetLayoutError(PneumoniaCxrError):
    """A dataset folder does not have the {train,val,test}/{NORMAL,PNEUMONIA} layout."""


class DataUnavailableError(PneumoniaCxrError):
    """The dataset is not on disk and could not be downloaded."""


class WeightsUnavailableError(PneumoniaCxrError):
    """Pretrained weights could not be downloaded or read."""


class ModelFileError(PneumoniaCxrError):
    """A model file is missing, truncated, foreign or does not match the data."""


class EvaluationInputError(PneumoniaCxrError, ValueError):
    """The images to evaluate cannot give the requested statistics (e.g. one class absent)."""


class RunFolderError(PneumoniaCxrError):
    """A run folder already holds a run, or cannot be resumed."""


class NodeConfigError(PneumoniaCxrError, ValueError):
    """A DICOM node's settings cannot be run safely (e.g. another interface without TLS)."""
