"""Loader workers never outlive a killed parent (`data.workers.worker_init`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

PARENT = """
import os, sys, time
from pneumonia_cxr.data.workers import worker_init
pid = os.fork()
if pid == 0:
    worker_init({parent})(0)  # what a DataLoader worker runs first
    time.sleep(60)            # a worker waiting on a queue nobody writes
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")
def test_a_worker_dies_with_its_killed_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(parent="os.getpid()")],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    time.sleep(0.3)  # the child has armed the signal and sleeps
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    assert _wait_gone(child, 5), "the worker outlived its SIGKILLed parent"


def test_a_worker_forked_as_its_parent_died_exits_at_once() -> None:
    """The race: the parent is already gone when the worker starts (its parent pid differs)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(parent="1")],  # "my parent was pid 1": not true
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    try:
        assert _wait_gone(child, 5), "the orphaned worker kept running"
    finally:
        parent.kill()
        parent.wait(timeout=10)
