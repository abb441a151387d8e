"""Stopping child processes: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable

__all__ = ["terminate"]


def terminate(procs: subprocess.Popen | Iterable[subprocess.Popen], grace: float, *, group: bool = False,
              on_kill: Callable[[subprocess.Popen], None] | None = None) -> None:
    """Ask each running process to stop (SIGTERM), wait up to ``grace`` seconds for all of them together,
    then SIGKILL those still running and reap them. ``group``: signal each process's whole process group
    (it was started with ``start_new_session``), so its own children stop with it. ``on_kill`` is told
    before a process is killed."""
    procs = [procs] if isinstance(procs, subprocess.Popen) else list(procs)
    for proc in procs:
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM, group)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            if on_kill is not None:
                on_kill(proc)
            _signal(proc, signal.SIGKILL, group)
            proc.wait()


def _signal(proc: subprocess.Popen, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
