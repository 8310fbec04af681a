"""Checkpoint IO that never leaves half a file behind when a run is killed mid-write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumonia_cxr.faults import kill_if
from pneumonia_cxr.storage import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, via a temporary file and an atomic rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        atomic_torch_save(checkpoint, path)
        if Path(path).name == "last.ckpt":  # resume tests: die right after it lands
            stage = checkpoint.get("pneumonia_cxr", {}).get("stage")
            kill_if(f"checkpoint:stage{stage}:epoch{checkpoint.get('epoch')}")
