"""Where the package writes files, and how: whole or not at all, under one cache root.

Every result a user reads (model files, checkpoints, metrics, reports, prediction tables) goes
through `atomic_write`, so a job killed mid-write (OOM killer, Slurm preemption, Ctrl-C) leaves
the previous file or none, never half of one.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pneumonia_cxr.faults import kill_if

CACHE_ENV_VAR = "PNEUMONIA_CXR_CACHE"

TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".json")
"""Formats of a result table (predict --output), chosen by the file's suffix."""


def check_table_path(path: str | Path) -> Path:
    """The table's path, if its suffix names a format we write; else a ValueError saying so."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: output must end in {' or '.join(TABLE_SUFFIXES)}")
    return path


def cache_root() -> Path:
    """The one cache folder: ``$PNEUMONIA_CXR_CACHE``, else ``$XDG_CACHE_HOME/pneumonia_cxr``,
    else ``~/.cache/pneumonia_cxr``. Downloads live in ``kermany/``, ONNX exports in ``onnx/``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pneumonia_cxr"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(handle)` on a temp file beside `path`, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        kill_if(f"write:{path.name}")  # resume tests: die with the file written, not renamed
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@functools.cache
def _umask() -> int:
    """Read once: os.umask can only be read by setting it."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str, errors: str = "strict") -> Path:
    """UTF-8 text, atomically (`errors="surrogateescape"` writes a path's own bytes)."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8", errors)))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save`, atomically (model files and checkpoints)."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))
