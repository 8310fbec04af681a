"""Fault injection for the resume tests: SIGKILL this process at a named point.

Inert unless the environment variable PNEUMONIA_CXR_FAULT names the point. SIGKILL, not an
exception: nothing runs after it (no `finally`, no atexit), exactly as when the OOM killer or
Slurm preemption ends a job. Points: `stage{S}:epoch{E}:batch{B}` (before that training batch),
`after_stage{S}` (once the stage is recorded done), `checkpoint:stage{S}:epoch{E}` (right after
that epoch's last.ckpt lands), `write:{file name}` (a file written, not yet renamed into place),
`archive:batch{B}` (the B-th batch of `predict --output x.csv` flushed) and
`archive:batch{B}:rows` (its rows written, its progress records not yet).
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "PNEUMONIA_CXR_FAULT"


def kill_if(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
