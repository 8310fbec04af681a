"""Loader workers that never outlive their parent.

A DataLoader worker forked just as its parent is killed (SIGKILL leaves no time to clean up) can
stay alive for hours, waiting on a queue nobody writes: PyTorch's watchdog compares the parent
pid it read at start-up, and if the parent was already gone by then it read PID 1 (the
re-parent) and never notices. Each worker therefore (1) asks Linux to SIGKILL it when its parent
dies (`prctl(PR_SET_PDEATHSIG)`) and (2) exits at once if the parent it was forked by is already
gone. Elsewhere than Linux only (2) applies.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl: the parent check below still applies


def _die_with_parent(parent_pid: int, worker_id: int) -> None:
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(0)


def worker_init(parent_pid: int | None = None) -> Callable[[int], None]:
    """A DataLoader `worker_init_fn` (picklable) for a loader created in this process."""
    return functools.partial(_die_with_parent, parent_pid or os.getpid())
